//! The host side of the fused backward (`kernels/backward.cu`, SPEC section
//! 5): its checks, its parameter struct and its sequence of launches, shared
//! by the emulated and the CUDA backends.
//!
//! One call is: the Delta pre-pass; with the center gradient, the per-row
//! gradient reaching b and its one-block sum; the key-tile kernel for dK and
//! dV; and, in [`DqMode::Deterministic`], the query-tile kernel for dQ. In
//! [`DqMode::Atomic`] the key-tile kernel adds dQ with float atomics instead
//! (one kernel less of score recomputation, dQ not bit-reproducible).
//!
//! The kernels stage whole rows of Q, K, V and dO in shared memory, so the
//! tiled ones (center, dK dV, dQ) are built for two widths, [`BackwardTiles`]:
//! `D, Dv <= 64` in 42 KB of static shared memory per block (46 KB for bf16
//! and fp16, which add a score tile), and `D, Dv <= 128` in up to 77 KB of
//! dynamic shared memory. Each call runs the narrower build
//! that holds it; both give the same bits.
//!
//! Q, K and V come in the call's precision (the tiled kernels have a build
//! per type); O, dO and the gradients are f32. Limits narrower than SPEC:
//! `D <= 128` and `Dv <= 128`. Extra device memory: two floats per query row
//! and one small struct.

use super::params::*;
use super::{THREADS, check_limits, tiled_grid};
use crate::error::{Error, Result};
use crate::op::{
    AttentionConfig, AttentionInput, Forward, Precision, Shape, check_backward_input, philox,
};

/// How the fused backward writes dQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DqMode {
    /// A query-tile kernel of its own sums dQ in a fixed order: bit-identical
    /// run to run.
    #[default]
    Deterministic,
    /// The key-tile kernel adds its share of dQ with float atomics: faster,
    /// but the order of the additions (and so the last bits of dQ) is the
    /// scheduler's.
    Atomic,
}

/// The kernels of one backward call, in launch order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardKernel {
    /// `lwpf_backward_prep_f32`: Delta per row.
    Prep,
    /// `lwpf_backward_center_f32`: per-row gradient reaching b.
    Center,
    /// `lwpf_backward_center_reduce`: g_b and the share of each tie.
    CenterReduce,
    /// `lwpf_backward_dkdv_f32`: dK, dV (and dQ by atomics).
    DkDv,
    /// `lwpf_backward_dq_f32`: dQ.
    Dq,
}

impl BackwardKernel {
    /// The kernel's symbol in `kernels/backward.cu` for inputs of
    /// `precision` and the build `tiles` (prep and the center reduction read
    /// no Q, K or V, stage no tiles, and have one build).
    pub fn symbol(self, precision: Precision, tiles: BackwardTiles) -> String {
        let name = match self {
            BackwardKernel::Prep => return "lwpf_backward_prep_f32".into(),
            BackwardKernel::CenterReduce => return "lwpf_backward_center_reduce".into(),
            BackwardKernel::Center => "center",
            BackwardKernel::DkDv => "dkdv",
            BackwardKernel::Dq => "dq",
        };
        format!("lwpf_backward_{name}_{}_d{}", precision.name(), tiles.max_d())
    }

    /// Whether the kernel stages Q, K, V and dO tiles (and so has a build
    /// per [`BackwardTiles`]).
    pub fn is_tiled(self) -> bool {
        matches!(self, BackwardKernel::Center | BackwardKernel::DkDv | BackwardKernel::Dq)
    }

    /// Bytes of dynamic shared memory a block of the kernel is launched with.
    pub fn dynamic_smem_bytes(self, tiles: BackwardTiles) -> u32 {
        if self.is_tiled() { tiles.dynamic_smem_bytes() } else { 0 }
    }
}

/// The two builds of the tiled backward kernels, by the widest Q, K, V or dO
/// row their shared-memory tiles hold (`kernels/params.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardTiles {
    /// `D, Dv <= 64`: 42 KB of static shared memory per block (`*_d64`).
    D64 = 0,
    /// `D, Dv <= 128`: [`LWPF_BWD_WIDE_SMEM`] bytes of dynamic shared memory
    /// per block (`*_d128`), more than a static array may have.
    D128 = 1,
}

impl BackwardTiles {
    /// Every build, narrowest first.
    pub const ALL: [BackwardTiles; 2] = [BackwardTiles::D64, BackwardTiles::D128];

    /// The widest D and Dv the build holds.
    pub fn max_d(self) -> usize {
        match self {
            BackwardTiles::D64 => LWPF_BWD_NARROW_D as usize,
            BackwardTiles::D128 => LWPF_BWD_MAX_D as usize,
        }
    }

    /// Whether the build holds D and Dv of `shape`.
    pub fn holds(self, shape: Shape) -> bool {
        shape.d.max(shape.d_v) <= self.max_d()
    }

    /// The narrowest build that holds `shape`, if any does.
    pub fn for_shape(shape: Shape) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.holds(shape))
    }

    /// Bytes of dynamic shared memory per block of the build's tiled kernels.
    pub fn dynamic_smem_bytes(self) -> u32 {
        match self {
            BackwardTiles::D64 => 0,
            BackwardTiles::D128 => LWPF_BWD_WIDE_SMEM,
        }
    }
}

/// Checks what `op::backward` checks, and the kernels' own limits; returns
/// the build that runs the call.
pub fn check_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    backend: &'static str,
) -> Result<BackwardTiles> {
    check_backward_input(input, cfg, fwd, d_o)?;
    backward_limits(input, backend)
}

/// The kernels' own limits on a call of the fused backward; the build that
/// runs it.
pub fn backward_limits(input: &AttentionInput, backend: &'static str) -> Result<BackwardTiles> {
    check_limits(input, backend)?;
    let s = input.shape;
    BackwardTiles::for_shape(s).ok_or_else(|| Error::BackendUnavailable {
        backend,
        reason: format!(
            "the fused backward supports D, Dv <= {LWPF_BWD_MAX_D}, got D = {}, Dv = {}",
            s.d, s.d_v
        ),
    })
}

/// Whether the call spreads g_b over the scores equal to the median.
pub fn uses_center_gradient(fwd: &Forward) -> bool {
    let t = fwd.stats.threshold;
    t.center_gradient && t.m.is_some() && fwd.stats.at_median > 0
}

/// The launches of one call: kernel and number of blocks (of [`THREADS`]
/// threads each).
pub fn backward_launches(
    input: &AttentionInput,
    fwd: &Forward,
    mode: DqMode,
) -> Vec<(BackwardKernel, u32)> {
    let s = input.shape;
    let rows_grid = s.rows().div_ceil(THREADS as usize) as u32;
    let key_grid = ((s.batch * s.heads) * s.n_k.div_ceil(LWPF_TILE_K as usize)) as u32;
    let mut out = vec![(BackwardKernel::Prep, rows_grid)];
    if uses_center_gradient(fwd) {
        out.push((BackwardKernel::Center, tiled_grid(input)));
        out.push((BackwardKernel::CenterReduce, 1));
    }
    out.push((BackwardKernel::DkDv, key_grid));
    if mode == DqMode::Deterministic {
        out.push((BackwardKernel::Dq, tiled_grid(input)));
    }
    out
}

/// Pointers of one backward call as the kernels see them.
#[derive(Clone, Copy, Debug)]
pub struct BackwardPointers {
    /// Of the call's precision.
    pub q: *const std::ffi::c_void,
    pub k: *const std::ffi::c_void,
    pub v: *const std::ffi::c_void,
    /// Null without a mask.
    pub valid: *const u8,
    pub o: *const f32,
    pub lse: *const f32,
    pub d_o: *const f32,
    /// `[B * H * Nq]` each.
    pub delta: *mut f32,
    pub center_rows: *mut f32,
    pub center: *mut LwpfCenterGrad,
    pub dq: *mut f32,
    pub dk: *mut f32,
    pub dv: *mut f32,
}

/// Parameters of every backward kernel of the call.
pub fn backward_params(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    ptr: &BackwardPointers,
    mode: DqMode,
) -> LwpfBackwardParams {
    let s = input.shape;
    let thr = fwd.stats.threshold;
    let key = philox::key_of(cfg.seed);
    LwpfBackwardParams {
        q_ptr: ptr.q,
        k_ptr: ptr.k,
        v_ptr: ptr.v,
        valid_ptr: ptr.valid,
        o_ptr: ptr.o,
        lse_ptr: ptr.lse,
        do_ptr: ptr.d_o,
        delta_ptr: ptr.delta,
        center_rows_ptr: ptr.center_rows,
        center_ptr: ptr.center,
        dq_ptr: ptr.dq,
        dk_ptr: ptr.dk,
        dv_ptr: ptr.dv,
        batch: s.batch as i32,
        heads: s.heads as i32,
        n_q: s.n_q as i32,
        n_k: s.n_k as i32,
        d: s.d as i32,
        d_v: s.d_v as i32,
        beta: cfg.beta_for(s.d),
        z: thr.z,
        b: thr.b,
        // NaN equals no score: no ties without a median.
        m: thr.m.unwrap_or(f32::NAN),
        center_gradient: uses_center_gradient(fwd) as i32,
        pad: 0,
        at_median: fwd.stats.at_median,
        drop_forgotten: cfg.drop_forgotten as i32,
        dropout_p: cfg.effective_dropout(),
        seed_lo: key[0],
        seed_hi: key[1],
        dq_atomic: (mode == DqMode::Atomic) as i32,
        pad2: 0,
    }
}
