//! The Hopfield layers against an f64 reference written from MODELS.md 1.1 to
//! 1.3, their gradients against finite differences (inputs and every
//! parameter), and the autograd ops they brought (BCE with logits, per-head
//! selection).

use lwpf::autograd::gradcheck::{
    self, CoordCheck, check_coordinate, check_inputs, failures, project,
};
use lwpf::autograd::{ParamStore, Tape, Tensor, Var};
use lwpf::nn::hopfield::{HopfieldConfig, HopfieldOutput};
use lwpf::nn::{Hopfield, HopfieldLayer, HopfieldPooling, InitRng};
use lwpf::op::{Forgetting, Pfu};

/// Step of the central differences: a power of two, so `x +- h` rounds little.
const H: f32 = 1.0 / 256.0;

fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let data = gradcheck::direction(n, seed).into_iter().map(|v| v * scale).collect();
    Tensor::new(shape, data).unwrap()
}

// ---------------------------------------------------------------- the new ops

#[test]
fn bce_with_logits_values_and_gradients() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let z = t.input(Tensor::new(&[4], vec![0.0, 2.0, -3.0, 40.0]).unwrap());
    let loss = t.bce_with_logits(z, &[1.0, 0.0, 0.0, 1.0]).unwrap();
    let want = [
        2f64.ln(),
        (1.0 + 2f64.exp()).ln(),
        (1.0 + (-3f64).exp()).ln(),
        (1.0 + (-40f64).exp()).ln(),
    ];
    let want = want.iter().sum::<f64>() / 4.0;
    assert!((t.value(loss).item().unwrap() as f64 - want).abs() < 1e-6);

    let logits = random(&[3, 2], 7, 3.0);
    let targets = [1.0, 0.0, 0.0, 1.0, 0.25, 1.0];
    let checks =
        check_inputs(&params, &[logits], H, |t, v| t.bce_with_logits(v[0], &targets)).unwrap();
    assert!(failures(&checks).is_none(), "{:?}", failures(&checks));

    let mut t = Tape::new(&params);
    let z = t.input(Tensor::zeros(&[2]));
    assert!(t.bce_with_logits(z, &[1.0]).is_err(), "one target per logit");
    assert!(t.bce_with_logits(z, &[1.0, 2.0]).is_err(), "targets in [0, 1]");
}

#[test]
fn select_heads_takes_each_head_from_its_side() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let a = t.input(Tensor::full(&[2, 3, 2], 1.0));
    let b = t.input(Tensor::full(&[2, 3, 2], 2.0));
    let y = t.select_heads(a, b, &[true, false, true]).unwrap();
    assert_eq!(t.value(y).data(), &[1., 1., 2., 2., 1., 1., 1., 1., 2., 2., 1., 1.]);
    assert!(t.select_heads(a, b, &[true]).is_err());

    let inputs = [random(&[2, 3, 2, 2], 1, 1.0), random(&[2, 3, 2, 2], 2, 1.0)];
    let checks = check_inputs(&params, &inputs, H, |t, v| {
        let s = t.select_heads(v[0], v[1], &[false, true, true])?;
        t.gelu(s)
    })
    .unwrap();
    assert!(failures(&checks).is_none(), "{:?}", failures(&checks));
}

// ------------------------------------------------------------- the reference

/// What the reference needs of one layer, read from the store by name.
struct RefLayer {
    cfg: HopfieldConfig,
    norms: [Option<(Vec<f64>, Vec<f64>)>; 3],
    proj: [Option<(Vec<f64>, Vec<f64>)>; 3],
    out: Option<(Vec<f64>, Vec<f64>)>,
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

impl RefLayer {
    fn read(store: &ParamStore, name: &str, cfg: HopfieldConfig) -> RefLayer {
        let get = |p: &str| store.find(&format!("{name}.{p}")).map(|id| f64s(store.value(id)));
        let pair = |p: &str| {
            get(&format!("{p}.weight")).map(|w| (w, get(&format!("{p}.bias")).unwrap_or_default()))
        };
        RefLayer {
            cfg,
            norms: [pair("norm_stored"), pair("norm_state"), pair("norm_projection")],
            proj: [pair("k_proj"), pair("q_proj"), pair("v_proj")],
            out: pair("out_proj"),
        }
    }
}

/// Rows of `width`: layer norm (biased variance, eps 1e-5) then `x W^T + b`.
fn ref_prepare(
    x: &[f64],
    width: usize,
    norm: &Option<(Vec<f64>, Vec<f64>)>,
    proj: &Option<(Vec<f64>, Vec<f64>)>,
) -> Vec<f64> {
    let mut rows: Vec<Vec<f64>> = x.chunks(width).map(<[f64]>::to_vec).collect();
    if let Some((w, b)) = norm {
        for r in &mut rows {
            let mean = r.iter().sum::<f64>() / width as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            for (i, v) in r.iter_mut().enumerate() {
                *v = (*v - mean) / (var + 1e-5).sqrt() * w[i] + b[i];
            }
        }
    }
    if let Some((w, b)) = proj {
        let n_out = w.len() / width;
        rows = rows
            .iter()
            .map(|r| {
                (0..n_out)
                    .map(|o| {
                        (0..width).map(|i| r[i] * w[o * width + i]).sum::<f64>()
                            + b.get(o).copied().unwrap_or(0.0)
                    })
                    .collect()
            })
            .collect();
    }
    rows.concat()
}

/// Threshold `(z, b)` of one call in evaluation mode from all its scores.
fn ref_threshold(forgetting: Forgetting, scores: &[f64]) -> (f64, f64) {
    match forgetting {
        Forgetting::None => (f64::NEG_INFINITY, f64::NEG_INFINITY),
        Forgetting::Relu => (0.0, 0.0),
        Forgetting::Pfu(_) => {
            let mut s = scores.to_vec();
            s.sort_by(f64::total_cmp);
            let m = s[(s.len() - 1) / 2];
            (m, m)
        }
    }
}

/// The layer in f64, evaluation mode (deterministic threshold, no dropout):
/// y `[B, S, E_y]`, r `[B, L, E]`, v `[B, S, E_v]` -> `[B, L, output]`, and the
/// number of update steps taken.
fn reference(layer: &RefLayer, b: usize, y: &[f64], r: &[f64], v: &[f64]) -> (Vec<f64>, usize) {
    let c = &layer.cfg;
    let dm = c.dims();
    let (h, d, p) = (dm.heads, dm.head_dim, dm.value_dim);
    let beta = c.beta() as f64;
    let k = ref_prepare(y, dm.stored, &layer.norms[0], &layer.proj[0]);
    let mut q = ref_prepare(r, dm.state, &layer.norms[1], &layer.proj[1]);
    let vv = ref_prepare(v, dm.projection, &layer.norms[2], &layer.proj[2]);
    let s_len = k.len() / (b * h * d);
    let l_len = q.len() / (b * h * d);
    // Element accessors in the [B, n, H * c] layouts.
    let qi = |q: &[f64], bi: usize, hi: usize, i: usize, x: usize| {
        q[(bi * l_len + i) * h * d + hi * d + x]
    };
    let ki = |bi: usize, hi: usize, j: usize, x: usize| k[(bi * s_len + j) * h * d + hi * d + x];
    let scores = |q: &[f64]| -> Vec<f64> {
        let mut s = vec![0.0; b * h * l_len * s_len];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..l_len {
                    for j in 0..s_len {
                        s[((bi * h + hi) * l_len + i) * s_len + j] = beta
                            * (0..d).map(|x| qi(q, bi, hi, i, x) * ki(bi, hi, j, x)).sum::<f64>();
                    }
                }
            }
        }
        s
    };
    // Weights with forgotten entries at exp(b) (no indicator), per row.
    let weights = |s: &[f64], z: f64, bias: f64| -> Vec<f64> {
        let mut w = vec![0.0; s.len()];
        for (wr, sr) in w.chunks_mut(s_len).zip(s.chunks(s_len)) {
            let vals: Vec<f64> = sr.iter().map(|&x| if x > z { x } else { bias }).collect();
            let top = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let den: f64 = vals.iter().map(|x| (x - top).exp()).sum();
            for (o, x) in wr.iter_mut().zip(&vals) {
                *o = (x - top).exp() / den;
            }
        }
        w
    };

    let mut active = vec![true; h];
    let mut prev: Option<Vec<f64>> = None;
    let mut t = 0;
    let (mut zf, mut bf);
    loop {
        let s = scores(&q);
        (zf, bf) = ref_threshold(c.forgetting, &s);
        if t >= c.update_steps_max {
            break;
        }
        let w = weights(&s, zf, bf);
        if let Some(pw) = &prev {
            for (hi, act) in active.iter_mut().enumerate() {
                let change = (0..b)
                    .map(|bi| {
                        let at = (bi * h + hi) * l_len * s_len;
                        let n = l_len * s_len;
                        (0..n).map(|e| (pw[at + e] - w[at + e]).powi(2)).sum::<f64>().sqrt()
                    })
                    .fold(0.0, f64::max);
                *act = *act && change > c.update_steps_eps as f64;
            }
        }
        if !active.iter().any(|&a| a) {
            break;
        }
        let mut next = q.clone();
        for bi in 0..b {
            for hi in (0..h).filter(|&hi| active[hi]) {
                for i in 0..l_len {
                    for x in 0..d {
                        next[(bi * l_len + i) * h * d + hi * d + x] = (0..s_len)
                            .map(|j| w[((bi * h + hi) * l_len + i) * s_len + j] * ki(bi, hi, j, x))
                            .sum();
                    }
                }
            }
        }
        q = next;
        prev = Some(w);
        t += 1;
    }

    // Final retrieval: the indicator drops forgotten entries from the numerator.
    let s = scores(&q);
    let w = weights(&s, zf, bf);
    let mut o = vec![0.0; b * l_len * h * p];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..l_len {
                for x in 0..p {
                    o[(bi * l_len + i) * h * p + hi * p + x] = (0..s_len)
                        .filter(|&j| s[((bi * h + hi) * l_len + i) * s_len + j] > zf)
                        .map(|j| {
                            w[((bi * h + hi) * l_len + i) * s_len + j]
                                * vv[(bi * s_len + j) * h * p + hi * p + x]
                        })
                        .sum();
                }
            }
        }
    }
    let out = ref_prepare(&o, h * p, &None, &layer.out);
    (out, t)
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    assert!(err <= 1e-5 * norm.max(1e-3), "{what}: relative L2 error {:.3e}", err / norm);
}

/// Repeats the rows of a shared `[n, w]` pattern for every batch item.
fn tile(x: &[f64], b: usize) -> Vec<f64> {
    (0..b).flat_map(|_| x.iter().copied()).collect()
}

// ------------------------------------------------------------------ values

fn small_config(forgetting: Forgetting, heads: usize, steps: usize) -> HopfieldConfig {
    let mut c = HopfieldConfig::new(4);
    c.heads = heads;
    c.head_dim = Some(3);
    c.value_dim = Some(2);
    c.update_steps_max = steps;
    c.update_steps_eps = 0.0;
    c.beta = Some(0.9);
    c.forgetting = forgetting;
    c
}

/// A layer's parameters, perturbed away from their initial values so that
/// the layer norms' affine parts and all biases matter.
fn jitter(store: &mut ParamStore, seed: u64) {
    let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
    for (n, id) in ids.into_iter().enumerate() {
        let p = store.get_mut(id);
        let noise = gradcheck::direction(p.value.numel(), seed + n as u64);
        for (v, e) in p.value.data_mut().iter_mut().zip(noise) {
            *v += 0.5 * e;
        }
    }
}

#[test]
fn plain_hopfield_is_attention_on_its_projections() {
    // `none`, no update steps: LN, projections, softmax(beta q k^T) v, out projection.
    let (b, n) = (2, 5);
    let mut store = ParamStore::new();
    let cfg = small_config(Forgetting::None, 2, 0);
    let layer = Hopfield::new(&mut store, "hop", cfg, &mut InitRng::new(3)).unwrap();
    jitter(&mut store, 10);
    let x = random(&[b, n, 4], 5, 1.5);
    let mut t = Tape::inference(&store);
    let xv = t.input(x.clone());
    let out = layer.forward(&mut t, xv, false, 1).unwrap();
    assert_eq!(t.shape(out.out), &[b, n, 4]);
    assert_eq!(out.calls.len(), 1);
    let r = RefLayer::read(&store, "hop", cfg);
    let xs = f64s(&x);
    let (want, steps) = reference(&r, b, &xs, &xs, &xs);
    assert_eq!(steps, 0);
    assert_close("plain attention", t.value(out.out).data(), &want);
}

#[test]
fn update_steps_and_forgetting_match_the_reference() {
    let (b, n) = (2, 6);
    for forgetting in [Forgetting::None, Forgetting::Relu, Forgetting::Pfu(Pfu::median_preset())] {
        for (heads, steps) in [(1, 1), (2, 3)] {
            let mut store = ParamStore::new();
            let cfg = small_config(forgetting, heads, steps);
            let layer = Hopfield::new(&mut store, "hop", cfg, &mut InitRng::new(4)).unwrap();
            jitter(&mut store, 20);
            let x = random(&[b, n, 4], 6, 1.5);
            let mut t = Tape::inference(&store);
            let xv = t.input(x.clone());
            let out = layer.forward(&mut t, xv, false, 2).unwrap();
            let what = format!("{} with {heads} heads, {steps} steps", forgetting.name());
            assert_eq!(out.update_steps, steps, "{what}");
            assert_eq!(out.calls.len(), steps + 1, "{what}: one call per step and the retrieval");
            if matches!(forgetting, Forgetting::Pfu(_)) {
                // Each step has its own median.
                let ms: Vec<_> = out.calls.iter().map(|c| c.threshold.m.unwrap()).collect();
                assert!(ms.windows(2).all(|w| w[0] != w[1]), "{what}: medians {ms:?}");
            }
            let xs = f64s(&x);
            let (want, _) = reference(&RefLayer::read(&store, "hop", cfg), b, &xs, &xs, &xs);
            assert_close(&what, t.value(out.out).data(), &want);
        }
    }
}

#[test]
fn the_stopping_rule_ends_the_iteration_early() {
    let mut store = ParamStore::new();
    let mut cfg = small_config(Forgetting::None, 2, 5);
    cfg.update_steps_eps = 1e3;
    let layer = Hopfield::new(&mut store, "hop", cfg, &mut InitRng::new(5)).unwrap();
    let x = random(&[2, 4, 4], 7, 1.0);
    let mut t = Tape::inference(&store);
    let xv = t.input(x.clone());
    let out = layer.forward(&mut t, xv, false, 0).unwrap();
    // xi_0 has no predecessor, so one step is always taken; then no change
    // exceeds eps.
    assert_eq!(out.update_steps, 1);
    let xs = f64s(&x);
    let (want, steps) = reference(&RefLayer::read(&store, "hop", cfg), 2, &xs, &xs, &xs);
    assert_eq!(steps, 1);
    assert_close("early stop", t.value(out.out).data(), &want);
}

#[test]
fn a_converged_head_stops_while_the_other_goes_on() {
    // Static patterns, no norms: head 0 sees identical keys in every row, so
    // its weights are uniform from the start and its change at step 1 is 0;
    // head 1 runs all 3 steps. (Head 0's frozen state equals the one it would
    // reach anyway; what this checks is the values and the gradient through
    // the per-head selection.)
    let mut cfg = HopfieldConfig::new(4);
    cfg.heads = 2;
    (cfg.stored_static, cfg.state_static, cfg.projection_static) = (true, true, true);
    (cfg.norm_stored, cfg.norm_state, cfg.norm_projection) = (false, false, false);
    cfg.update_steps_max = 3;
    let mut store = ParamStore::new();
    let layer = Hopfield::new(&mut store, "h", cfg, &mut InitRng::new(1)).unwrap();
    let mut x = random(&[2, 5, 4], 4, 1.5);
    for (e, v) in x.data_mut().iter_mut().enumerate() {
        if e % 4 < 2 {
            *v = 0.25 * (e % 4) as f32 - 0.5;
        }
    }
    let mut t = Tape::inference(&store);
    let xv = t.input(x.clone());
    let out = layer.forward(&mut t, xv, false, 0).unwrap();
    assert_eq!(out.update_steps, 3);
    let xs = f64s(&x);
    let (want, steps) = reference(&RefLayer::read(&store, "h", cfg), 2, &xs, &xs, &xs);
    assert_eq!(steps, 3);
    assert_close("one head stopped", t.value(out.out).data(), &want);

    let checks =
        check_inputs(&store, &[x], H, |t, v| layer.forward(t, v[0], true, 0).map(|o| o.out))
            .unwrap();
    assert!(failures(&checks).is_none(), "{:?}", failures(&checks));
}

#[test]
fn pooling_and_lookup_match_the_reference() {
    let b = 3;
    for forgetting in [Forgetting::None, Forgetting::Pfu(Pfu::median_preset())] {
        // Pooling: two queries over bags of 5.
        let mut store = ParamStore::new();
        let cfg = small_config(forgetting, 2, 2);
        let pool = HopfieldPooling::new(&mut store, "pool", cfg, 2, &mut InitRng::new(6)).unwrap();
        jitter(&mut store, 30);
        let bag = random(&[b, 5, 4], 8, 1.5);
        let mut t = Tape::inference(&store);
        let bv = t.input(bag.clone());
        let out = pool.forward(&mut t, bv, None, false, 3).unwrap();
        assert_eq!(t.shape(out.out), &[b, 2 * 4]);
        let query = tile(&f64s(store.value(pool.query)), b);
        let bs = f64s(&bag);
        let (want, _) = reference(&RefLayer::read(&store, "pool", cfg), b, &bs, &query, &bs);
        assert_close(&format!("pooling, {}", forgetting.name()), t.value(out.out).data(), &want);

        // Lookup, shared and separated (frozen) targets; the batch is folded
        // into the queries inside the layer.
        for separated in [false, true] {
            let mut store = ParamStore::new();
            let l = HopfieldLayer::new(
                &mut store,
                "lk",
                cfg,
                7,
                separated,
                false,
                &mut InitRng::new(7),
            )
            .unwrap();
            jitter(&mut store, 40);
            let x = random(&[b, 4, 4], 9, 1.5);
            let mut t = Tape::inference(&store);
            let xv = t.input(x.clone());
            let out = l.forward(&mut t, xv, false, 4).unwrap();
            assert_eq!(t.shape(out.out), &[b, 4, 4]);
            let lookup = tile(&f64s(store.value(l.lookup)), b);
            let targets = match l.targets {
                Some(tp) => tile(&f64s(store.value(tp.id)), b),
                None => lookup.clone(),
            };
            let (want, _) =
                reference(&RefLayer::read(&store, "lk", cfg), b, &lookup, &f64s(&x), &targets);
            let what = format!("lookup, separated {separated}, {}", forgetting.name());
            assert_close(&what, t.value(out.out).data(), &want);
        }
    }
}

#[test]
fn static_patterns_skip_their_projection() {
    let mut cfg = HopfieldConfig::new(4);
    cfg.heads = 2;
    cfg.stored_static = true;
    cfg.state_static = true;
    cfg.projection_static = true;
    let mut store = ParamStore::new();
    let layer = Hopfield::new(&mut store, "st", cfg, &mut InitRng::new(1)).unwrap();
    assert!(layer.q_proj.is_none() && layer.k_proj.is_none() && layer.v_proj.is_none());
    jitter(&mut store, 2);
    let x = random(&[2, 3, 4], 3, 1.0);
    let mut t = Tape::inference(&store);
    let xv = t.input(x.clone());
    let out = layer.forward(&mut t, xv, false, 0).unwrap();
    let xs = f64s(&x);
    let (want, _) = reference(&RefLayer::read(&store, "st", cfg), 2, &xs, &xs, &xs);
    assert_close("static", t.value(out.out).data(), &want);

    cfg.heads = 3; // 4 is not 3 heads x 1
    cfg.head_dim = Some(1);
    assert!(Hopfield::new(&mut ParamStore::new(), "bad", cfg, &mut InitRng::new(1)).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let mut store = ParamStore::new();
    let layer =
        Hopfield::new(&mut store, "h", HopfieldConfig::new(4), &mut InitRng::new(1)).unwrap();
    let mut t = Tape::inference(&store);
    let x = t.input(Tensor::zeros(&[2, 3, 5]));
    assert!(layer.forward(&mut t, x, false, 0).is_err());
    let x = t.input(Tensor::zeros(&[6, 4]));
    assert!(layer.forward(&mut t, x, false, 0).is_err());
    let mut cfg = HopfieldConfig::new(4);
    cfg.dropout = 1.0;
    assert!(Hopfield::new(&mut ParamStore::new(), "h", cfg, &mut InitRng::new(1)).is_err());
}

// --------------------------------------------------------------- gradients

/// One coordinate's check, named; `crossing` when the forgetting decisions
/// changed within the finite-difference range.
struct Named {
    what: String,
    check: CoordCheck,
    crossing: bool,
}

/// `(L, S)` of the projected output and every op call's forgotten count and
/// threshold.
type Eval = ((f64, f64), Vec<(u64, f32)>);

/// Whether the forgetting decisions differ between `base` and `others`: a
/// count of forgotten entries changed (an entry crossed the threshold), or a
/// threshold is not affine along the five points (the median changed hands).
/// Either makes the function non-differentiable somewhere in the range.
fn crossed(base: &[(u64, f32)], others: &[Vec<(u64, f32)>]) -> bool {
    // check_coordinate evaluates at x0 + h, x0 - h, x0 + 2h, x0 - 2h.
    let [p1, m1, p2, m2] = others else { return true };
    (0..base.len()).any(|c| {
        let counts = [p1[c].0, m1[c].0, p2[c].0, m2[c].0];
        let z = |v: &Vec<(u64, f32)>| v[c].1 as f64;
        let z0 = base[c].1 as f64;
        if !z0.is_finite() {
            return counts.iter().any(|&n| n != base[c].0);
        }
        let tol = 2e-5 * (1.0 + z0.abs());
        counts.iter().any(|&n| n != base[c].0)
            || (z(p1) - 2.0 * z0 + z(m1)).abs() > tol
            || (z(p2) - 2.0 * z0 + z(m2)).abs() > tol
    })
}

/// The gradient of `build` (projected on a random direction) with respect to
/// the input `x` and to every trainable parameter, against central
/// differences.
fn check_layer(
    store: &ParamStore,
    x: &Tensor,
    build: &dyn Fn(&mut Tape, Var) -> lwpf::Result<Var>,
) -> Vec<Named> {
    let stats =
        |t: &Tape| t.attention_stats().iter().map(|c| (c.forgotten, c.threshold.z)).collect();
    let mut t = Tape::new(store);
    let xv = t.leaf(x.clone());
    let out = build(&mut t, xv).unwrap();
    let r = gradcheck::direction(t.value(out).numel(), 0x5eed);
    let base: Vec<(u64, f32)> = stats(&t);
    let grads = t.backward_with(out, &r).unwrap();
    let eval = |store: &ParamStore, x: &Tensor| -> Eval {
        let mut t = Tape::new(store);
        let xv = t.input(x.clone());
        let out = build(&mut t, xv).unwrap();
        (project(t.value(out).data(), &r), stats(&t))
    };
    let one = |x0: f32, a: f32, f: &dyn Fn(f32) -> Eval| -> (CoordCheck, bool) {
        let seen = std::cell::RefCell::new(Vec::new());
        let check = check_coordinate(x0, a, H, |v| {
            let (l, st) = f(v);
            seen.borrow_mut().push(st);
            Ok(l)
        })
        .unwrap();
        (check, crossed(&base, &seen.borrow()))
    };

    let mut checks = Vec::new();
    let gx = grads.get(xv).map(Tensor::to_vec).unwrap_or_else(|| vec![0.0; x.numel()]);
    for (i, &a) in gx.iter().enumerate() {
        let (check, crossing) = one(x.data()[i], a, &|v| {
            let mut x2 = x.clone();
            x2.data_mut()[i] = v;
            eval(store, &x2)
        });
        checks.push(Named { what: format!("input[{i}]"), check, crossing });
    }
    for (id, p) in store.iter() {
        let Some(g) = grads.param(id) else { continue };
        for (i, &a) in g.data().iter().enumerate() {
            let (check, crossing) = one(p.value.data()[i], a, &|v| {
                let mut s2 = store.clone();
                s2.get_mut(id).value.data_mut()[i] = v;
                eval(&s2, x)
            });
            checks.push(Named { what: format!("{}[{i}]", p.name), check, crossing });
        }
    }
    checks
}

/// Checks every coordinate whose finite differences stay clear of a change
/// of the forgetting decisions (there the function has a kink or a jump and
/// a difference says nothing about the gradient): each such coordinate must
/// look smooth and pass, and they must be most of all coordinates.
fn assert_layer_gradients(
    what: &str,
    store: &ParamStore,
    x_shape: &[usize],
    build: &dyn Fn(&mut Tape, Var) -> lwpf::Result<Var>,
) {
    let x = random(x_shape, 100, 1.5);
    let checks = check_layer(store, &x, build);
    let clear: Vec<&Named> = checks.iter().filter(|c| !c.crossing).collect();
    let bad: Vec<String> = clear
        .iter()
        .filter(|c| !c.check.passes() || !c.check.smooth())
        .take(5)
        .map(|c| {
            format!(
                "{}: analytic {:.6e}, numeric {:.6e}, tol {:.2e}, truncation {:.2e}",
                c.what,
                c.check.analytic,
                c.check.numeric,
                c.check.tolerance(),
                c.check.truncation
            )
        })
        .collect();
    assert!(bad.is_empty(), "{what}: {}", bad.join("; "));
    assert!(
        clear.len() * 10 >= checks.len() * 6,
        "{what}: only {} of {} coordinates clear of a crossing",
        clear.len(),
        checks.len()
    );
    let nonzero = clear.iter().filter(|c| c.check.analytic != 0.0).count();
    assert!(nonzero * 2 > clear.len(), "{what}: gradients mostly zero");
}

fn configs() -> Vec<(String, HopfieldConfig, bool)> {
    let mut out = Vec::new();
    for forgetting in [Forgetting::None, Forgetting::Relu, Forgetting::Pfu(Pfu::median_preset())] {
        out.push((
            format!("{}, default", forgetting.name()),
            small_config(forgetting, 1, 0),
            false,
        ));
        let mut c = small_config(forgetting, 2, 2);
        c.dropout = 0.3;
        out.push((format!("{}, 2 heads, 2 steps, dropout, training", forgetting.name()), c, true));
    }
    out
}

fn out_var(o: lwpf::Result<HopfieldOutput>) -> lwpf::Result<Var> {
    o.map(|o| o.out)
}

#[test]
fn hopfield_gradients() {
    for (what, cfg, training) in configs() {
        let mut store = ParamStore::new();
        let layer = Hopfield::new(&mut store, "h", cfg, &mut InitRng::new(11)).unwrap();
        jitter(&mut store, 50);
        assert_layer_gradients(&format!("hopfield, {what}"), &store, &[2, 3, 4], &|t, x| {
            out_var(layer.forward(t, x, training, 9))
        });
    }
}

#[test]
fn pooling_gradients() {
    for (what, cfg, training) in configs() {
        let mut store = ParamStore::new();
        let layer = HopfieldPooling::new(&mut store, "p", cfg, 2, &mut InitRng::new(12)).unwrap();
        jitter(&mut store, 60);
        assert_layer_gradients(&format!("pooling, {what}"), &store, &[2, 4, 4], &|t, x| {
            out_var(layer.forward(t, x, None, training, 9))
        });
    }
}

#[test]
fn lookup_gradients() {
    for (what, cfg, training) in configs() {
        for separated in [false, true] {
            let mut store = ParamStore::new();
            let layer =
                HopfieldLayer::new(&mut store, "l", cfg, 5, separated, true, &mut InitRng::new(13))
                    .unwrap();
            jitter(&mut store, 70);
            assert_layer_gradients(
                &format!("lookup (separated {separated}), {what}"),
                &store,
                &[2, 3, 4],
                &|t, x| out_var(layer.forward(t, x, training, 9)),
            );
        }
    }
}

#[test]
fn frozen_targets_get_no_gradient() {
    let mut store = ParamStore::new();
    let layer = HopfieldLayer::new(
        &mut store,
        "l",
        HopfieldConfig::new(4),
        5,
        true,
        false,
        &mut InitRng::new(1),
    )
    .unwrap();
    let mut t = Tape::new(&store);
    let x = t.input(random(&[2, 3, 4], 1, 1.0));
    let out = layer.forward(&mut t, x, true, 0).unwrap();
    let loss = t.bce_with_logits(out.out, &[0.5; 24]).unwrap();
    let grads = t.backward(loss).unwrap();
    assert!(grads.param(layer.targets.unwrap().id).is_none());
    assert!(grads.param(layer.lookup).is_some());
}
