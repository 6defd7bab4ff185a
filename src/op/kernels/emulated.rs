//! The kernel sources run on the CPU under the host emulation
//! (`kernels/emu/emu.h`): blocks one after another, the threads of a block as
//! OS threads meeting at real barriers. Launches are serialized process-wide
//! (the emulated `__shared__` memory is static).
//!
//! For tests: it checks the kernels' index arithmetic, tiling and numerics on
//! small shapes, and is orders of magnitude slower than [`super::super::fast`].
//! It cannot show races between warps that only a GPU would expose.

use super::backward::{
    BackwardKernel, BackwardPointers, BackwardTiles, DqMode, backward_launches, backward_params,
    check_backward,
};
use super::params::*;
use super::{
    CallPointers, KernelInputs, THREADS, call_stats, check_limits, dtype_code, forward_params,
    host_threshold, median_params, median_state, tiled_grid, uses_median_kernels, valid_entries,
};
use crate::error::{Error, Result};
use crate::op::{AttentionConfig, AttentionInput, Forward, Grads, Precision};

// The launchers of kernels/emu/launch.cpp: each runs one kernel over
// `grid` blocks of `block` threads.
unsafe extern "C" {
    fn lwpf_emu_median_hist(dtype: i32, grid: u32, block: u32, p: *const LwpfMedianParams);
    fn lwpf_emu_median_select(grid: u32, block: u32, p: *const LwpfMedianParams);
    fn lwpf_emu_forward(dtype: i32, grid: u32, block: u32, p: *const LwpfForwardParams);
    fn lwpf_emu_backward(
        kernel: i32,
        dtype: i32,
        max_d: i32,
        grid: u32,
        block: u32,
        smem_bytes: u32,
        p: *const LwpfBackwardParams,
    );
    fn lwpf_emu_selftest_barrier(grid: u32, block: u32, out: *mut u32, rounds: i32);
    fn lwpf_emu_selftest_dynamic_smem(grid: u32, block: u32, out: *mut u32, words: i32);
    fn lwpf_emu_selftest_warp(grid: u32, block: u32, input: *const i32, out: *mut i32);
    fn lwpf_emu_selftest_atomics(
        grid: u32,
        block: u32,
        u32s: *mut u32,
        u64s: *mut u64,
        fsum: *mut f32,
    );
    fn lwpf_emu_selftest_mma(
        grid: u32,
        block: u32,
        a: *const f32,
        b: *const f32,
        c: *const f32,
        d: *mut f32,
    );
    fn lwpf_emu_selftest_convert(
        grid: u32,
        block: u32,
        bf16: *const u16,
        f16: *const u16,
        n: i32,
        out: *mut f32,
    );
}

/// Host buffers of one call and the pointers the kernels get to them.
struct Buffers {
    state: Box<LwpfMedianState>,
    threshold: Box<LwpfThreshold>,
    o: Vec<f32>,
    lse: Vec<f32>,
    forgotten: Vec<u32>,
}

impl Buffers {
    fn pointers(&mut self, input: &AttentionInput, x: &KernelInputs) -> CallPointers {
        CallPointers {
            q: x.q.as_ptr(),
            k: x.k.as_ptr(),
            v: x.v.as_ptr(),
            // bool is one byte holding 0 or 1: the kernels' mask format.
            valid: input.valid.map_or(std::ptr::null(), |m| m.as_ptr().cast::<u8>()),
            state: &mut *self.state,
            threshold: &*self.threshold,
            o: self.o.as_mut_ptr(),
            lse: self.lse.as_mut_ptr(),
            forgotten: self.forgotten.as_mut_ptr(),
        }
    }
}

/// The exact lower median of the call's valid scores by the radix-selection
/// kernels, with the number of scores equal to it and the threshold the
/// selection step resolved (`None` without valid scores).
pub fn median(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Option<LwpfThreshold>> {
    crate::op::check_forward_input(input, cfg)?;
    check_limits(input, "emulated")?;
    let entries = valid_entries(input);
    if input.shape.n_q == 0 || entries == 0 {
        return Ok(None);
    }
    let mut buf = Buffers {
        state: Box::new(median_state(entries)),
        threshold: Box::default(),
        o: Vec::new(),
        lse: Vec::new(),
        forgotten: Vec::new(),
    };
    let x = KernelInputs::new(input, cfg.precision);
    let ptr = buf.pointers(input, &x);
    run_median(input, cfg, &ptr);
    Ok(Some(buf.state.threshold))
}

fn run_median(input: &AttentionInput, cfg: &AttentionConfig, ptr: &CallPointers) {
    let grid = tiled_grid(input);
    for pass in 0..LWPF_RADIX_PASSES as i32 {
        let p = median_params(input, cfg, ptr, pass);
        // SAFETY: every pointer in `p` is valid for the sizes in `p`: Q, K and
        // the mask are the validated input, the state is a live box.
        unsafe {
            lwpf_emu_median_hist(dtype_code(cfg.precision), grid, THREADS, &p);
            lwpf_emu_median_select(1, THREADS, &p);
        }
    }
}

/// Forward pass (SPEC section 3) by the fused kernels under emulation.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    crate::op::check_forward_input(input, cfg)?;
    check_limits(input, "emulated")?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Forward::empty(s, cfg));
    }
    let entries = valid_entries(input);
    let median_kernels = uses_median_kernels(cfg, entries);
    let mut buf = Buffers {
        state: Box::new(median_state(entries.max(1))),
        threshold: Box::new(host_threshold(cfg)),
        // NaN: an element the kernel failed to write cannot pass a test.
        o: vec![f32::NAN; s.o_len()],
        lse: vec![f32::NAN; s.rows()],
        forgotten: vec![u32::MAX; s.rows()],
    };
    let x = KernelInputs::new(input, cfg.precision);
    let mut ptr = buf.pointers(input, &x);
    if median_kernels {
        run_median(input, cfg, &ptr);
        // The forward pass reads the threshold the selection step wrote.
        // SAFETY: `state` points into the live box `buf.state`.
        ptr.threshold = unsafe { &raw const (*ptr.state).threshold };
    }
    let p = forward_params(input, cfg, &ptr);
    // SAFETY: as in `run_median`; O, lse and the counts have the call's sizes.
    unsafe { lwpf_emu_forward(dtype_code(cfg.precision), tiled_grid(input), THREADS, &p) };

    let thr = if median_kernels { buf.state.threshold } else { *buf.threshold };
    let stats = call_stats(cfg, &thr, &buf.forgotten, entries);
    Ok(Forward { o: buf.o, lse: buf.lse, stats })
}

/// Backward pass (SPEC section 5) by the fused kernels under emulation, from
/// the forward pass `fwd` of the same call (its O, lse and threshold), on
/// the narrowest build of the tiled kernels that holds the call.
pub fn backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    mode: DqMode,
) -> Result<Grads> {
    let tiles = check_backward(input, cfg, fwd, d_o, "emulated")?;
    run_backward(input, cfg, fwd, d_o, mode, tiles)
}

/// [`backward`] on the build `tiles`, which may be wider than the call
/// needs: tests hold the builds to each other with it.
pub fn backward_with_tiles(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    mode: DqMode,
    tiles: BackwardTiles,
) -> Result<Grads> {
    check_backward(input, cfg, fwd, d_o, "emulated")?;
    let s = input.shape;
    if !tiles.holds(s) {
        return Err(Error::BackendUnavailable {
            backend: "emulated",
            reason: format!(
                "the {tiles:?} build of the fused backward holds D, Dv <= {}, got D = {}, Dv = {}",
                tiles.max_d(),
                s.d,
                s.d_v
            ),
        });
    }
    run_backward(input, cfg, fwd, d_o, mode, tiles)
}

/// The backward's launches on a checked call.
fn run_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    mode: DqMode,
    tiles: BackwardTiles,
) -> Result<Grads> {
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Grads::zeros(input.shape));
    }
    let mut delta = vec![f32::NAN; s.rows()];
    let mut center_rows = vec![f32::NAN; s.rows()];
    let mut center = Box::new(LwpfCenterGrad::default());
    // NaN: an element the kernels failed to write cannot pass a test. The
    // atomic mode adds into dQ, so it starts from zero.
    let dq_init = if mode == DqMode::Atomic { 0.0 } else { f32::NAN };
    let mut grads = Grads {
        dq: vec![dq_init; s.q_len()],
        dk: vec![f32::NAN; s.k_len()],
        dv: vec![f32::NAN; s.v_len()],
    };
    let x = KernelInputs::new(input, cfg.precision);
    let ptr = BackwardPointers {
        q: x.q.as_ptr(),
        k: x.k.as_ptr(),
        v: x.v.as_ptr(),
        valid: input.valid.map_or(std::ptr::null(), |m| m.as_ptr().cast::<u8>()),
        o: fwd.o.as_ptr(),
        lse: fwd.lse.as_ptr(),
        d_o: d_o.as_ptr(),
        delta: delta.as_mut_ptr(),
        center_rows: center_rows.as_mut_ptr(),
        center: &mut *center,
        dq: grads.dq.as_mut_ptr(),
        dk: grads.dk.as_mut_ptr(),
        dv: grads.dv.as_mut_ptr(),
    };
    let p = backward_params(input, cfg, fwd, &ptr, mode);
    for (kernel, grid) in backward_launches(input, fwd, mode) {
        // SAFETY: every pointer in `p` is valid for the sizes in `p`: the
        // validated input, O, lse and dO of checked lengths, and the live
        // buffers above; the build holds D and Dv.
        unsafe { launch_backward(kernel, cfg.precision, tiles, grid, &p) };
    }
    Ok(grads)
}

/// Runs one backward kernel of the build `tiles` over `grid` blocks, with
/// the dynamic shared memory it needs.
///
/// # Safety
/// Every pointer in `p` that the kernel touches must be valid for the sizes
/// in `p`, and `tiles` must hold D and Dv of `p` if the kernel is tiled.
pub(crate) unsafe fn launch_backward(
    kernel: BackwardKernel,
    precision: Precision,
    tiles: BackwardTiles,
    grid: u32,
    p: &LwpfBackwardParams,
) {
    // As kernels/emu/launch.cpp numbers them.
    let id = match kernel {
        BackwardKernel::Prep => 0,
        BackwardKernel::Center => 1,
        BackwardKernel::CenterReduce => 2,
        BackwardKernel::DkDv => 3,
        BackwardKernel::Dq => 4,
    };
    let (max_d, smem) = (tiles.max_d() as i32, kernel.dynamic_smem_bytes(tiles));
    // SAFETY: the caller's promise; the launcher gives the kernel `smem`
    // bytes, what the build needs.
    unsafe { lwpf_emu_backward(id, dtype_code(precision), max_d, grid, THREADS, smem, p) };
}

/// The emulation's own self-tests (`kernels/selftest/emu_selftest.cu`), each
/// returning what the kernel wrote.
pub mod selftest {
    use super::*;

    /// `out[b * block + t]` = sum over rounds of the neighbour's value.
    pub fn barrier(grid: u32, block: u32, rounds: i32) -> Vec<u32> {
        let mut out = vec![0u32; (grid * block) as usize];
        // SAFETY: `out` holds grid * block words, as the kernel writes.
        unsafe { lwpf_emu_selftest_barrier(grid, block, out.as_mut_ptr(), rounds) };
        out
    }

    /// `words` words of dynamic shared memory per block, read back mirrored:
    /// `out[b * words + i]` = what block b wrote to word `words - 1 - i`.
    pub fn dynamic_smem(grid: u32, block: u32, words: i32) -> Vec<u32> {
        let mut out = vec![0u32; grid as usize * words.max(0) as usize];
        // SAFETY: `out` holds grid * words words, as the kernel writes; the
        // launcher gives each block exactly `words` words.
        unsafe { lwpf_emu_selftest_dynamic_smem(grid, block, out.as_mut_ptr(), words) };
        out
    }

    /// Eight words per thread of a one-block launch (see the kernel).
    pub fn warp(input: &[i32]) -> Vec<i32> {
        let mut out = vec![0i32; input.len() * 8];
        // SAFETY: one thread per input element; eight output words each.
        unsafe { lwpf_emu_selftest_warp(1, input.len() as u32, input.as_ptr(), out.as_mut_ptr()) };
        out
    }

    /// `(u32 counters, u64 sum, float sum)` after the atomics kernel; the u32
    /// counters start as `[0, 0, u32::MAX, 0]`.
    pub fn atomics(grid: u32, block: u32) -> ([u32; 4], u64, f32) {
        let mut u32s = [0, 0, u32::MAX, 0];
        let mut u64s = [0u64];
        let mut fsum = 0.0f32;
        // SAFETY: the kernel touches u32s[0..4], u64s[0] and fsum only.
        unsafe {
            lwpf_emu_selftest_atomics(grid, block, u32s.as_mut_ptr(), u64s.as_mut_ptr(), &mut fsum)
        };
        (u32s, u64s[0], fsum)
    }

    /// `d = a b + c` per warp through the MMA wrapper: `a` and `c` are
    /// `[warps, 16, 8]`, `b` is `[warps, 8, 8]`, all row major.
    pub fn mma(warps: u32, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
        let n = warps as usize;
        assert!(a.len() == n * 128 && b.len() == n * 64 && c.len() == n * 128);
        let mut d = vec![f32::NAN; n * 128];
        // SAFETY: sizes checked above; one warp per 16 x 8 tile.
        unsafe {
            lwpf_emu_selftest_mma(1, 32 * warps, a.as_ptr(), b.as_ptr(), c.as_ptr(), d.as_mut_ptr())
        };
        d
    }

    /// `bits` read as bf16 and as fp16 by the kernels' loads:
    /// `(bf16 values, fp16 values)`.
    pub fn convert(bits: &[u16]) -> (Vec<f32>, Vec<f32>) {
        let n = bits.len();
        let mut out = vec![f32::NAN; 2 * n];
        let block = 128;
        let grid = n.div_ceil(block as usize).max(1) as u32;
        // SAFETY: the kernel reads n words of each input and writes 2 n
        // floats, one element per thread below n.
        unsafe {
            lwpf_emu_selftest_convert(
                grid,
                block,
                bits.as_ptr(),
                bits.as_ptr(),
                n as i32,
                out.as_mut_ptr(),
            )
        };
        let f16 = out.split_off(n);
        (out, f16)
    }
}
