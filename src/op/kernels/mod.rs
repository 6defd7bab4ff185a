//! The fused kernels of `kernels/` seen from the host: their parameter
//! structs, the sequence of launches of one forward call, and the two ways to
//! run them.
//!
//! - [`emulated`]: the kernel sources compiled as host C++ against
//!   `kernels/emu/emu.h` and run on the CPU, one OS thread per CUDA thread.
//!   Always built; it exists so that tests without a GPU exercise the real
//!   kernel code (index arithmetic, tiling, radix selection, online softmax,
//!   Philox). It is far too slow for real use.
//! - `cuda` (feature `cuda`): the same sources compiled by nvcc and launched
//!   on a GPU through cudarc.
//!
//! One forward call is: for a median centre, three histogram passes of the
//! radix selection, each followed by a one-block selection step that also
//! writes the threshold (z, b) to device memory; for any other forgetting
//! function the host writes the threshold. Then the fused forward kernel, which
//! reads the threshold from device memory, so there is no round trip between
//! the median and the forward pass.
//!
//! The backward pass is laid out in [`backward`].
//!
//! Q, K and V are read in the call's [`Precision`]: f32, or bf16 and fp16 as
//! 16-bit words ([`KernelInputs`]), whose scores are formed on tensor cores
//! (`kernels/scores.cuh`). Everything the kernels write is f32.
//!
//! Limits narrower than SPEC: `Dv <= 128` (the forward's accumulators are
//! registers), `D, Dv <= 128` in the backward (its tiles hold whole rows in
//! shared memory), sizes below 2^31 per dimension.

pub mod backward;
pub mod emulated;
pub mod params;
pub mod unfused;

#[cfg(feature = "cuda")]
pub mod cuda;

use params::*;

use std::ffi::c_void;

use super::{
    AttentionConfig, AttentionInput, Bias, CallStats, Forgetting, Forward, Precision, Threshold,
    philox,
};
use crate::error::{Error, Result};

/// Threads per block of every tiled kernel.
pub const THREADS: u32 = LWPF_THREADS;

/// Number of blocks of the tiled kernels: one per (batch * head, query tile).
pub fn tiled_grid(input: &AttentionInput) -> u32 {
    let s = input.shape;
    ((s.batch * s.heads) * s.n_q.div_ceil(LWPF_TILE_Q as usize)) as u32
}

/// Checks the limits of the kernels that SPEC does not have; `backend` names
/// the backend in the error.
pub fn check_limits(input: &AttentionInput, backend: &'static str) -> Result<()> {
    let s = input.shape;
    if s.d_v > LWPF_MAX_DV as usize {
        return Err(Error::BackendUnavailable {
            backend,
            reason: format!("the fused kernels support Dv <= {LWPF_MAX_DV}, got Dv = {}", s.d_v),
        });
    }
    let too_big = [s.batch, s.heads, s.n_q, s.n_k, s.d, s.batch * s.heads * s.n_q]
        .iter()
        .any(|&n| n > i32::MAX as usize);
    let blocks = (s.batch * s.heads) as u64 * s.n_q.div_ceil(LWPF_TILE_Q as usize) as u64;
    if too_big || blocks > i32::MAX as u64 {
        return Err(Error::BackendUnavailable {
            backend,
            reason: format!("the fused kernels need every size below 2^31, got {s}"),
        });
    }
    Ok(())
}

/// Number of valid scores of the call: `H * Nq * (valid keys, summed over
/// the batch)`.
pub fn valid_entries(input: &AttentionInput) -> u64 {
    let s = input.shape;
    let keys = match input.valid {
        None => (s.batch * s.n_k) as u64,
        Some(m) => m.iter().filter(|&&v| v).count() as u64,
    };
    keys * (s.heads * s.n_q) as u64
}

/// Whether the call's threshold comes from the median kernels (a median
/// centre and at least one valid score).
pub fn uses_median_kernels(cfg: &AttentionConfig, entries: u64) -> bool {
    cfg.forgetting.needs_median() && entries > 0
}

/// The threshold the host writes when the median kernels do not run.
pub fn host_threshold(cfg: &AttentionConfig) -> LwpfThreshold {
    let t = Threshold::resolve(cfg, None);
    LwpfThreshold { z: t.z, b: t.b, ..Default::default() }
}

/// The initial state of the radix selection: rank of the lower median,
/// nothing fixed, empty histogram.
pub fn median_state(entries: u64) -> LwpfMedianState {
    LwpfMedianState { rank: (entries - 1) / 2, ..Default::default() }
}

/// The code of a kernel family's element type, as `kernels/emu/launch.cpp`
/// takes it.
pub fn dtype_code(p: Precision) -> i32 {
    match p {
        Precision::F32 => 0,
        Precision::Bf16 => 1,
        Precision::F16 => 2,
    }
}

/// One of Q, K, V as the kernels read it: the caller's f32 slice, or its
/// 16-bit words in the call's precision.
pub enum KernelTensor<'a> {
    F32(&'a [f32]),
    Bits(Vec<u16>),
}

impl KernelTensor<'_> {
    /// The address of the first element.
    pub fn as_ptr(&self) -> *const c_void {
        match self {
            KernelTensor::F32(x) => x.as_ptr().cast(),
            KernelTensor::Bits(x) => x.as_ptr().cast(),
        }
    }
}

/// Q, K and V of a call in its precision.
pub struct KernelInputs<'a> {
    pub q: KernelTensor<'a>,
    pub k: KernelTensor<'a>,
    pub v: KernelTensor<'a>,
}

impl<'a> KernelInputs<'a> {
    pub fn new(input: &AttentionInput<'a>, precision: Precision) -> Self {
        let conv = |x: &'a [f32]| match precision {
            Precision::F32 => KernelTensor::F32(x),
            p => KernelTensor::Bits(x.iter().map(|&v| p.bits(v).unwrap_or(0)).collect()),
        };
        KernelInputs { q: conv(input.q), k: conv(input.k), v: conv(input.v) }
    }
}

/// Pointers of one call as the kernels see them (host addresses in the
/// emulation, device addresses on the GPU). Q, K and V are of the call's
/// precision.
#[derive(Clone, Copy, Debug)]
pub struct CallPointers {
    pub q: *const c_void,
    pub k: *const c_void,
    pub v: *const c_void,
    /// Null without a mask.
    pub valid: *const u8,
    pub state: *mut LwpfMedianState,
    pub threshold: *const LwpfThreshold,
    pub o: *mut f32,
    pub lse: *mut f32,
    pub forgotten: *mut u32,
}

impl CallPointers {
    /// Only the median's state: what the selection step reads, for the
    /// unfused baseline, whose histogram pass reads S rather than Q and K.
    pub fn state_only(state: *mut LwpfMedianState) -> Self {
        CallPointers {
            q: std::ptr::null(),
            k: std::ptr::null(),
            v: std::ptr::null(),
            valid: std::ptr::null(),
            state,
            threshold: std::ptr::null(),
            o: std::ptr::null_mut(),
            lse: std::ptr::null_mut(),
            forgotten: std::ptr::null_mut(),
        }
    }
}

/// The threshold the forward `fwd` used, as the backward kernels read it
/// from device memory.
pub fn forward_threshold(fwd: &Forward) -> LwpfThreshold {
    let t = fwd.stats.threshold;
    LwpfThreshold {
        z: t.z,
        b: t.b,
        m: t.m.unwrap_or(f32::NAN),
        has_median: t.m.is_some() as i32,
        at_median: fwd.stats.at_median,
    }
}

/// Parameters of the median pass `pass` (histogram and selection alike).
pub fn median_params(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    ptr: &CallPointers,
    pass: i32,
) -> LwpfMedianParams {
    let s = input.shape;
    let (noise_std, bias_kind, bias_value) = match cfg.forgetting {
        Forgetting::Pfu(p) => {
            let (kind, value) = match p.bias {
                Bias::Threshold => (LWPF_BIAS_THRESHOLD, 0.0),
                Bias::Fixed(b) => (LWPF_BIAS_FIXED, b),
                Bias::NegInf => (LWPF_BIAS_NEG_INF, f32::NEG_INFINITY),
            };
            (p.noise_std, kind, value)
        }
        _ => (0.0, LWPF_BIAS_THRESHOLD, 0.0),
    };
    LwpfMedianParams {
        q_ptr: ptr.q,
        k_ptr: ptr.k,
        valid_ptr: ptr.valid,
        state_ptr: ptr.state,
        batch: s.batch as i32,
        heads: s.heads as i32,
        n_q: s.n_q as i32,
        n_k: s.n_k as i32,
        d: s.d as i32,
        beta: cfg.beta_for(s.d),
        pass,
        add_noise: cfg.training as i32,
        noise_std,
        eps: philox::threshold_eps(cfg.seed),
        bias_kind: bias_kind as i32,
        bias_value,
    }
}

/// Parameters of the fused forward kernel.
pub fn forward_params(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    ptr: &CallPointers,
) -> LwpfForwardParams {
    let s = input.shape;
    let key = philox::key_of(cfg.seed);
    LwpfForwardParams {
        q_ptr: ptr.q,
        k_ptr: ptr.k,
        v_ptr: ptr.v,
        valid_ptr: ptr.valid,
        threshold_ptr: ptr.threshold,
        o_ptr: ptr.o,
        lse_ptr: ptr.lse,
        forgotten_ptr: ptr.forgotten,
        batch: s.batch as i32,
        heads: s.heads as i32,
        n_q: s.n_q as i32,
        n_k: s.n_k as i32,
        d: s.d as i32,
        d_v: s.d_v as i32,
        beta: cfg.beta_for(s.d),
        drop_forgotten: cfg.drop_forgotten as i32,
        dropout_p: cfg.effective_dropout(),
        seed_lo: key[0],
        seed_hi: key[1],
    }
}

/// The call's statistics from the threshold the kernels used and the per-row
/// forgotten counts they wrote.
pub fn call_stats(
    cfg: &AttentionConfig,
    thr: &LwpfThreshold,
    forgotten: &[u32],
    entries: u64,
) -> CallStats {
    let m = (thr.has_median != 0).then_some(thr.m);
    let center_gradient = Threshold::resolve(cfg, m).center_gradient;
    CallStats {
        threshold: Threshold { z: thr.z, b: thr.b, m, center_gradient },
        forgotten: forgotten.iter().map(|&c| c as u64).sum(),
        entries,
        at_median: if m.is_some() { thr.at_median } else { 0 },
    }
}
