//! Every autograd op against finite differences (tolerance from the step size,
//! see `lwpf::autograd::gradcheck`), plus the values the ops must produce.

use lwpf::autograd::gradcheck::{self, check_inputs, failures};
use lwpf::autograd::{ParamStore, Tape, Tensor, Var};
use lwpf::op::{AttentionConfig, Backend, Forgetting, Pfu};

/// Step of the central differences: a power of two, so `x +- h` rounds little.
const H: f32 = 1.0 / 128.0;

fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let data = gradcheck::direction(n, seed).into_iter().map(|v| v * scale).collect();
    Tensor::new(shape, data).unwrap()
}

/// Checks `build` against finite differences at `inputs`; returns how many
/// coordinates were checked.
fn assert_gradients(
    what: &str,
    inputs: &[Tensor],
    build: impl Fn(&mut Tape, &[Var]) -> lwpf::Result<Var>,
) -> usize {
    let params = ParamStore::new();
    let checks = check_inputs(&params, inputs, H, build).unwrap();
    if let Some(f) = failures(&checks) {
        panic!("{what}: {f}");
    }
    let expected: usize = inputs.iter().map(Tensor::numel).sum();
    assert_eq!(checks.len(), expected, "{what}: every coordinate checked");
    checks.len()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[test]
fn the_harness_rejects_a_wrong_gradient() {
    // The analytic pass differentiates gelu(x) while the numeric one sees
    // gelu(1.05 x): a 5% error in the gradient must not pass.
    let params = ParamStore::new();
    let x = random(&[3, 4], 1, 1.5);
    let analytic_pass = std::cell::Cell::new(true);
    let checks = check_inputs(&params, &[x], H, |t, v| {
        let input = if analytic_pass.replace(false) {
            v[0]
        } else {
            let scaled: Vec<f32> = t.value(v[0]).data().iter().map(|x| x * 1.05).collect();
            t.input(Tensor::new(t.shape(v[0]), scaled)?)
        };
        t.gelu(input)
    })
    .unwrap();
    let failed = checks.iter().filter(|c| !c.check.passes()).count();
    assert!(failed > checks.len() / 2, "only {failed} of {} failed", checks.len());
}

#[test]
fn linear_values_follow_the_row_vector_convention() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::new(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap());
    let w = t.input(Tensor::new(&[2, 3], vec![1., 0., -1., 0.5, 0.5, 0.5]).unwrap());
    let b = t.input(Tensor::new(&[2], vec![10., 20.]).unwrap());
    let y = t.linear(x, w, Some(b)).unwrap();
    assert_eq!(t.shape(y), &[2, 2]);
    assert_eq!(t.value(y).data(), &[8., 23., 8., 27.5]);
}

#[test]
fn linear_gradients() {
    let x = random(&[2, 3, 5], 2, 1.0);
    let w = random(&[4, 5], 3, 0.7);
    let b = random(&[4], 4, 0.3);
    assert_gradients("linear with bias", &[x.clone(), w.clone(), b], |t, v| {
        t.linear(v[0], v[1], Some(v[2]))
    });
    assert_gradients("linear without bias", &[x, w], |t, v| t.linear(v[0], v[1], None));
}

#[test]
fn linear_takes_a_conv_shaped_kernel() {
    let x = random(&[3, 12], 5, 1.0);
    let w = random(&[2, 3, 2, 2], 6, 0.5);
    assert_gradients("linear, kernel [2, 3, 2, 2]", &[x, w], |t, v| t.linear(v[0], v[1], None));
}

#[test]
fn matmul_values_and_gradients_for_every_transpose() {
    // A [2, 3] times B [3, 2], stored plainly or transposed.
    let a = [1., 2., 3., 4., 5., 6.];
    let b = [1., 0., 0., 1., 1., 1.];
    let want = [4., 5., 10., 11.];
    let transpose = |m: &[f32], rows: usize, cols: usize| -> Vec<f32> {
        (0..cols * rows).map(|i| m[(i % rows) * cols + i / rows]).collect()
    };
    for ta in [false, true] {
        for tb in [false, true] {
            let params = ParamStore::new();
            let mut t = Tape::new(&params);
            let (ad, ashape) =
                if ta { (transpose(&a, 2, 3), [3, 2]) } else { (a.to_vec(), [2, 3]) };
            let (bd, bshape) =
                if tb { (transpose(&b, 3, 2), [2, 3]) } else { (b.to_vec(), [3, 2]) };
            let av = t.input(Tensor::new(&ashape, ad).unwrap());
            let bv = t.input(Tensor::new(&bshape, bd).unwrap());
            let c = t.matmul(av, bv, ta, tb).unwrap();
            assert_eq!(t.value(c).data(), &want, "ta {ta} tb {tb}");

            let sa = if ta { [3, 2, 4] } else { [3, 4, 2] };
            let sb = if tb { [3, 5, 2] } else { [3, 2, 5] };
            let inputs = [random(&sa, 7, 1.0), random(&sb, 8, 1.0)];
            assert_gradients("batched matmul", &inputs, |t, v| t.matmul(v[0], v[1], ta, tb));
        }
    }
}

#[test]
fn sums_and_broadcasts() {
    let a = random(&[2, 3, 4], 9, 1.0);
    let b = random(&[2, 3, 4], 10, 1.0);
    assert_gradients("add", &[a.clone(), b], |t, v| t.add(v[0], v[1]));
    assert_gradients("add of a value to itself", std::slice::from_ref(&a), |t, v| {
        t.add(v[0], v[0])
    });
    let bias = random(&[4], 11, 1.0);
    assert_gradients("bias", &[a.clone(), bias], |t, v| t.add_broadcast(v[0], v[1]));
    let pos = random(&[1, 3, 4], 12, 1.0);
    assert_gradients("position embedding", &[a, pos], |t, v| t.add_broadcast(v[0], v[1]));

    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::new(&[2, 2], vec![1., 2., 3., 4.]).unwrap());
    let y = t.input(Tensor::new(&[1, 2], vec![10., 20.]).unwrap());
    let s = t.add_broadcast(x, y).unwrap();
    assert_eq!(t.value(s).data(), &[11., 22., 13., 24.]);
    let bad = t.input(Tensor::zeros(&[3]));
    assert!(t.add_broadcast(x, bad).is_err());
}

#[test]
fn qkv_split_into_heads_by_reshape_permute_select() {
    // [B, N, 3, H, Dh] -> [3, B, H, N, Dh] -> three [B, H, N, Dh]: element
    // (b, n, s, h, d) of the input must land at (b, h, n, d) of part s.
    let (b, n, h, dh) = (2, 3, 2, 2);
    let e = h * dh;
    let data: Vec<f32> = (0..b * n * 3 * e).map(|i| i as f32).collect();
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::new(&[b, n, 3 * e], data.clone()).unwrap());
    let x5 = t.reshape(x, &[b, n, 3, h, dh]).unwrap();
    let p = t.permute(x5, &[2, 0, 3, 1, 4]).unwrap();
    for s in 0..3 {
        let part = t.select(p, s).unwrap();
        assert_eq!(t.shape(part), &[b, h, n, dh]);
        let v = t.value(part).data();
        for (bi, hi, ni, di) in indices4(b, h, n, dh) {
            let got = v[((bi * h + hi) * n + ni) * dh + di];
            let want = data[(((bi * n + ni) * 3 + s) * h + hi) * dh + di];
            assert_eq!(got, want);
        }
    }

    let input = random(&[b, n, 3 * e], 13, 1.0);
    assert_gradients("reshape, permute, select", &[input], |t, v| {
        let x5 = t.reshape(v[0], &[b, n, 3, h, dh])?;
        let p = t.permute(x5, &[2, 0, 3, 1, 4])?;
        let q = t.select(p, 0)?;
        let k = t.select(p, 1)?;
        let vv = t.select(p, 2)?;
        // Use the parts unequally so that a mixed-up slice shows.
        let qk = t.matmul(q, k, false, true)?;
        let o = t.matmul(qk, vv, false, false)?;
        let back = t.permute(o, &[0, 2, 1, 3])?;
        t.reshape(back, &[b, n, e])
    });
}

fn indices4(
    a: usize,
    b: usize,
    c: usize,
    d: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..a).flat_map(move |i| {
        (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l))))
    })
}

#[test]
fn permute_rejects_a_non_permutation() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::zeros(&[2, 3, 4]));
    assert!(t.permute(x, &[0, 0, 1]).is_err());
    assert!(t.permute(x, &[0, 1]).is_err());
    assert!(t.permute(x, &[2, 0, 1]).is_ok());
    assert!(t.reshape(x, &[5, 5]).is_err());
}

#[test]
fn layer_norm_values_and_gradients() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(random(&[4, 8], 14, 3.0));
    let w = t.input(Tensor::full(&[8], 1.0));
    let b = t.input(Tensor::zeros(&[8]));
    let y = t.layer_norm(x, w, b, 1e-6).unwrap();
    for row in t.value(y).data().chunks(8) {
        let mean: f32 = row.iter().sum::<f32>() / 8.0;
        let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 8.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "mean {mean} var {var}");
    }

    let inputs = [random(&[3, 2, 6], 15, 2.0), random(&[6], 16, 1.0), random(&[6], 17, 1.0)];
    assert_gradients("layer norm", &inputs, |t, v| t.layer_norm(v[0], v[1], v[2], 1e-6));
}

#[test]
fn gelu_values_and_gradients() {
    // x * Phi(x) at a few points, Phi from tables of the normal CDF.
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::new(&[4], vec![-1.0, 0.0, 1.0, 2.0]).unwrap());
    let y = t.gelu(x).unwrap();
    let want = [-0.158_655_25, 0.0, 0.841_344_8, 1.954_499_7];
    assert!(close(t.value(y).data(), &want, 1e-6), "{:?}", t.value(y).data());

    assert_gradients("gelu", &[random(&[5, 7], 18, 3.0)], |t, v| t.gelu(v[0]));
}

#[test]
fn gelu_matches_the_erf_form_everywhere() {
    // Against x * (1 + erf(x / sqrt 2)) / 2 in f64 (libm's erf): the CDF is
    // within 2e-7 absolute, so GELU is within 2e-7 * (1 + |x|), and its
    // derivative within the same bound plus the density term's rounding.
    for i in -20_000..=20_000 {
        let x = i as f32 * 5e-4;
        let xd = x as f64;
        let cdf = 0.5 * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
        let want = xd * cdf;
        let got = lwpf::autograd::gelu(x) as f64;
        assert!((got - want).abs() <= 2e-7 * (1.0 + xd.abs()), "gelu({x}) = {got}, want {want}");
        let density = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let want_grad = cdf + xd * density;
        let got_grad = lwpf::autograd::gelu_grad(x) as f64;
        assert!(
            (got_grad - want_grad).abs() <= 4e-7 * (1.0 + xd.abs()),
            "gelu'({x}) = {got_grad}, want {want_grad}"
        );
    }
    assert_eq!(lwpf::autograd::gelu(-100.0), 0.0);
    assert_eq!(lwpf::autograd::gelu(100.0), 100.0);
}

#[test]
fn cross_entropy_values_and_gradients() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let uniform = t.input(Tensor::zeros(&[3, 10]));
    let l = t.cross_entropy(uniform, &[0, 4, 9], 0.0).unwrap();
    assert!((t.value(l).item().unwrap() - 10f32.ln()).abs() < 1e-6);
    let z = t.input(Tensor::new(&[1, 3], vec![1.0, 2.0, 3.0]).unwrap());
    let l = t.cross_entropy(z, &[2], 0.0).unwrap();
    let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
    assert!((t.value(l).item().unwrap() as f64 - want).abs() < 1e-6);
    assert!(t.cross_entropy(z, &[3], 0.0).is_err(), "label out of range");
    assert!(t.cross_entropy(z, &[0, 1], 0.0).is_err(), "label count");

    let logits = random(&[4, 5], 19, 2.0);
    assert_gradients("cross entropy", std::slice::from_ref(&logits), |t, v| {
        t.cross_entropy(v[0], &[0, 3, 4, 1], 0.0)
    });
    assert_gradients("cross entropy, smoothing 0.1", &[logits], |t, v| {
        t.cross_entropy(v[0], &[2, 2, 0, 4], 0.1)
    });
}

#[test]
fn class_token_position_embedding_and_token_select() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let cls = t.input(Tensor::new(&[1, 1, 2], vec![7.0, 8.0]).unwrap());
    let x = t.input(Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap());
    let y = t.concat_cls(cls, x).unwrap();
    assert_eq!(t.shape(y), &[2, 2, 2]);
    assert_eq!(t.value(y).data(), &[7., 8., 1., 2., 7., 8., 3., 4.]);
    let c = t.select_token(y, 1).unwrap();
    assert_eq!(t.value(c).data(), &[1., 2., 3., 4.]);

    let inputs =
        [random(&[1, 1, 3], 20, 1.0), random(&[2, 4, 3], 21, 1.0), random(&[1, 5, 3], 22, 1.0)];
    assert_gradients("class token, position embedding, token 0", &inputs, |t, v| {
        let y = t.concat_cls(v[0], v[1])?;
        let y = t.add_broadcast(y, v[2])?;
        let g = t.gelu(y)?;
        t.select_token(g, 0)
    });
    assert_gradients("token select", &[random(&[2, 4, 3], 23, 1.0)], |t, v| {
        t.select_token(v[0], 2)
    });
}

#[test]
fn patchify_lays_patches_out_like_a_conv_kernel() {
    // One 2-channel 4x4 image, patch 2: patch (py, px) holds channel 0's 2x2
    // square, then channel 1's.
    let img: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::new(&[1, 2, 4, 4], img).unwrap());
    let p = t.patchify(x, 2).unwrap();
    assert_eq!(t.shape(p), &[1, 4, 8]);
    let d = t.value(p).data();
    assert_eq!(&d[..8], &[0., 1., 4., 5., 16., 17., 20., 21.]);
    assert_eq!(&d[8..16], &[2., 3., 6., 7., 18., 19., 22., 23.]);
    assert_eq!(&d[24..32], &[10., 11., 14., 15., 26., 27., 30., 31.]);
    assert!(t.patchify(x, 3).is_err());

    assert_gradients("patchify", &[random(&[2, 3, 4, 4], 24, 1.0)], |t, v| {
        let p = t.patchify(v[0], 2)?;
        t.gelu(p)
    });
}

#[test]
fn dropout_keeps_the_expected_share_and_rescales() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::full(&[100_000], 1.0));
    let y = t.dropout(x, 0.25, 42).unwrap();
    let d = t.value(y).data();
    let kept = d.iter().filter(|&&v| v != 0.0).count() as f64 / d.len() as f64;
    // Binomial standard deviation at n = 1e5 is 0.0014; 5 of them.
    assert!((kept - 0.75).abs() < 0.007, "kept {kept}");
    assert!(d.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert_eq!(t.dropout(x, 0.0, 1).unwrap(), x, "p = 0 is the identity");
    assert!(t.dropout(x, 1.0, 1).is_err());

    assert_gradients("dropout", &[random(&[6, 5], 25, 1.0)], |t, v| {
        let y = t.dropout(v[0], 0.3, 7)?;
        t.gelu(y)
    });
}

#[test]
fn inference_tape_records_no_gradient() {
    let mut params = ParamStore::new();
    let w = params.add("w", random(&[3, 4], 26, 1.0), true).unwrap();
    let mut t = Tape::inference(&params);
    let x = t.input(random(&[2, 4], 27, 1.0));
    let wv = t.param(w);
    let y = t.linear(x, wv, None).unwrap();
    let l = t.cross_entropy(y, &[0, 1], 0.0).unwrap();
    let grads = t.backward(l).unwrap();
    assert!(grads.param(w).is_none());

    let mut t = Tape::new(&params);
    let x = t.input(random(&[2, 4], 27, 1.0));
    let wv = t.param(w);
    let y = t.linear(x, wv, None).unwrap();
    let l = t.cross_entropy(y, &[0, 1], 0.0).unwrap();
    let mut grads = t.backward(l).unwrap();
    assert_eq!(grads.param(w).map(|g| g.shape().to_vec()), Some(vec![3, 4]));
    let norm = grads.global_norm();
    assert!(norm > 0.0);
    let before = grads.clip_global_norm(norm / 2.0);
    assert_eq!(before, norm);
    assert!((grads.global_norm() - norm / 2.0).abs() < 1e-6 * norm);
}

/// Draws Q, K, V `[B, H, N, D]` whose scores keep a margin from the threshold
/// `z`, so that no step of the finite differences flips an entry between kept
/// and forgotten (the mask carries no gradient, a flip is a jump).
fn attention_inputs(cfg: &AttentionConfig, seed0: u64) -> [Tensor; 3] {
    let (b, h, n, d) = (2, 2, 4, 4);
    let beta = cfg.beta_for(d);
    for seed in seed0.. {
        let q = random(&[b, h, n, d], 3 * seed, 1.0);
        let k = random(&[b, h, n, d], 3 * seed + 1, 1.0);
        let v = random(&[b, h, n, d], 3 * seed + 2, 1.0);
        let params = ParamStore::new();
        let mut t = Tape::new(&params);
        let vars = (t.input(q.clone()), t.input(k.clone()), t.input(v.clone()));
        t.attention(vars, None, cfg, Backend::Cpu).unwrap();
        let z = t.attention_stats()[0].threshold.z;
        // A step of 2h in one entry of Q or K (all of size < 1) moves a
        // score by at most beta * 2h; keep twice that away from z.
        let margin = 2.0 * beta * 2.0 * H;
        let (qd, kd) = (q.data(), k.data());
        let clear = (0..b * h).all(|bh| {
            (0..n).all(|i| {
                (0..n).all(|j| {
                    let s: f32 = (0..d)
                        .map(|x| qd[(bh * n + i) * d + x] * kd[(bh * n + j) * d + x])
                        .sum::<f32>()
                        * beta;
                    !z.is_finite() || (s - z).abs() > margin
                })
            })
        });
        if clear {
            return [q, k, v];
        }
    }
    unreachable!()
}

fn check_attention(what: &str, cfg: AttentionConfig) {
    let inputs = attention_inputs(&cfg, 1);
    assert_gradients(what, &inputs, |t, v| {
        t.attention((v[0], v[1], v[2]), None, &cfg, Backend::Cpu)
    });
}

/// The node on the fused kernels (their sources under the host emulation)
/// against the node on the fast CPU path, whose gradients the finite
/// differences above check: dyadic Q and K give both the same scores, so the
/// statistics agree exactly and the gradients to f32 round-off, in f32 and
/// in bf16 (both round the inputs alike).
#[test]
fn attention_node_on_the_fused_kernels_agrees_with_the_cpu_path() {
    use lwpf::op::Precision;
    let shape = [2, 2, 5, 8];
    let dyadic = |seed: u64| {
        let mut t = random(&shape, seed, 1.0);
        t.data_mut().iter_mut().for_each(|x| *x = (*x * 8.0).round() / 8.0);
        t
    };
    let (q, k, v) = (dyadic(21), dyadic(22), random(&shape, 23, 1.0));
    let d_o = random(&shape, 24, 1.0);
    let pfu = Forgetting::Pfu(Pfu::median_preset());
    for precision in [Precision::F32, Precision::Bf16] {
        for (name, forgetting, dropout) in
            [("relu", Forgetting::Relu, 0.0), ("pfu median, dropout", pfu, 0.2)]
        {
            let cfg = AttentionConfig {
                beta: Some(0.25),
                forgetting,
                drop_forgotten: false,
                dropout,
                seed: 5,
                training: true,
                precision,
            };
            let run = |backend| {
                let params = ParamStore::new();
                let mut t = Tape::new(&params);
                let vars = [t.leaf(q.clone()), t.leaf(k.clone()), t.leaf(v.clone())];
                let o = t.attention((vars[0], vars[1], vars[2]), None, &cfg, backend).unwrap();
                let stats = t.attention_stats()[0];
                let grads = t.backward_with(o, d_o.data()).unwrap();
                let g: Vec<Vec<f32>> =
                    vars.iter().map(|&x| grads.get(x).unwrap().data().to_vec()).collect();
                (stats, g)
            };
            let name = format!("{} {name}", precision.name());
            let (cpu_stats, cpu) = run(Backend::Cpu);
            let (emu_stats, emu) = run(Backend::Emulated);
            assert_eq!(emu_stats, cpu_stats, "{name}: statistics");
            if forgetting != Forgetting::Relu {
                // Some scores forgotten and some kept: g_b is not zero.
                let s = cpu_stats;
                assert!(s.threshold.center_gradient, "{name}: the center gradient is on");
                assert!(0 < s.forgotten && s.forgotten < s.entries, "{name}: {s:?}");
            }
            for (t, a, b) in
                [("dQ", &emu[0], &cpu[0]), ("dK", &emu[1], &cpu[1]), ("dV", &emu[2], &cpu[2])]
            {
                let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
                let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
                let e = (num / den).sqrt();
                assert!(den > 0.0 && e < 1e-4, "{name}: {t} rel err {e:e}");
            }
        }
    }
}

#[test]
fn attention_node_gradients_plain() {
    check_attention("attention, no forgetting", AttentionConfig::default());
}

#[test]
fn attention_node_gradients_relu() {
    check_attention("attention, relu", AttentionConfig::with_forgetting(Forgetting::Relu));
}

#[test]
fn attention_node_gradients_pfu_training_with_dropout() {
    let cfg = AttentionConfig {
        forgetting: Forgetting::Pfu(Pfu::vision_preset()),
        dropout: 0.2,
        seed: 11,
        training: true,
        ..Default::default()
    };
    check_attention("attention, pfu, training, dropout", cfg);
}

#[test]
fn attention_node_keeps_the_call_statistics() {
    let cfg = AttentionConfig::with_forgetting(Forgetting::Relu);
    let [q, k, v] = attention_inputs(&cfg, 1);
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let vars = (t.input(q), t.input(k), t.input(v));
    let o = t.attention(vars, None, &cfg, Backend::Cpu).unwrap();
    let _ = t.attention(vars, None, &cfg, Backend::Cpu).unwrap();
    assert_eq!(t.shape(o), &[2, 2, 4, 4]);
    let stats = t.attention_stats();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].entries, 2 * 2 * 4 * 4);
    assert_eq!(stats[0].threshold.z, 0.0);
    // Random scores of both signs: some but not all entries are forgotten.
    assert!(stats[0].forgotten > 0 && stats[0].forgotten < stats[0].entries);
}
