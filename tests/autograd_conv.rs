//! The sequence-embedding ops (conv1d over ragged sequences, SELU, the maximum
//! over positions): values against direct loops and known points, gradients
//! against finite differences (see `lwpf::autograd::gradcheck`), and the
//! errors bad shapes give.

use lwpf::Error;
use lwpf::autograd::gradcheck::{self, check_inputs, failures};
use lwpf::autograd::{ParamStore, Tape, Tensor, Var, conv_windows};
use lwpf::nn::{Conv1d, InitRng};

/// Step of the central differences: a power of two, so `x +- h` rounds little.
const H: f32 = 1.0 / 128.0;

/// Unit roundoff of `f32`.
const U: f64 = 1.0 / 16_777_216.0;

const ALPHA: f64 = 1.673_263_242_354_377_3;
const SCALE: f64 = 1.050_700_987_355_480_5;

fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let data = gradcheck::direction(n, seed).into_iter().map(|v| v * scale).collect();
    Tensor::new(shape, data).unwrap()
}

/// Checks `build` against finite differences at `inputs`, every coordinate.
fn assert_gradients(
    what: &str,
    inputs: &[Tensor],
    build: impl Fn(&mut Tape, &[Var]) -> lwpf::Result<Var>,
) {
    let params = ParamStore::new();
    let checks = check_inputs(&params, inputs, H, build).unwrap();
    if let Some(f) = failures(&checks) {
        panic!("{what}: {f}");
    }
    let expected: usize = inputs.iter().map(Tensor::numel).sum();
    assert_eq!(checks.len(), expected, "{what}: every coordinate checked");
}

/// Higham's first-order bound on a float sum of `n` rounded operations whose
/// terms have absolute sum `abs`: `gamma_n abs`, `gamma_n = n u / (1 - n u)`.
fn rounding_bound(n: usize, abs: f64) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu) * abs
}

/// The convolution by its definition, in f64: per output its value and the
/// absolute sum of its terms (for the rounding bound). Positions at or past a
/// sequence's length read as zero, whatever `x` holds there.
fn conv_direct(
    x: &Tensor,
    w: &Tensor,
    b: &[f32],
    lengths: &[usize],
) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let [s_n, l, c_in] = x.shape().try_into().unwrap();
    let [c_out, k, _] = w.shape().try_into().unwrap();
    let p = l.max(k) - k + 1;
    let (xd, wd) = (x.data(), w.data());
    let mut y = vec![0.0; s_n * p * c_out];
    let mut abs = vec![0.0; s_n * p * c_out];
    let mut windows = Vec::new();
    for (s, &len) in lengths.iter().enumerate() {
        let n = if len >= k { len - k + 1 } else { 1 };
        windows.push(n);
        for j in 0..n {
            for o in 0..c_out {
                let (mut v, mut a) = (b[o] as f64, (b[o] as f64).abs());
                for t in 0..k {
                    if j + t >= len {
                        continue;
                    }
                    for c in 0..c_in {
                        let term = wd[(o * k + t) * c_in + c] as f64
                            * xd[(s * l + j + t) * c_in + c] as f64;
                        v += term;
                        a += term.abs();
                    }
                }
                y[(s * p + j) * c_out + o] = v;
                abs[(s * p + j) * c_out + o] = a;
            }
        }
    }
    (y, abs, windows)
}

/// Lengths in `1..=l` for `s` sequences, spread over the range, with the
/// cases that matter placed first: length 1, one short of `k`, exactly `k`,
/// and the full `l`.
fn ragged_lengths(s: usize, l: usize, k: usize) -> Vec<usize> {
    let mut lengths: Vec<usize> = (0..s).map(|i| 1 + (i * 7 + 3) % l).collect();
    for (slot, len) in lengths.iter_mut().zip([1, (k - 1).clamp(1, l), k.min(l), l]) {
        *slot = len;
    }
    lengths
}

#[test]
fn conv_windows_counts() {
    assert_eq!(conv_windows(2, 3), 1);
    assert_eq!(conv_windows(3, 3), 1);
    assert_eq!(conv_windows(6, 3), 4);
    assert_eq!(conv_windows(1, 1), 1);
    assert_eq!(conv_windows(30, 9), 22);
}

#[test]
fn conv1d_matches_the_direct_loop_and_zeroes_invalid_windows() {
    // (S, L, k, C_in, C_out): one channel; odd sizes; DeepRC's 9 x 23 -> 32;
    // every sequence shorter than the kernel (P = 1); enough windows for many
    // blocks, so that sequences meet block boundaries.
    let cases = [
        (3, 4, 1, 1, 1),
        (6, 8, 3, 5, 7),
        (40, 30, 9, 23, 32),
        (5, 4, 7, 3, 5),
        (300, 20, 5, 7, 13),
    ];
    for (i, &(s, l, k, c_in, c_out)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        // Padding positions hold data too: the op must read them as zero.
        let x = random(&[s, l, c_in], seed, 1.0);
        let w = random(&[c_out, k, c_in], seed + 1, 0.5);
        let b = random(&[c_out], seed + 2, 0.3);
        let lengths = ragged_lengths(s, l, k);
        let (want, abs, want_windows) = conv_direct(&x, &w, b.data(), &lengths);

        let params = ParamStore::new();
        let mut t = Tape::new(&params);
        let (xv, wv, bv) = (t.input(x), t.input(w), t.input(b));
        let (y, windows) = t.conv1d(xv, wv, Some(bv), &lengths).unwrap();
        let p = l.max(k) - k + 1;
        assert_eq!(t.shape(y), &[s, p, c_out], "case {i}");
        assert_eq!(windows, want_windows, "case {i}");
        let got = t.value(y).data();
        for (q, (&g, (&w, &a))) in got.iter().zip(want.iter().zip(&abs)).enumerate() {
            let (seq, j) = (q / (p * c_out), q / c_out % p);
            if j >= windows[seq] {
                assert_eq!(g, 0.0, "case {i}: invalid window {j} of sequence {seq}");
            } else {
                let bound = rounding_bound(k * c_in + 2, a);
                assert!((g as f64 - w).abs() <= bound, "case {i} at {q}: {g} vs {w} (+- {bound})");
            }
        }
    }
}

#[test]
fn conv1d_gradients_over_ragged_lengths() {
    // Lengths: shorter than k, exactly k, full, in between.
    let (s, l, k, c_in, c_out) = (4, 6, 3, 3, 2);
    let lengths = [2, 3, 6, 4];
    let x = random(&[s, l, c_in], 1, 1.0);
    let w = random(&[c_out, k, c_in], 2, 0.5);
    let b = random(&[c_out], 3, 0.3);
    assert_gradients("conv1d with bias", &[x.clone(), w.clone(), b], |t, v| {
        Ok(t.conv1d(v[0], v[1], Some(v[2]), &lengths)?.0)
    });
    assert_gradients("conv1d without bias", &[x, w], |t, v| {
        Ok(t.conv1d(v[0], v[1], None, &lengths)?.0)
    });
    // Every sequence shorter than the kernel.
    let x = random(&[2, 2, 2], 4, 1.0);
    let w = random(&[3, 4, 2], 5, 0.5);
    assert_gradients("conv1d, L < k", &[x, w], |t, v| Ok(t.conv1d(v[0], v[1], None, &[1, 2])?.0));
}

#[test]
fn conv1d_gradients_over_many_blocks_match_the_direct_sums() {
    // Enough windows (about 18k) that the backward pass splits its blocks
    // over several tasks and adds their partial sums.
    let (s, l, k, c_in, c_out) = (2000, 20, 3, 2, 3);
    let lengths = ragged_lengths(s, l, k);
    let x = random(&[s, l, c_in], 21, 1.0);
    let w = random(&[c_out, k, c_in], 22, 0.5);
    let b = random(&[c_out], 23, 0.3);
    let p = l - k + 1;
    let seed = gradcheck::direction(s * p * c_out, 24);

    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let (xv, wv, bv) = (t.leaf(x.clone()), t.leaf(w.clone()), t.leaf(b.clone()));
    let (y, windows) = t.conv1d(xv, wv, Some(bv), &lengths).unwrap();
    assert!(windows.iter().sum::<usize>() > 64 * 256);
    let grads = t.backward_with(y, &seed).unwrap();

    let (xd, wd) = (x.data(), w.data());
    let mut dx = vec![(0.0f64, 0.0f64); s * l * c_in];
    let mut dw = vec![(0.0f64, 0.0f64); c_out * k * c_in];
    let mut db = vec![(0.0f64, 0.0f64); c_out];
    let add = |acc: &mut (f64, f64), v: f64| {
        acc.0 += v;
        acc.1 += v.abs();
    };
    for (q, &len) in lengths.iter().enumerate() {
        for j in 0..windows[q] {
            for o in 0..c_out {
                let g = seed[(q * p + j) * c_out + o] as f64;
                add(&mut db[o], g);
                for t in (0..k).filter(|t| j + t < len) {
                    for c in 0..c_in {
                        let xi = (q * l + j + t) * c_in + c;
                        let wi = (o * k + t) * c_in + c;
                        add(&mut dw[wi], g * xd[xi] as f64);
                        add(&mut dx[xi], g * wd[wi] as f64);
                    }
                }
            }
        }
    }
    let windows_total: usize = windows.iter().sum();
    for (name, var, want, terms) in
        [("dx", xv, &dx, c_out * k), ("dw", wv, &dw, windows_total), ("db", bv, &db, windows_total)]
    {
        let got = grads.get(var).unwrap().data();
        assert_eq!(got.len(), want.len());
        for (i, (&g, &(v, a))) in got.iter().zip(want).enumerate() {
            let bound = rounding_bound(terms + 1, a);
            assert!((g as f64 - v).abs() <= bound, "{name}[{i}]: {g} vs {v} (+- {bound})");
        }
    }
}

fn selu_f64(x: f64) -> f64 {
    if x > 0.0 { SCALE * x } else { SCALE * ALPHA * x.exp_m1() }
}

#[test]
fn selu_known_values_and_derivatives() {
    let points = [1.0f32, -1.0, 0.0, 2.5, -1e-3, -0.3, -0.4, -5.0, -30.0, 1e-3];
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.leaf(Tensor::new(&[points.len()], points.to_vec()).unwrap());
    let y = t.selu(x).unwrap();
    let got = t.value(y).to_vec();
    assert!((got[0] as f64 - 1.050_700_987_355_480_5).abs() <= 2.0 * U * 1.06);
    let at_minus_one = SCALE * ALPHA * ((-1.0f64).exp() - 1.0);
    assert!((got[1] as f64 - at_minus_one).abs() <= 4.0 * U * at_minus_one.abs());
    assert_eq!(got[2], 0.0);
    for (&x, &g) in points.iter().zip(&got) {
        let want = selu_f64(x as f64);
        // A few ulp of the result: f32 constants, the exp, one product.
        assert!((g as f64 - want).abs() <= 4.0 * U * want.abs(), "selu({x}) = {g}, want {want}");
    }

    let grads = t.backward_with(y, &vec![1.0; points.len()]).unwrap();
    let d = grads.get(x).unwrap().data();
    for (&x, &g) in points.iter().zip(d) {
        // At 0 the right-hand branch: scale.
        let want = if x >= 0.0 { SCALE } else { SCALE * ALPHA * (x as f64).exp() };
        assert!((g as f64 - want).abs() <= 4.0 * U * want, "selu'({x}) = {g}, want {want}");
    }
}

#[test]
fn selu_gradients_away_from_the_kink() {
    // Every point at least 0.1 from 0, far beyond the 2h a difference steps.
    let mut x = random(&[3, 4, 5], 31, 2.0);
    for v in x.data_mut() {
        *v += 0.1f32.copysign(*v);
    }
    assert_gradients("selu", &[x], |t, v| t.selu(v[0]));
}

#[test]
fn max_positions_ignores_positions_past_the_count_and_breaks_ties_first() {
    // x [2, 4, 3]; sequence 0 counts 2 positions, sequence 1 all four.
    let huge = 1e30;
    #[rustfmt::skip]
    let data = vec![
        1.0, -2.0, 0.5,    3.0, -1.0, 0.25,   huge, huge, huge,   huge, huge, huge,
        0.5, -3.0, 7.0,    2.0, -3.0, 1.0,    1.0, -4.0, 8.0,     2.0, -3.5, 9.0,
    ];
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.leaf(Tensor::new(&[2, 4, 3], data).unwrap());
    let m = t.max_positions(x, &[2, 4]).unwrap();
    assert_eq!(t.shape(m), &[2, 3]);
    assert_eq!(t.value(m).data(), &[3.0, -1.0, 0.5, 2.0, -3.0, 9.0]);

    let grads = t.backward_with(m, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let mut want = vec![0.0f32; 24];
    want[3] = 1.0; // (0, 1, 0)
    want[4] = 2.0; // (0, 1, 1)
    want[2] = 3.0; // (0, 0, 2)
    // Channel 0 of sequence 1 ties at positions 1 and 3, channel 1 at 0 and 1:
    // the first position takes the gradient.
    want[12 + 3] = 4.0; // (1, 1, 0)
    want[12 + 1] = 5.0; // (1, 0, 1)
    want[12 + 9 + 2] = 6.0; // (1, 3, 2)
    assert_eq!(grads.get(x).unwrap().data(), &want);
}

#[test]
fn max_positions_gradients() {
    // Distinct values 0.1 apart (60 of them, 37 coprime to 60 permutes them):
    // no finite-difference step of 2h comes near a tie.
    let data: Vec<f32> = (0..60).map(|i| ((i * 37) % 60) as f32 * 0.1 - 3.0).collect();
    let x = Tensor::new(&[3, 5, 4], data).unwrap();
    assert_gradients("max_positions", &[x], |t, v| t.max_positions(v[0], &[1, 3, 5]));
}

/// x, w, b for the composition whose per-channel maxima keep a margin from
/// SELU's kink at 0 and from the runner-up window, so that no step of the
/// finite differences crosses either. One step of 2h in one input (x below 1,
/// w below 0.5) moves a conv output by at most 2h.
fn embedding_inputs(lengths: &[usize], dims: (usize, usize, usize, usize)) -> [Tensor; 3] {
    let (l, k, c_in, c_out) = dims;
    let s = lengths.len();
    let (kink_margin, tie_margin) = (2.0 * 2.0 * H, 2.0 * 4.0 * H);
    for seed in (100u64..).step_by(3) {
        let x = random(&[s, l, c_in], seed, 1.0);
        let w = random(&[c_out, k, c_in], seed + 1, 0.5);
        let b = random(&[c_out], seed + 2, 0.3);
        let params = ParamStore::new();
        let mut t = Tape::inference(&params);
        let (xv, wv, bv) = (t.input(x.clone()), t.input(w.clone()), t.input(b.clone()));
        let (y, windows) = t.conv1d(xv, wv, Some(bv), lengths).unwrap();
        let (yd, p) = (t.value(y).data(), t.shape(y)[1]);
        let clear = (0..s).all(|q| {
            (0..c_out).all(|o| {
                let mut v: Vec<f32> =
                    (0..windows[q]).map(|j| yd[(q * p + j) * c_out + o]).collect();
                v.sort_by(|a, b| b.total_cmp(a));
                v[0].abs() > kink_margin && (v.len() < 2 || v[0] - v[1] > tie_margin)
            })
        });
        if clear {
            return [x, w, b];
        }
    }
    unreachable!()
}

#[test]
fn embedding_composition_gradients() {
    let (l, k, c_in, c_out) = (7, 3, 3, 4);
    let lengths = [2, 3, 7, 5];
    let inputs = embedding_inputs(&lengths, (l, k, c_in, c_out));
    assert_gradients("conv1d -> selu -> max_positions", &inputs, |t, v| {
        let (y, windows) = t.conv1d(v[0], v[1], Some(v[2]), &lengths)?;
        let a = t.selu(y)?;
        t.max_positions(a, &windows)
    });
}

#[test]
fn an_inference_tape_computes_the_same_values_and_no_gradients() {
    let mut store = ParamStore::new();
    let mut rng = InitRng::new(3);
    let conv = Conv1d::new(&mut store, "embed", 5, 6, 3, &mut rng).unwrap();
    let x = random(&[4, 8, 5], 41, 1.0);
    let lengths = [8, 2, 3, 6];
    let run = |t: &mut Tape| {
        let xv = t.input(x.clone());
        let (y, windows) = conv.forward(t, xv, &lengths).unwrap();
        let a = t.selu(y).unwrap();
        t.max_positions(a, &windows).unwrap()
    };
    let mut train = Tape::new(&store);
    let out_train = run(&mut train);
    let mut eval = Tape::inference(&store);
    let out_eval = run(&mut eval);
    assert!(!eval.is_recording());
    assert_eq!(eval.value(out_eval).data(), train.value(out_train).data());

    let seed = vec![1.0; eval.value(out_eval).numel()];
    let eval_grads = eval.backward_with(out_eval, &seed).unwrap();
    assert!(eval_grads.params().iter().all(Option::is_none));
    let train_grads = train.backward_with(out_train, &seed).unwrap();
    assert!(train_grads.param(conv.w).is_some() && train_grads.param(conv.b).is_some());
}

fn op_shape_error<T: std::fmt::Debug>(r: lwpf::Result<T>, op: &str) -> String {
    match r {
        Err(Error::OpShape { op: got, what }) if got == op => what,
        other => panic!("expected an {op} shape error, got {other:?}"),
    }
}

#[test]
fn bad_shapes_are_errors() {
    let params = ParamStore::new();
    let mut t = Tape::new(&params);
    let x = t.input(Tensor::zeros(&[2, 5, 3]));
    let w = t.input(Tensor::zeros(&[4, 2, 3]));
    let b = t.input(Tensor::zeros(&[4]));
    assert!(t.conv1d(x, w, Some(b), &[5, 1]).is_ok());

    let w_cin = t.input(Tensor::zeros(&[4, 2, 2]));
    op_shape_error(t.conv1d(x, w_cin, Some(b), &[5, 1]), "conv1d");
    let w_rank = t.input(Tensor::zeros(&[4, 6]));
    op_shape_error(t.conv1d(x, w_rank, Some(b), &[5, 1]), "conv1d");
    let w_empty = t.input(Tensor::zeros(&[4, 0, 3]));
    op_shape_error(t.conv1d(x, w_empty, None, &[5, 1]), "conv1d");
    let b_bad = t.input(Tensor::zeros(&[3]));
    op_shape_error(t.conv1d(x, w, Some(b_bad), &[5, 1]), "conv1d");
    let x_rank = t.input(Tensor::zeros(&[10, 3]));
    op_shape_error(t.conv1d(x_rank, w, Some(b), &[5, 1]), "conv1d");
    let what = op_shape_error(t.conv1d(x, w, Some(b), &[5, 0]), "conv1d");
    assert!(what.contains("sequence 1 has length 0"), "{what}");
    op_shape_error(t.conv1d(x, w, Some(b), &[6, 1]), "conv1d");
    op_shape_error(t.conv1d(x, w, Some(b), &[5]), "conv1d");
    op_shape_error(t.conv1d(x, w, Some(b), &[5, 1, 1]), "conv1d");

    // No sequences: an empty output, not an error.
    let none = t.input(Tensor::zeros(&[0, 5, 3]));
    let (empty, windows) = t.conv1d(none, w, Some(b), &[]).unwrap();
    assert_eq!((t.shape(empty), windows.len()), (&[0, 4, 4][..], 0));

    let y = t.input(Tensor::zeros(&[2, 4, 3]));
    assert!(t.max_positions(y, &[4, 1]).is_ok());
    op_shape_error(t.max_positions(y, &[4]), "max_positions");
    op_shape_error(t.max_positions(y, &[4, 1, 1]), "max_positions");
    op_shape_error(t.max_positions(y, &[0, 1]), "max_positions");
    op_shape_error(t.max_positions(y, &[5, 1]), "max_positions");
    let y_rank = t.input(Tensor::zeros(&[8, 3]));
    op_shape_error(t.max_positions(y_rank, &[4, 1]), "max_positions");
}

#[test]
fn conv1d_layer_registers_deeprc_initialized_parameters() {
    let (c_in, c_out, width) = (23, 32, 9);
    let mut store = ParamStore::new();
    let mut rng = InitRng::new(11);
    let conv = Conv1d::new(&mut store, "embedding.conv", c_in, c_out, width, &mut rng).unwrap();
    assert_eq!(conv.width, width);
    assert_eq!(store.find("embedding.conv.weight"), Some(conv.w));
    assert_eq!(store.find("embedding.conv.bias"), Some(conv.b));

    let w = store.value(conv.w);
    assert_eq!(w.shape(), &[c_out, width, c_in]);
    let n = w.numel() as f64;
    let std = (1.0 / n).sqrt();
    let mean = w.data().iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = w.data().iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    // Five standard errors of the sample mean and of the sample std.
    assert!(mean.abs() < 5.0 * std / n.sqrt(), "mean {mean}");
    assert!((var.sqrt() / std - 1.0).abs() < 5.0 / (2.0 * n).sqrt(), "std {} vs {std}", var.sqrt());

    let b = store.value(conv.b);
    assert_eq!(b.shape(), &[c_out]);
    let bound = 1.0 / ((width * c_in) as f32).sqrt();
    assert!(b.data().iter().all(|v| v.abs() <= bound));
    // 32 uniform draws: the largest lands in the top quarter of the range.
    assert!(b.data().iter().any(|v| v.abs() > 0.75 * bound));

    // Against the definition with the stored weight and bias, so a layer that
    // passed other parameters, or them in another layout, would fail here.
    let lengths = [12, 5];
    let x = random(&[2, 12, c_in], 51, 1.0);
    let (want, abs, want_windows) = conv_direct(&x, w, b.data(), &lengths);
    let mut t = Tape::new(&store);
    let xv = t.input(x);
    let (y, windows) = conv.forward(&mut t, xv, &lengths).unwrap();
    assert_eq!(windows, [4, 1]);
    assert_eq!(windows, want_windows);
    let p = 12 - width + 1;
    assert_eq!(t.shape(y), &[2, p, c_out]);
    for (q, (&g, (&w, &a))) in t.value(y).data().iter().zip(want.iter().zip(&abs)).enumerate() {
        let (seq, j) = (q / (p * c_out), q / c_out % p);
        if j >= windows[seq] {
            assert_eq!(g, 0.0, "invalid window {j} of sequence {seq}");
        } else {
            let bound = rounding_bound(width * c_in + 2, a);
            assert!((g as f64 - w).abs() <= bound, "at {q}: {g} vs {w} (+- {bound})");
        }
    }

    assert!(Conv1d::new(&mut store, "zero", c_in, c_out, 0, &mut rng).is_err());
}
