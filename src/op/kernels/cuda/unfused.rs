//! The unfused baseline on the GPU: the authors' formulation done the
//! ordinary way. cuBLAS forms S = beta Q K^T in a `B * H * Nq * Nk` buffer,
//! the median is a radix selection over S, an elementwise kernel forgets and
//! normalizes S into W, and cuBLAS forms O = W V; the backward recomputes S
//! and W and forms dV, dQ and dK by cuBLAS around an elementwise dS. It
//! computes in f32 on the inputs rounded to the call's precision.

use std::sync::{Arc, OnceLock};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

use super::super::backward::{
    BackwardKernel, BackwardTiles, DqMode, backward_params, uses_center_gradient,
};
use super::super::params::*;
use super::super::unfused::{SYMBOLS, hist_grid, unfused_params};
use super::super::{CallPointers, THREADS, check_limits, forward_threshold, median_params};
use super::{
    BackwardBuffers, DeviceTensor, ForwardBuffers, Runtime, addr, bytes, device_error, filled,
    forward, launch_config, launch_median_select, runtime, state_threshold, unavailable,
};
use crate::error::Result;
use crate::op::{
    AttentionConfig, AttentionInput, Forward, Grads, Precision, RoundedInput, check_backward_input,
};

/// cuBLAS for the unfused baseline, created on first use, so that a machine
/// without libcublas still runs the fused kernels.
pub(super) fn blas(rt: &'static Runtime) -> Result<&'static CudaBlas> {
    static BLAS: OnceLock<std::result::Result<CudaBlas, String>> = OnceLock::new();
    BLAS.get_or_init(|| CudaBlas::new(rt.stream.clone()).map_err(|e| format!("cuBLAS: {e}")))
        .as_ref()
        .map_err(|r| unavailable(r.clone()))
}

/// Row-major `c_h = alpha op(a_h) op(b_h)` for `batch` heads, `c_h` being
/// `m x n`; `lda` and `ldb` are the row lengths of `a` and `b` as stored.
/// cuBLAS is column-major, so it computes `c^T = op(b)^T op(a)^T`.
///
/// # Safety
/// The buffers must hold `batch` matrices of the sizes given.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rm(
    blas: &CudaBlas,
    batch: usize,
    (ta, tb): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&CudaSlice<f32>, usize),
    (b, ldb): (&CudaSlice<f32>, usize),
    c: &mut CudaSlice<f32>,
) -> Result<()> {
    let op =
        |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let rows_a = if ta { k } else { m };
    let rows_b = if tb { n } else { k };
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha,
            lda: ldb as i32,
            ldb: lda as i32,
            beta: 0.0,
            ldc: n as i32,
        },
        batch_size: batch as i32,
        stride_a: (rows_b * ldb) as i64,
        stride_b: (rows_a * lda) as i64,
        stride_c: (m * n) as i64,
    };
    // SAFETY: the caller's promise on the sizes.
    unsafe { blas.gemm_strided_batched(cfg, b, a, c) }
        .map_err(|e| unavailable(format!("cuBLAS gemm failed: {e}")))
}

fn launch_unfused(rt: &Runtime, kernel: usize, grid: u32, p: &LwpfUnfusedParams) -> Result<()> {
    // SAFETY: the callers fill `p` with live device buffers of the call's
    // sizes; the grid is the one the kernel expects.
    unsafe {
        rt.stream
            .launch_builder(&rt.unfused[kernel])
            .arg(p)
            .launch(launch_config(grid))
            .map_err(device_error(SYMBOLS[kernel]))?;
    }
    Ok(())
}

/// Q, K and V of the baseline, uploaded in f32 by [`UnfusedBuffers::upload`].
fn f32_inputs(qkv: &[DeviceTensor; 3]) -> Result<[&CudaSlice<f32>; 3]> {
    match qkv {
        [DeviceTensor::F32(q), DeviceTensor::F32(k), DeviceTensor::F32(v)] => Ok([q, k, v]),
        _ => Err(unavailable("the unfused baseline's inputs were not uploaded in f32")),
    }
}

/// The device buffers of one call of the baseline: the fused forward's set
/// in f32 (Q, K, V rounded to the call's precision) and the two
/// `B * H * Nq * Nk` buffers S and W.
pub(super) struct UnfusedBuffers {
    f: ForwardBuffers,
    s: CudaSlice<f32>,
    w: CudaSlice<f32>,
}

impl UnfusedBuffers {
    /// `input` must already be rounded to the call's precision; `results`
    /// as for [`ForwardBuffers`].
    pub(super) fn upload(
        st: &Arc<CudaStream>,
        input: &AttentionInput,
        cfg: &AttentionConfig,
        results: Option<&Forward>,
    ) -> Result<Self> {
        let f32_cfg = AttentionConfig { precision: Precision::F32, ..*cfg };
        let n2 = input.shape.rows() * input.shape.n_k;
        let alloc = device_error("allocating device memory");
        Ok(UnfusedBuffers {
            f: ForwardBuffers::upload(st, input, &f32_cfg, results)?,
            s: st.alloc_zeros(n2).map_err(&alloc)?,
            w: st.alloc_zeros(n2).map_err(&alloc)?,
        })
    }

    /// Device memory held by the buffers.
    pub(super) fn bytes(&self) -> usize {
        self.f.bytes() + bytes(&self.s) + bytes(&self.w)
    }

    /// Waits for the stream and copies the forward's results to the host.
    pub(super) fn forward_results(
        &self,
        st: &Arc<CudaStream>,
        cfg: &AttentionConfig,
    ) -> Result<Forward> {
        self.f.download(st, cfg)
    }

    /// Enqueues S = beta Q K^T on the stream.
    fn enqueue_scores(
        &mut self,
        blas: &CudaBlas,
        input: &AttentionInput,
        cfg: &AttentionConfig,
    ) -> Result<()> {
        let s = input.shape;
        let [q, k, _] = f32_inputs(&self.f.qkv)?;
        let beta = cfg.beta_for(s.d);
        let bh = s.batch * s.heads;
        let t = (false, true);
        // SAFETY: Q [bh, Nq, D], K [bh, Nk, D], S [bh, Nq, Nk].
        unsafe { gemm_rm(blas, bh, t, (s.n_q, s.n_k, s.d), beta, (q, s.d), (k, s.d), &mut self.s) }
    }

    /// Enqueues the baseline's forward; nothing waits.
    pub(super) fn enqueue_forward(
        &mut self,
        rt: &Runtime,
        blas: &CudaBlas,
        input: &AttentionInput,
        cfg: &AttentionConfig,
    ) -> Result<()> {
        let s = input.shape;
        let st = &rt.stream;
        self.enqueue_scores(blas, input, cfg)?;
        if self.f.median_kernels {
            st.memcpy_dtod(&self.f.state0, &mut self.f.state)
                .map_err(device_error("resetting the median state"))?;
        }
        let x = self.f.pointers(st);
        let mut p = unfused_params(input, cfg);
        p.valid_ptr = x.valid;
        p.s_ptr = addr(&self.s, st) as *const f32;
        p.state_ptr = x.state;
        p.threshold_ptr = x.threshold;
        if self.f.median_kernels {
            let ptr = CallPointers::state_only(x.state);
            for pass in 0..LWPF_RADIX_PASSES as i32 {
                p.pass = pass;
                launch_unfused(rt, 0, hist_grid(s.rows()), &p)?;
                launch_median_select(rt, &median_params(input, cfg, &ptr, pass))?;
            }
            p.threshold_ptr = state_threshold(x.state);
        }
        p.w_ptr = addr(&self.w, st) as *mut f32;
        p.lse_ptr = x.lse;
        p.forgotten_ptr = x.forgotten;
        launch_unfused(rt, 1, s.rows() as u32, &p)?;
        let ForwardBuffers { qkv, o, .. } = &mut self.f;
        let [_, _, v] = f32_inputs(qkv)?;
        let bh = s.batch * s.heads;
        let dims = (s.n_q, s.d_v, s.n_k);
        // SAFETY: W [bh, Nq, Nk], V [bh, Nk, Dv], O [bh, Nq, Dv].
        unsafe { gemm_rm(blas, bh, (false, false), dims, 1.0, (&self.w, s.n_k), (v, s.d_v), o) }
    }
}

/// The device buffers of the baseline's backward beyond its forward's: the
/// fused backward's set, the threshold of the forward, and dS.
pub(super) struct UnfusedBackward {
    b: BackwardBuffers,
    thr: CudaSlice<LwpfThreshold>,
    ds: CudaSlice<f32>,
}

impl UnfusedBackward {
    pub(super) fn upload(
        st: &Arc<CudaStream>,
        input: &AttentionInput,
        fwd: &Forward,
        d_o: &[f32],
    ) -> Result<Self> {
        let s = input.shape;
        Ok(UnfusedBackward {
            b: BackwardBuffers::upload(st, s, d_o)?,
            thr: filled(st, forward_threshold(fwd), 1)?,
            ds: st
                .alloc_zeros(s.rows() * s.n_k)
                .map_err(device_error("allocating device memory"))?,
        })
    }

    /// Device memory held by the buffers.
    pub(super) fn bytes(&self) -> usize {
        self.b.bytes() + bytes(&self.thr) + bytes(&self.ds)
    }

    /// Enqueues the backward of the call whose forward buffers are `u` and
    /// whose forward statistics are in `fwd`; nothing waits. It recomputes
    /// S and W in `u`.
    pub(super) fn enqueue(
        &mut self,
        rt: &Runtime,
        blas: &CudaBlas,
        (input, cfg): (&AttentionInput, &AttentionConfig),
        fwd: &Forward,
        u: &mut UnfusedBuffers,
    ) -> Result<()> {
        let s = input.shape;
        let st = &rt.stream;
        let bh = s.batch * s.heads;
        let beta = cfg.beta_for(s.d);
        u.enqueue_scores(blas, input, cfg)?;
        let [q, k, v] = f32_inputs(&u.f.qkv)?;
        let b = &mut self.b;
        // SAFETY: dP [bh, Nq, Nk] = dO V^T, from dO [bh, Nq, Dv], V [bh, Nk, Dv].
        unsafe {
            let dims = (s.n_q, s.n_k, s.d_v);
            gemm_rm(blas, bh, (false, true), dims, 1.0, (&b.d_o, s.d_v), (v, s.d_v), &mut self.ds)?
        };
        let center_gradient = uses_center_gradient(fwd);
        // The prep and center kernels read O, lse, dO and the row sums; the
        // Q, K, V and gradient pointers are the baseline's f32 buffers,
        // which neither reads.
        let bptr = b.pointers(st, &u.f);
        let bp = backward_params(input, cfg, fwd, &bptr, DqMode::Deterministic);
        // Neither kernel stages tiles: any build's entry is the same one.
        let prep = rt.backward(BackwardKernel::Prep, Precision::F32, BackwardTiles::D64);
        let reduce = rt.backward(BackwardKernel::CenterReduce, Precision::F32, BackwardTiles::D64);
        let rows_grid = s.rows().div_ceil(THREADS as usize) as u32;
        // SAFETY: the prep kernel reads O and dO and writes Delta.
        unsafe {
            st.launch_builder(prep)
                .arg(&bp)
                .launch(launch_config(rows_grid))
                .map_err(device_error("Delta"))?;
        }
        let mut p = unfused_params(input, cfg);
        p.valid_ptr = bptr.valid;
        p.s_ptr = addr(&u.s, st) as *const f32;
        p.w_ptr = addr(&u.w, st) as *mut f32;
        p.ds_ptr = addr(&self.ds, st) as *mut f32;
        p.threshold_ptr = addr(&self.thr, st) as *const LwpfThreshold;
        p.lse_ptr = bptr.lse as *mut f32;
        p.delta_ptr = bptr.delta;
        p.center_rows_ptr = bptr.center_rows;
        p.center_ptr = bptr.center;
        p.center_gradient = center_gradient as i32;
        launch_unfused(rt, 2, s.rows() as u32, &p)?;
        if center_gradient {
            // SAFETY: the reduction reads the row sums and writes `center`.
            unsafe {
                st.launch_builder(reduce)
                    .arg(&bp)
                    .launch(launch_config(1))
                    .map_err(device_error("center gradient"))?;
            }
            launch_unfused(rt, 3, s.rows() as u32, &p)?;
        }
        let (w, ds) = (&u.w, &self.ds);
        // SAFETY: dV [bh, Nk, Dv] = W^T dO; dQ [bh, Nq, D] = beta dS K;
        // dK [bh, Nk, D] = beta dS^T Q.
        unsafe {
            let dims = (s.n_k, s.d_v, s.n_q);
            gemm_rm(blas, bh, (true, false), dims, 1.0, (w, s.n_k), (&b.d_o, s.d_v), &mut b.dv)?;
            let dims = (s.n_q, s.d, s.n_k);
            gemm_rm(blas, bh, (false, false), dims, beta, (ds, s.n_k), (k, s.d), &mut b.dq)?;
            let dims = (s.n_k, s.d, s.n_q);
            gemm_rm(blas, bh, (true, false), dims, beta, (ds, s.n_k), (q, s.d), &mut b.dk)?;
        }
        Ok(())
    }
}

/// Forward pass (SPEC section 3) of the unfused baseline on the GPU: S by
/// cuBLAS, the median by radix selection over S, the elementwise softmax,
/// O by cuBLAS. Holds two `B * H * Nq * Nk` buffers.
pub fn unfused_forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    crate::op::check_forward_input(input, cfg)?;
    check_limits(input, "cuda unfused")?;
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let rt = runtime()?;
    let blas = blas(rt)?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return forward(input, cfg);
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut u = UnfusedBuffers::upload(&rt.stream, input, cfg, None)?;
    u.enqueue_forward(rt, blas, input, cfg)?;
    u.forward_results(&rt.stream, cfg)
}

/// Backward pass (SPEC section 5) of the unfused baseline on the GPU, from
/// its forward pass `fwd`: S and dP by cuBLAS, the elementwise dS, then dV,
/// dQ and dK by cuBLAS. Holds three `B * H * Nq * Nk` buffers.
pub fn unfused_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Result<Grads> {
    check_backward_input(input, cfg, fwd, d_o)?;
    check_limits(input, "cuda unfused")?;
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let s = input.shape;
    let rt = runtime()?;
    let blas = blas(rt)?;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Grads::zeros(input.shape));
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let mut u = UnfusedBuffers::upload(st, input, cfg, Some(fwd))?;
    let mut b = UnfusedBackward::upload(st, input, fwd, d_o)?;
    b.enqueue(rt, blas, (input, cfg), fwd, &mut u)?;
    b.b.download(st)
}
