//! The unfused baseline's host side (`kernels/unfused.cu`): the op computed
//! the way the authors' PyTorch code does, with the score matrix and its
//! gradient materialized, three matrix products forward and five backward,
//! and elementwise kernels in between.
//!
//! [`emulated_forward`] and [`emulated_backward`] run the elementwise kernels
//! under the host emulation with [`crate::gemm::sgemm`] standing in for
//! cuBLAS, so the kernels are tested without a GPU against the reference;
//! `cuda::unfused_forward` and `cuda::unfused_backward` run the same sequence
//! on the GPU with cuBLAS. Memory: three `B * H * Nq * Nk` buffers in the
//! backward, by design.

use super::backward::{
    BackwardKernel, BackwardPointers, BackwardTiles, DqMode, backward_params, uses_center_gradient,
};
use super::emulated::launch_backward;
use super::params::*;
use super::{
    CallPointers, THREADS, call_stats, check_limits, forward_threshold, host_threshold,
    median_params, median_state, uses_median_kernels, valid_entries,
};
use crate::error::Result;
use crate::gemm::{Par, Trans, sgemm};
use crate::op::{
    AttentionConfig, AttentionInput, Forward, Grads, Precision, RoundedInput, check_backward_input,
    philox,
};

unsafe extern "C" {
    fn lwpf_emu_unfused_f32(kernel: i32, grid: u32, block: u32, p: *const LwpfUnfusedParams);
    fn lwpf_emu_median_select(grid: u32, block: u32, p: *const LwpfMedianParams);
}

/// Rows of S per block of the median histogram (`UNFUSED_HIST_ROWS`).
const HIST_ROWS: usize = 32;

/// The elementwise kernels, as `lwpf_emu_unfused_f32` numbers them.
#[derive(Clone, Copy)]
enum Kernel {
    MedianHist = 0,
    Softmax = 1,
    DScore = 2,
    Ties = 3,
}

fn launch(kernel: Kernel, grid: usize, p: &LwpfUnfusedParams) {
    // SAFETY: the callers fill `p` with live buffers of the call's sizes.
    unsafe { lwpf_emu_unfused_f32(kernel as i32, grid as u32, THREADS, p) };
}

/// The elementwise kernels' symbols, in the order of the emulation's numbers.
pub const SYMBOLS: [&str; 4] = [
    "lwpf_unfused_median_hist_f32",
    "lwpf_unfused_softmax_f32",
    "lwpf_unfused_dscore_f32",
    "lwpf_unfused_ties_f32",
];

/// Blocks of the median histogram for `rows` rows of S.
pub fn hist_grid(rows: usize) -> u32 {
    rows.div_ceil(HIST_ROWS) as u32
}

/// Parameters with every pointer null but the mask's host address (the
/// callers set what a kernel reads, and the CUDA side the mask's device one).
pub fn unfused_params(input: &AttentionInput, cfg: &AttentionConfig) -> LwpfUnfusedParams {
    let s = input.shape;
    let key = philox::key_of(cfg.seed);
    LwpfUnfusedParams {
        s_ptr: std::ptr::null(),
        w_ptr: std::ptr::null_mut(),
        ds_ptr: std::ptr::null_mut(),
        valid_ptr: input.valid.map_or(std::ptr::null(), |m| m.as_ptr().cast::<u8>()),
        threshold_ptr: std::ptr::null(),
        state_ptr: std::ptr::null_mut(),
        lse_ptr: std::ptr::null_mut(),
        forgotten_ptr: std::ptr::null_mut(),
        delta_ptr: std::ptr::null(),
        center_rows_ptr: std::ptr::null_mut(),
        center_ptr: std::ptr::null(),
        batch: s.batch as i32,
        heads: s.heads as i32,
        n_q: s.n_q as i32,
        n_k: s.n_k as i32,
        pass: 0,
        drop_forgotten: cfg.drop_forgotten as i32,
        dropout_p: cfg.effective_dropout(),
        seed_lo: key[0],
        seed_hi: key[1],
        center_gradient: 0,
    }
}

/// `c_h = alpha op(a_h) op(b_h)` for every head h: the strided batched
/// product cuBLAS does on the GPU. Row-major; `lda` and `ldb` are the row
/// lengths of `a` and `b` as stored, and `c_h` is `m x n`.
#[allow(clippy::too_many_arguments)]
fn batched(
    heads: usize,
    (ta, tb): (Trans, Trans),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    c: &mut [f32],
) {
    let (sa, sb, sc) = (a.len() / heads, b.len() / heads, m * n);
    for h in 0..heads {
        let (ah, bh) = (&a[h * sa..][..sa], &b[h * sb..][..sb]);
        let ch = &mut c[h * sc..][..sc];
        sgemm(ta, tb, m, n, k, alpha, ah, lda, bh, ldb, 0.0, ch, n, Par::Seq);
    }
}

/// S = beta Q K^T, `[B * H * Nq, Nk]`.
fn scores(input: &AttentionInput, beta: f32) -> Vec<f32> {
    let s = input.shape;
    let mut sc = vec![0.0f32; s.rows() * s.n_k];
    let bh = s.batch * s.heads;
    let t = (Trans::No, Trans::Yes);
    batched(bh, t, (s.n_q, s.n_k, s.d), beta, (input.q, s.d), (input.k, s.d), &mut sc);
    sc
}

/// Forward pass (SPEC section 3) of the unfused baseline under emulation.
pub fn emulated_forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    crate::op::check_forward_input(input, cfg)?;
    check_limits(input, "emulated unfused")?;
    // The baseline computes in f32 on the inputs rounded to the precision.
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Forward::empty(s, cfg));
    }
    let sc = scores(input, cfg.beta_for(s.d));
    let entries = valid_entries(input);
    let median_kernels = uses_median_kernels(cfg, entries);
    let mut state = Box::new(median_state(entries.max(1)));
    let threshold = Box::new(host_threshold(cfg));
    // NaN and u32::MAX: an element the kernels failed to write shows.
    let mut w = vec![f32::NAN; s.rows() * s.n_k];
    let mut lse = vec![f32::NAN; s.rows()];
    let mut forgotten = vec![u32::MAX; s.rows()];

    let mut p = unfused_params(input, cfg);
    p.s_ptr = sc.as_ptr();
    p.state_ptr = &mut *state;
    p.threshold_ptr = &*threshold;
    if median_kernels {
        let ptr = CallPointers::state_only(p.state_ptr);
        for pass in 0..LWPF_RADIX_PASSES as i32 {
            p.pass = pass;
            launch(Kernel::MedianHist, hist_grid(s.rows()) as usize, &p);
            let mp = median_params(input, cfg, &ptr, pass);
            // SAFETY: the selection reads and writes the live state only.
            unsafe { lwpf_emu_median_select(1, THREADS, &mp) };
        }
        // SAFETY: `state_ptr` points into the live box `state`.
        p.threshold_ptr = unsafe { &raw const (*p.state_ptr).threshold };
    }
    p.w_ptr = w.as_mut_ptr();
    p.lse_ptr = lse.as_mut_ptr();
    p.forgotten_ptr = forgotten.as_mut_ptr();
    launch(Kernel::Softmax, s.rows(), &p);

    let mut o = vec![0.0f32; s.o_len()];
    let bh = s.batch * s.heads;
    let t = (Trans::No, Trans::No);
    batched(bh, t, (s.n_q, s.d_v, s.n_k), 1.0, (&w, s.n_k), (input.v, s.d_v), &mut o);
    let thr = if median_kernels { state.threshold } else { *threshold };
    Ok(Forward { o, lse, stats: call_stats(cfg, &thr, &forgotten, entries) })
}

/// Backward pass (SPEC section 5) of the unfused baseline under emulation,
/// from its forward pass `fwd`.
pub fn emulated_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Result<Grads> {
    check_backward_input(input, cfg, fwd, d_o)?;
    check_limits(input, "emulated unfused")?;
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Grads::zeros(input.shape));
    }
    let beta = cfg.beta_for(s.d);
    let bh = s.batch * s.heads;
    let sc = scores(input, beta);
    // dP = dO V^T, overwritten by dS.
    let mut ds = vec![0.0f32; s.rows() * s.n_k];
    let t = (Trans::No, Trans::Yes);
    batched(bh, t, (s.n_q, s.n_k, s.d_v), 1.0, (d_o, s.d_v), (input.v, s.d_v), &mut ds);

    let threshold = Box::new(forward_threshold(fwd));
    let mut delta = vec![f32::NAN; s.rows()];
    let mut center_rows = vec![f32::NAN; s.rows()];
    let mut center = Box::new(LwpfCenterGrad::default());
    let mut w = vec![f32::NAN; s.rows() * s.n_k];
    let center_gradient = uses_center_gradient(fwd);

    // Delta_i = dO_i . O_i and the center gradient's sum: the fused
    // backward's kernels, which read only these fields.
    let bptr = BackwardPointers {
        q: std::ptr::null(),
        k: std::ptr::null(),
        v: std::ptr::null(),
        valid: std::ptr::null(),
        o: fwd.o.as_ptr(),
        lse: fwd.lse.as_ptr(),
        d_o: d_o.as_ptr(),
        delta: delta.as_mut_ptr(),
        center_rows: center_rows.as_mut_ptr(),
        center: &mut *center,
        dq: std::ptr::null_mut(),
        dk: std::ptr::null_mut(),
        dv: std::ptr::null_mut(),
    };
    let bp = backward_params(input, cfg, fwd, &bptr, DqMode::Deterministic);
    // Neither the prep kernel nor the center reduction stages tiles: any
    // build's is the same kernel.
    let rows_grid = s.rows().div_ceil(THREADS as usize) as u32;
    // SAFETY: the prep kernel reads O and dO and writes Delta, all of the
    // call's sizes.
    unsafe {
        launch_backward(BackwardKernel::Prep, Precision::F32, BackwardTiles::D64, rows_grid, &bp)
    };

    let mut p = unfused_params(input, cfg);
    p.s_ptr = sc.as_ptr();
    p.w_ptr = w.as_mut_ptr();
    p.ds_ptr = ds.as_mut_ptr();
    p.threshold_ptr = &*threshold;
    p.lse_ptr = fwd.lse.as_ptr().cast_mut();
    p.delta_ptr = delta.as_ptr();
    p.center_rows_ptr = center_rows.as_mut_ptr();
    p.center_ptr = &*center;
    p.center_gradient = center_gradient as i32;
    launch(Kernel::DScore, s.rows(), &p);
    if center_gradient {
        // SAFETY: the reduction reads the per-row sums and writes `center`.
        unsafe {
            launch_backward(
                BackwardKernel::CenterReduce,
                Precision::F32,
                BackwardTiles::D64,
                1,
                &bp,
            )
        };
        launch(Kernel::Ties, s.rows(), &p);
    }

    let mut g = Grads::zeros(s);
    let (nn, tn) = ((Trans::No, Trans::No), (Trans::Yes, Trans::No));
    batched(bh, tn, (s.n_k, s.d_v, s.n_q), 1.0, (&w, s.n_k), (d_o, s.d_v), &mut g.dv);
    batched(bh, nn, (s.n_q, s.d, s.n_k), beta, (&ds, s.n_k), (input.k, s.d), &mut g.dq);
    batched(bh, tn, (s.n_k, s.d, s.n_q), beta, (&ds, s.n_k), (input.q, s.d), &mut g.dk);
    Ok(g)
}
