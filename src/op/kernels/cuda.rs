//! The CUDA backend: the kernels of `kernels/`, compiled by nvcc at build time
//! (PTX for `compute_90`, a cubin for `sm_90`, both embedded), launched through
//! cudarc with the driver library loaded at run time.
//!
//! The driver, the device and the modules are set up once per process, on
//! first use; a machine without a driver library or without a device gets
//! [`Error::BackendUnavailable`] saying which, never a panic. The cubin is
//! loaded on a compute capability 9.0 device, the PTX (compiled by the driver)
//! on later ones; earlier ones are refused.
//!
//! Calls are serialized on the context's default stream. Inputs are copied to
//! the device and outputs back on every call: this backend is the forward
//! pass of part 1 and does not yet keep tensors on the device.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;

use super::params::*;
use super::{
    CallPointers, THREADS, call_stats, check_limits, forward_params, host_threshold, median_params,
    median_state, tiled_grid, uses_median_kernels, valid_entries,
};
use crate::error::{Error, Result};
use crate::op::{AttentionConfig, AttentionInput, CallStats, Forward, Threshold};

/// One compiled kernel file.
pub struct KernelModule {
    /// The file stem in `kernels/`.
    pub name: &'static str,
    pub ptx: &'static str,
    pub cubin: &'static [u8],
}

/// Every kernel file, as build.rs compiled it.
pub static MODULES: &[KernelModule] = include!(concat!(env!("OUT_DIR"), "/cuda_modules.rs"));

/// The `-Xptxas -v` report of every kernel (registers, shared memory, spills).
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas.txt"));

// SAFETY: plain #[repr(C)] structs of numbers and device addresses, laid out
// as kernels/params.h declares them (bindgen's layout tests pin that).
unsafe impl DeviceRepr for LwpfMedianParams {}
unsafe impl DeviceRepr for LwpfForwardParams {}
unsafe impl DeviceRepr for LwpfMedianState {}
unsafe impl DeviceRepr for LwpfThreshold {}

/// The loaded kernels and the stream they run on.
struct Runtime {
    stream: Arc<CudaStream>,
    median_hist: CudaFunction,
    median_select: CudaFunction,
    forward: CudaFunction,
    selftest_mma: CudaFunction,
    /// One call at a time on the stream.
    lock: Mutex<()>,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable { backend: "cuda", reason: reason.into() }
}

fn device_error(step: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| unavailable(format!("{step} failed: {e}"))
}

fn init() -> std::result::Result<Runtime, String> {
    // Creating a context without the driver library panics inside cudarc:
    // look for the library first.
    // SAFETY: only tries to open the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda could not be loaded)".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("no usable CUDA device: {e}"))?;
    let (major, minor) =
        ctx.compute_capability().map_err(|e| format!("could not query the device: {e}"))?;
    if major < 9 {
        return Err(format!(
            "the device has compute capability {major}.{minor}; the kernels need 9.0 or later"
        ));
    }
    let load = |module: &str, function: &str| -> std::result::Result<CudaFunction, String> {
        let m = MODULES
            .iter()
            .find(|m| m.name == module)
            .ok_or_else(|| format!("kernel module {module} was not built"))?;
        let image = if (major, minor) == (9, 0) {
            Ptx::from_binary(m.cubin.to_vec())
        } else {
            Ptx::from_src(m.ptx)
        };
        ctx.load_module(image)
            .and_then(|md| md.load_function(function))
            .map_err(|e| format!("loading {function} from {module}: {e}"))
    };
    Ok(Runtime {
        stream: ctx.default_stream(),
        median_hist: load("median", "lwpf_median_hist_f32")?,
        median_select: load("median", "lwpf_median_select")?,
        forward: load("forward", "lwpf_forward_f32")?,
        selftest_mma: load("emu_selftest", "lwpf_selftest_mma")?,
        lock: Mutex::new(()),
    })
}

fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME.get_or_init(init).as_ref().map_err(|r| unavailable(r.clone()))
}

/// Whether the CUDA backend can run here; the error says why not.
pub fn available() -> Result<()> {
    runtime().map(|_| ())
}

fn launch_config(grid: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Forward pass (SPEC section 3) on the GPU.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    cfg.validate()?;
    input.validate()?;
    check_limits(input, "cuda")?;
    // Even an empty call fails where CUDA cannot run: it was asked for.
    let rt = runtime()?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Forward {
            o: vec![0.0; s.o_len()],
            lse: vec![f32::NEG_INFINITY; s.rows()],
            stats: CallStats {
                threshold: Threshold::resolve(cfg, None),
                forgotten: 0,
                entries: 0,
                at_median: 0,
            },
        });
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let entries = valid_entries(input);
    let median_kernels = uses_median_kernels(cfg, entries);

    let upload = device_error("copying the inputs to the device");
    let q = st.clone_htod(input.q).map_err(&upload)?;
    let k = st.clone_htod(input.k).map_err(&upload)?;
    let v = st.clone_htod(input.v).map_err(&upload)?;
    let valid = match input.valid {
        Some(m) => {
            let bytes: Vec<u8> = m.iter().map(|&x| x as u8).collect();
            Some(st.clone_htod(&bytes).map_err(&upload)?)
        }
        None => None,
    };
    let mut state = st.clone_htod(&[median_state(entries.max(1))]).map_err(&upload)?;
    let thr = st.clone_htod(&[host_threshold(cfg)]).map_err(&upload)?;
    // NaN and u32::MAX: an element a kernel failed to write shows in tests.
    let mut o = st.clone_htod(&vec![f32::NAN; s.o_len()]).map_err(&upload)?;
    let mut lse = st.clone_htod(&vec![f32::NAN; s.rows()]).map_err(&upload)?;
    let mut forgotten = st.clone_htod(&vec![u32::MAX; s.rows()]).map_err(&upload)?;

    {
        let (q_ptr, _q) = q.device_ptr(st);
        let (k_ptr, _k) = k.device_ptr(st);
        let (v_ptr, _v) = v.device_ptr(st);
        let valid_ptr = valid.as_ref().map(|m| m.device_ptr(st));
        let (state_ptr, _state) = state.device_ptr_mut(st);
        let (thr_ptr, _thr) = thr.device_ptr(st);
        let (o_ptr, _o) = o.device_ptr_mut(st);
        let (lse_ptr, _lse) = lse.device_ptr_mut(st);
        let (forgotten_ptr, _forgotten) = forgotten.device_ptr_mut(st);
        let mut ptr = CallPointers {
            q: q_ptr as *const f32,
            k: k_ptr as *const f32,
            v: v_ptr as *const f32,
            valid: valid_ptr.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const u8),
            state: state_ptr as *mut LwpfMedianState,
            threshold: thr_ptr as *const LwpfThreshold,
            o: o_ptr as *mut f32,
            lse: lse_ptr as *mut f32,
            forgotten: forgotten_ptr as *mut u32,
        };

        let grid = tiled_grid(input);
        if median_kernels {
            for pass in 0..LWPF_RADIX_PASSES as i32 {
                let p = median_params(input, cfg, &ptr, pass);
                // SAFETY: the kernels read and write only inside the buffers
                // above, whose sizes match the shape in `p`.
                unsafe {
                    st.launch_builder(&rt.median_hist)
                        .arg(&p)
                        .launch(launch_config(grid))
                        .map_err(device_error("median histogram"))?;
                    st.launch_builder(&rt.median_select)
                        .arg(&p)
                        .launch(launch_config(1))
                        .map_err(device_error("median selection"))?;
                }
            }
            // The forward pass reads the threshold the selection wrote.
            let offset = std::mem::offset_of!(LwpfMedianState, threshold) as u64;
            ptr.threshold = (state_ptr + offset) as *const LwpfThreshold;
        }
        let p = forward_params(input, cfg, &ptr);
        // SAFETY: as above.
        unsafe {
            st.launch_builder(&rt.forward)
                .arg(&p)
                .launch(launch_config(grid))
                .map_err(device_error("forward kernel"))?;
        }
    }

    let download = device_error("copying the results from the device");
    st.synchronize().map_err(device_error("running the kernels"))?;
    let o = st.clone_dtoh(&o).map_err(&download)?;
    let lse = st.clone_dtoh(&lse).map_err(&download)?;
    let forgotten = st.clone_dtoh(&forgotten).map_err(&download)?;
    let thr = if median_kernels {
        st.clone_dtoh(&state).map_err(&download)?[0].threshold
    } else {
        host_threshold(cfg)
    };
    Ok(Forward { o, lse, stats: call_stats(cfg, &thr, &forgotten, entries) })
}

/// `d = a b + c` per warp through the MMA wrapper on the tensor cores (the
/// emulation's `selftest::mma` on the device): pins the fragment layout that
/// the emulation assumes to the hardware's. `a` and `c` are `[warps, 16, 8]`,
/// `b` is `[warps, 8, 8]`, all row major.
pub fn selftest_mma(warps: u32, a: &[f32], b: &[f32], c: &[f32]) -> Result<Vec<f32>> {
    let n = warps as usize;
    if a.len() != n * 128 || b.len() != n * 64 || c.len() != n * 128 {
        return Err(Error::ShapeMismatch {
            tensor: "mma operands",
            got: a.len() + b.len() + c.len(),
            expected: n * 320,
            shape: format!("{warps} warps"),
        });
    }
    let rt = runtime()?;
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let upload = device_error("copying the inputs to the device");
    let (a, b, c) = (
        st.clone_htod(a).map_err(&upload)?,
        st.clone_htod(b).map_err(&upload)?,
        st.clone_htod(c).map_err(&upload)?,
    );
    let mut d = st.clone_htod(&vec![f32::NAN; n * 128]).map_err(&upload)?;
    let cfg =
        LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32 * warps, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: one warp per 16 x 8 tile; the sizes are checked above.
    unsafe {
        st.launch_builder(&rt.selftest_mma)
            .arg(&a)
            .arg(&b)
            .arg(&c)
            .arg(&mut d)
            .launch(cfg)
            .map_err(device_error("mma self-test"))?;
    }
    st.synchronize().map_err(device_error("running the mma self-test"))?;
    st.clone_dtoh(&d).map_err(device_error("copying the results from the device"))
}
