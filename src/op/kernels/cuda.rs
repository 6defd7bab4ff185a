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

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;

use super::backward::{
    BackwardKernel, BackwardPointers, BackwardTiles, DqMode, backward_launches, backward_params,
    check_backward, empty_grads,
};
use super::params::*;
use super::unfused;
use super::{
    CallPointers, KernelInputs, KernelTensor, THREADS, call_stats, check_limits, dtype_code,
    forward_params, host_threshold, median_params, median_state, tiled_grid, uses_median_kernels,
    valid_entries,
};
use crate::error::{Error, Result};
use crate::op::{
    AttentionConfig, AttentionInput, CallStats, Forward, Grads, Precision, RoundedInput, Threshold,
};

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
unsafe impl DeviceRepr for LwpfBackwardParams {}
unsafe impl DeviceRepr for LwpfCenterGrad {}
unsafe impl DeviceRepr for LwpfUnfusedParams {}

/// The loaded kernels and the stream they run on.
struct Runtime {
    stream: Arc<CudaStream>,
    /// The kernels that read Q, K or V have an entry per precision, indexed
    /// by `dtype_code`.
    median_hist: [CudaFunction; 3],
    median_select: CudaFunction,
    forward: [CudaFunction; 3],
    /// The backward kernels without tiles (one build each).
    backward_prep: CudaFunction,
    backward_reduce: CudaFunction,
    /// The tiled backward kernels (center, dK dV, dQ) of each precision and
    /// build, indexed by `dtype_code` and `BackwardTiles as usize`.
    backward_tiled: [[[CudaFunction; 3]; 2]; 3],
    /// The unfused baseline's elementwise kernels ([`unfused::SYMBOLS`]).
    unfused: [CudaFunction; 4],
    selftest_mma: CudaFunction,
    selftest_convert: CudaFunction,
    /// One call at a time on the stream.
    lock: Mutex<()>,
}

impl Runtime {
    /// The loaded backward kernel `kernel` for `precision` and the build
    /// `tiles`.
    fn backward(
        &self,
        kernel: BackwardKernel,
        precision: Precision,
        tiles: BackwardTiles,
    ) -> &CudaFunction {
        let tiled = &self.backward_tiled[dtype_code(precision) as usize][tiles as usize];
        match kernel {
            BackwardKernel::Prep => &self.backward_prep,
            BackwardKernel::CenterReduce => &self.backward_reduce,
            BackwardKernel::Center => &tiled[0],
            BackwardKernel::DkDv => &tiled[1],
            BackwardKernel::Dq => &tiled[2],
        }
    }
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
    let backward =
        |kernel: BackwardKernel, precision, tiles| -> std::result::Result<CudaFunction, String> {
            let symbol = kernel.symbol(precision, tiles);
            let f = load("backward", &symbol)?;
            let smem = kernel.dynamic_smem_bytes(tiles);
            if smem > 0 {
                // A launch may ask for more than 48 KB of dynamic shared memory
                // only once the function allows it.
                use sys::CUfunction_attribute_enum as Attr;
                f.set_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                    .map_err(|e| format!("allowing {symbol} {smem} bytes of shared memory: {e}"))?;
            }
            Ok(f)
        };
    let tiled = |precision| -> std::result::Result<[[CudaFunction; 3]; 2], String> {
        let build = |tiles| -> std::result::Result<[CudaFunction; 3], String> {
            Ok([
                backward(BackwardKernel::Center, precision, tiles)?,
                backward(BackwardKernel::DkDv, precision, tiles)?,
                backward(BackwardKernel::Dq, precision, tiles)?,
            ])
        };
        Ok([build(BackwardTiles::D64)?, build(BackwardTiles::D128)?])
    };
    let per_precision = |module: &str, family: &str| -> std::result::Result<_, String> {
        let [a, b, c] = Precision::ALL;
        let f = |p: Precision| load(module, &format!("{family}_{}", super::dtype_suffix(p)));
        Ok([f(a)?, f(b)?, f(c)?])
    };
    let [p32, pbf, ph] = Precision::ALL;
    Ok(Runtime {
        stream: ctx.default_stream(),
        median_hist: per_precision("median", "lwpf_median_hist")?,
        median_select: load("median", "lwpf_median_select")?,
        forward: per_precision("forward", "lwpf_forward")?,
        backward_prep: backward(BackwardKernel::Prep, p32, BackwardTiles::D64)?,
        backward_reduce: backward(BackwardKernel::CenterReduce, p32, BackwardTiles::D64)?,
        backward_tiled: [tiled(p32)?, tiled(pbf)?, tiled(ph)?],
        unfused: [
            load("unfused", unfused::SYMBOLS[0])?,
            load("unfused", unfused::SYMBOLS[1])?,
            load("unfused", unfused::SYMBOLS[2])?,
            load("unfused", unfused::SYMBOLS[3])?,
        ],
        selftest_mma: load("emu_selftest", "lwpf_selftest_mma")?,
        selftest_convert: load("emu_selftest", "lwpf_selftest_convert")?,
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
    launch_config_smem(grid, 0)
}

/// [`launch_config`] with `smem` bytes of dynamic shared memory per block.
fn launch_config_smem(grid: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: smem }
}

/// Q, K or V on the device in the call's precision.
enum DeviceTensor {
    F32(CudaSlice<f32>),
    Bits(CudaSlice<u16>),
}

impl DeviceTensor {
    fn upload(st: &Arc<CudaStream>, t: &KernelTensor) -> Result<Self> {
        let upload = device_error("copying the inputs to the device");
        Ok(match t {
            KernelTensor::F32(x) => DeviceTensor::F32(st.clone_htod(*x).map_err(&upload)?),
            KernelTensor::Bits(x) => DeviceTensor::Bits(st.clone_htod(x).map_err(&upload)?),
        })
    }

    fn device_ptr<'a>(
        &'a self,
        st: &'a CudaStream,
    ) -> (sys::CUdeviceptr, cudarc::driver::SyncOnDrop<'a>) {
        match self {
            DeviceTensor::F32(x) => x.device_ptr(st),
            DeviceTensor::Bits(x) => x.device_ptr(st),
        }
    }
}

/// Q, K and V of a call on the device, in its precision.
fn upload_qkv(
    st: &Arc<CudaStream>,
    input: &AttentionInput,
    precision: Precision,
) -> Result<[DeviceTensor; 3]> {
    let x = KernelInputs::new(input, precision);
    Ok([
        DeviceTensor::upload(st, &x.q)?,
        DeviceTensor::upload(st, &x.k)?,
        DeviceTensor::upload(st, &x.v)?,
    ])
}

/// Forward pass (SPEC section 3) on the GPU.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    cfg.validate()?;
    input.validate()?;
    input.check_precision(cfg.precision)?;
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
    let [q, k, v] = upload_qkv(st, input, cfg.precision)?;
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
            q: q_ptr as *const std::ffi::c_void,
            k: k_ptr as *const std::ffi::c_void,
            v: v_ptr as *const std::ffi::c_void,
            valid: valid_ptr.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const u8),
            state: state_ptr as *mut LwpfMedianState,
            threshold: thr_ptr as *const LwpfThreshold,
            o: o_ptr as *mut f32,
            lse: lse_ptr as *mut f32,
            forgotten: forgotten_ptr as *mut u32,
        };

        // SAFETY: the pointers are the live device buffers above, of the
        // call's sizes.
        unsafe { launch_forward(rt, input, cfg, &mut ptr, median_kernels)? };
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

/// Launches one forward call on the runtime's stream: the median passes when
/// the call needs them (then `ptr.threshold` is pointed at the threshold the
/// selection writes), then the fused forward kernel.
///
/// # Safety
/// Every pointer in `ptr` must be a live device buffer of the call's size.
unsafe fn launch_forward(
    rt: &Runtime,
    input: &AttentionInput,
    cfg: &AttentionConfig,
    ptr: &mut CallPointers,
    median_kernels: bool,
) -> Result<()> {
    let st = &rt.stream;
    let grid = tiled_grid(input);
    if median_kernels {
        for pass in 0..LWPF_RADIX_PASSES as i32 {
            let p = median_params(input, cfg, ptr, pass);
            // SAFETY: the kernels read and write only inside the buffers of
            // `ptr`, whose sizes match the shape in `p` (the caller's promise).
            unsafe {
                st.launch_builder(&rt.median_hist[dtype_code(cfg.precision) as usize])
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
        let offset = std::mem::offset_of!(LwpfMedianState, threshold);
        ptr.threshold = ptr.state.cast::<u8>().wrapping_add(offset).cast::<LwpfThreshold>();
    }
    let p = forward_params(input, cfg, ptr);
    // SAFETY: as above.
    unsafe {
        st.launch_builder(&rt.forward[dtype_code(cfg.precision) as usize])
            .arg(&p)
            .launch(launch_config(grid))
            .map_err(device_error("forward kernel"))?;
    }
    Ok(())
}

/// Launches the backward kernels of one call (`p` holds its pointers) on
/// the build `tiles`.
///
/// # Safety
/// Every pointer in `p` must be a live device buffer of the call's size, and
/// `tiles` must hold the call's D and Dv.
unsafe fn launch_backward(
    rt: &Runtime,
    (input, cfg): (&AttentionInput, &AttentionConfig),
    fwd: &Forward,
    p: &LwpfBackwardParams,
    mode: DqMode,
    tiles: BackwardTiles,
) -> Result<()> {
    for (kernel, grid) in backward_launches(input, fwd, mode) {
        let f = rt.backward(kernel, cfg.precision, tiles);
        let launch = launch_config_smem(grid, kernel.dynamic_smem_bytes(tiles));
        // SAFETY: the caller's promise; the grid and shared memory are the
        // ones the kernel expects.
        unsafe {
            rt.stream
                .launch_builder(f)
                .arg(p)
                .launch(launch)
                .map_err(device_error(&kernel.symbol(cfg.precision, tiles)))?;
        }
    }
    Ok(())
}

/// Backward pass (SPEC section 5) on the GPU, from the forward pass `fwd` of
/// the same call; `mode` picks how dQ is summed.
pub fn backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    mode: DqMode,
) -> Result<Grads> {
    let tiles = check_backward(input, cfg, fwd, d_o, "cuda")?;
    let rt = runtime()?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(empty_grads(input));
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;

    let upload = device_error("copying the inputs to the device");
    let [q, k, v] = upload_qkv(st, input, cfg.precision)?;
    let valid = match input.valid {
        Some(m) => {
            let bytes: Vec<u8> = m.iter().map(|&x| x as u8).collect();
            Some(st.clone_htod(&bytes).map_err(&upload)?)
        }
        None => None,
    };
    let o = st.clone_htod(&fwd.o).map_err(&upload)?;
    let lse = st.clone_htod(&fwd.lse).map_err(&upload)?;
    let g = st.clone_htod(d_o).map_err(&upload)?;
    let mut delta = st.clone_htod(&vec![f32::NAN; s.rows()]).map_err(&upload)?;
    let mut center_rows = st.clone_htod(&vec![f32::NAN; s.rows()]).map_err(&upload)?;
    let mut center = st.clone_htod(&[LwpfCenterGrad::default()]).map_err(&upload)?;
    // NaN: an element the kernels failed to write shows in tests; the atomic
    // mode adds into dQ, so it starts from zero.
    let dq_init = if mode == DqMode::Atomic { 0.0 } else { f32::NAN };
    let mut dq = st.clone_htod(&vec![dq_init; s.q_len()]).map_err(&upload)?;
    let mut dk = st.clone_htod(&vec![f32::NAN; s.k_len()]).map_err(&upload)?;
    let mut dv = st.clone_htod(&vec![f32::NAN; s.v_len()]).map_err(&upload)?;

    {
        let (q_ptr, _q) = q.device_ptr(st);
        let (k_ptr, _k) = k.device_ptr(st);
        let (v_ptr, _v) = v.device_ptr(st);
        let valid_ptr = valid.as_ref().map(|m| m.device_ptr(st));
        let (o_ptr, _o) = o.device_ptr(st);
        let (lse_ptr, _lse) = lse.device_ptr(st);
        let (g_ptr, _g) = g.device_ptr(st);
        let (delta_ptr, _delta) = delta.device_ptr_mut(st);
        let (rows_ptr, _rows) = center_rows.device_ptr_mut(st);
        let (center_ptr, _center) = center.device_ptr_mut(st);
        let (dq_ptr, _dq) = dq.device_ptr_mut(st);
        let (dk_ptr, _dk) = dk.device_ptr_mut(st);
        let (dv_ptr, _dv) = dv.device_ptr_mut(st);
        let ptr = BackwardPointers {
            q: q_ptr as *const std::ffi::c_void,
            k: k_ptr as *const std::ffi::c_void,
            v: v_ptr as *const std::ffi::c_void,
            valid: valid_ptr.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const u8),
            o: o_ptr as *const f32,
            lse: lse_ptr as *const f32,
            d_o: g_ptr as *const f32,
            delta: delta_ptr as *mut f32,
            center_rows: rows_ptr as *mut f32,
            center: center_ptr as *mut LwpfCenterGrad,
            dq: dq_ptr as *mut f32,
            dk: dk_ptr as *mut f32,
            dv: dv_ptr as *mut f32,
        };
        let p = backward_params(input, cfg, fwd, &ptr, mode);
        // SAFETY: `p` holds the live device buffers above, of the call's
        // sizes; `tiles` holds the call.
        unsafe { launch_backward(rt, (input, cfg), fwd, &p, mode, tiles)? };
    }

    let download = device_error("copying the results from the device");
    st.synchronize().map_err(device_error("running the backward kernels"))?;
    Ok(Grads {
        dq: st.clone_dtoh(&dq).map_err(&download)?,
        dk: st.clone_dtoh(&dk).map_err(&download)?,
        dv: st.clone_dtoh(&dv).map_err(&download)?,
    })
}

/// Kernel times of one call shape, in milliseconds (median over the runs).
#[derive(Clone, Copy, Debug)]
pub struct KernelTimes {
    pub forward_ms: f32,
    pub backward_ms: f32,
}

/// Times the fused forward (median included) and backward kernels of one
/// call with device events, the tensors resident on the device: `warmup`
/// untimed runs, then the median of `runs`. The forward's results feed the
/// backward, with `dO = O`. For benchmarks; the inputs are not rotated, so
/// they may sit in L2 when they are small.
pub fn time_kernels(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    mode: DqMode,
    warmup: usize,
    runs: usize,
) -> Result<KernelTimes> {
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 || runs == 0 {
        return Ok(KernelTimes { forward_ms: 0.0, backward_ms: 0.0 });
    }
    // The backward's launches and parameters need the forward's statistics
    // (the center gradient's tie count): one plain call first.
    let fwd = forward(input, cfg)?;
    let tiles = check_backward(input, cfg, &fwd, &fwd.o, "cuda")?;
    let rt = runtime()?;
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let entries = valid_entries(input);
    let median_kernels = uses_median_kernels(cfg, entries);
    let upload = device_error("copying the inputs to the device");
    let [q, k, v] = upload_qkv(st, input, cfg.precision)?;
    let valid = match input.valid {
        Some(m) => {
            let bytes: Vec<u8> = m.iter().map(|&x| x as u8).collect();
            Some(st.clone_htod(&bytes).map_err(&upload)?)
        }
        None => None,
    };
    let state0 = [median_state(entries.max(1))];
    let mut state = st.clone_htod(&state0).map_err(&upload)?;
    let thr = st.clone_htod(&[host_threshold(cfg)]).map_err(&upload)?;
    let alloc = device_error("allocating device memory");
    let mut o = st.alloc_zeros::<f32>(s.o_len()).map_err(&alloc)?;
    let mut lse = st.alloc_zeros::<f32>(s.rows()).map_err(&alloc)?;
    let mut forgotten = st.alloc_zeros::<u32>(s.rows()).map_err(&alloc)?;
    let mut delta = st.alloc_zeros::<f32>(s.rows()).map_err(&alloc)?;
    let mut center_rows = st.alloc_zeros::<f32>(s.rows()).map_err(&alloc)?;
    let mut center = st.clone_htod(&[LwpfCenterGrad::default()]).map_err(&upload)?;
    let mut dq = st.alloc_zeros::<f32>(s.q_len()).map_err(&alloc)?;
    let mut dk = st.alloc_zeros::<f32>(s.k_len()).map_err(&alloc)?;
    let mut dv = st.alloc_zeros::<f32>(s.v_len()).map_err(&alloc)?;
    let ctx = st.context();
    let event = || ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
    let (e0, e1, e2) = (
        event().map_err(device_error("creating events"))?,
        event().map_err(device_error("creating events"))?,
        event().map_err(device_error("creating events"))?,
    );
    let mut fwd_ms = Vec::with_capacity(runs);
    let mut bwd_ms = Vec::with_capacity(runs);

    let (q_ptr, _q) = q.device_ptr(st);
    let (k_ptr, _k) = k.device_ptr(st);
    let (v_ptr, _v) = v.device_ptr(st);
    let valid_ptr = valid.as_ref().map(|m| m.device_ptr(st));
    let valid_ptr = valid_ptr.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const u8);
    let (state_ptr, _state) = state.device_ptr_mut(st);
    let (thr_ptr, _thr) = thr.device_ptr(st);
    let (o_ptr, _o) = o.device_ptr_mut(st);
    let (lse_ptr, _lse) = lse.device_ptr_mut(st);
    let (forgotten_ptr, _forgotten) = forgotten.device_ptr_mut(st);
    let (delta_ptr, _delta) = delta.device_ptr_mut(st);
    let (rows_ptr, _rows) = center_rows.device_ptr_mut(st);
    let (center_ptr, _center) = center.device_ptr_mut(st);
    let (dq_ptr, _dq) = dq.device_ptr_mut(st);
    let (dk_ptr, _dk) = dk.device_ptr_mut(st);
    let (dv_ptr, _dv) = dv.device_ptr_mut(st);
    let bptr = BackwardPointers {
        q: q_ptr as *const std::ffi::c_void,
        k: k_ptr as *const std::ffi::c_void,
        v: v_ptr as *const std::ffi::c_void,
        valid: valid_ptr,
        o: o_ptr as *const f32,
        lse: lse_ptr as *const f32,
        // dO = O: any finite gradient times the same work.
        d_o: o_ptr as *const f32,
        delta: delta_ptr as *mut f32,
        center_rows: rows_ptr as *mut f32,
        center: center_ptr as *mut LwpfCenterGrad,
        dq: dq_ptr as *mut f32,
        dk: dk_ptr as *mut f32,
        dv: dv_ptr as *mut f32,
    };
    for run in 0..warmup + runs {
        let mut ptr = CallPointers {
            q: q_ptr as *const std::ffi::c_void,
            k: k_ptr as *const std::ffi::c_void,
            v: v_ptr as *const std::ffi::c_void,
            valid: valid_ptr,
            state: state_ptr as *mut LwpfMedianState,
            threshold: thr_ptr as *const LwpfThreshold,
            o: o_ptr as *mut f32,
            lse: lse_ptr as *mut f32,
            forgotten: forgotten_ptr as *mut u32,
        };
        // The selection leaves its rank and prefix behind: start afresh.
        // SAFETY: `state_ptr` is the live one-element state buffer; the host
        // value outlives the copy, which completes before the next synchronize
        // point that `elapsed_ms` below waits for.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(state_ptr, &state0, st.cu_stream())
                .map_err(device_error("resetting the median state"))?;
        }
        e0.record(st).map_err(device_error("recording an event"))?;
        // SAFETY: the pointers are the live device buffers above.
        unsafe { launch_forward(rt, input, cfg, &mut ptr, median_kernels)? };
        e1.record(st).map_err(device_error("recording an event"))?;
        if mode == DqMode::Atomic {
            // SAFETY: `dq_ptr` is the live dQ buffer of q_len floats.
            unsafe {
                cudarc::driver::result::memset_d8_async(dq_ptr, 0, s.q_len() * 4, st.cu_stream())
                    .map_err(device_error("clearing dQ"))?;
            }
        }
        let p = backward_params(input, cfg, &fwd, &bptr, mode);
        // SAFETY: as above.
        unsafe { launch_backward(rt, (input, cfg), &fwd, &p, mode, tiles)? };
        e2.record(st).map_err(device_error("recording an event"))?;
        if run >= warmup {
            fwd_ms.push(e0.elapsed_ms(&e1).map_err(device_error("timing"))?);
            bwd_ms.push(e1.elapsed_ms(&e2).map_err(device_error("timing"))?);
        }
    }
    st.synchronize().map_err(device_error("running the kernels"))?;
    let median = |mut x: Vec<f32>| {
        x.sort_by(f32::total_cmp);
        x[x.len() / 2]
    };
    Ok(KernelTimes { forward_ms: median(fwd_ms), backward_ms: median(bwd_ms) })
}

// ---- The unfused baseline -------------------------------------------------------

/// cuBLAS for the unfused baseline, created on first use, so that a machine
/// without libcublas still runs the fused kernels.
fn blas(rt: &'static Runtime) -> Result<&'static CudaBlas> {
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
            .map_err(device_error(unfused::SYMBOLS[kernel]))?;
    }
    Ok(())
}

fn upload_valid(st: &Arc<CudaStream>, input: &AttentionInput) -> Result<Option<CudaSlice<u8>>> {
    match input.valid {
        Some(m) => {
            let bytes: Vec<u8> = m.iter().map(|&x| x as u8).collect();
            Ok(Some(st.clone_htod(&bytes).map_err(device_error("copying the mask"))?))
        }
        None => Ok(None),
    }
}

/// Forward pass (SPEC section 3) of the unfused baseline on the GPU: S by
/// cuBLAS, the median by radix selection over S, the elementwise softmax,
/// O by cuBLAS. Holds two `B * H * Nq * Nk` buffers.
pub fn unfused_forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    cfg.validate()?;
    input.validate()?;
    input.check_precision(cfg.precision)?;
    check_limits(input, "cuda unfused")?;
    // The baseline computes in f32 on the inputs rounded to the precision.
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let rt = runtime()?;
    let blas = blas(rt)?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return forward(input, cfg);
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let entries = valid_entries(input);
    let median_kernels = uses_median_kernels(cfg, entries);
    let bh = s.batch * s.heads;
    let n2 = s.rows() * s.n_k;
    let upload = device_error("copying the inputs to the device");
    let alloc = device_error("allocating device memory");
    let q = st.clone_htod(input.q).map_err(&upload)?;
    let k = st.clone_htod(input.k).map_err(&upload)?;
    let v = st.clone_htod(input.v).map_err(&upload)?;
    let valid = upload_valid(st, input)?;
    let mut state = st.clone_htod(&[median_state(entries.max(1))]).map_err(&upload)?;
    let thr = st.clone_htod(&[host_threshold(cfg)]).map_err(&upload)?;
    let mut sc = st.alloc_zeros::<f32>(n2).map_err(&alloc)?;
    let mut w = st.alloc_zeros::<f32>(n2).map_err(&alloc)?;
    let mut o = st.alloc_zeros::<f32>(s.o_len()).map_err(&alloc)?;
    let mut lse = st.clone_htod(&vec![f32::NAN; s.rows()]).map_err(&upload)?;
    let mut forgotten = st.clone_htod(&vec![u32::MAX; s.rows()]).map_err(&upload)?;

    let beta = cfg.beta_for(s.d);
    // SAFETY: Q [bh, Nq, D], K [bh, Nk, D], S [bh, Nq, Nk].
    unsafe {
        gemm_rm(blas, bh, (false, true), (s.n_q, s.n_k, s.d), beta, (&q, s.d), (&k, s.d), &mut sc)?
    };
    {
        let (s_ptr, _s) = sc.device_ptr(st);
        let (w_ptr, _w) = w.device_ptr_mut(st);
        let valid_ptr = valid.as_ref().map(|m| m.device_ptr(st));
        let (state_ptr, _state) = state.device_ptr_mut(st);
        let (thr_ptr, _thr) = thr.device_ptr(st);
        let (lse_ptr, _lse) = lse.device_ptr_mut(st);
        let (forgotten_ptr, _forgotten) = forgotten.device_ptr_mut(st);
        let mut p = unfused::unfused_params(input, cfg);
        p.valid_ptr = valid_ptr.as_ref().map_or(std::ptr::null(), |(x, _)| *x as *const u8);
        p.s_ptr = s_ptr as *const f32;
        p.state_ptr = state_ptr as *mut LwpfMedianState;
        p.threshold_ptr = thr_ptr as *const LwpfThreshold;
        if median_kernels {
            let ptr = CallPointers {
                q: std::ptr::null(),
                k: std::ptr::null(),
                v: std::ptr::null(),
                valid: std::ptr::null(),
                state: p.state_ptr,
                threshold: std::ptr::null(),
                o: std::ptr::null_mut(),
                lse: std::ptr::null_mut(),
                forgotten: std::ptr::null_mut(),
            };
            for pass in 0..LWPF_RADIX_PASSES as i32 {
                p.pass = pass;
                launch_unfused(rt, 0, unfused::hist_grid(s.rows()), &p)?;
                let mp = median_params(input, cfg, &ptr, pass);
                // SAFETY: the selection touches the live state only.
                unsafe {
                    st.launch_builder(&rt.median_select)
                        .arg(&mp)
                        .launch(launch_config(1))
                        .map_err(device_error("median selection"))?;
                }
            }
            let offset = std::mem::offset_of!(LwpfMedianState, threshold) as u64;
            p.threshold_ptr = (state_ptr + offset) as *const LwpfThreshold;
        }
        p.w_ptr = w_ptr as *mut f32;
        p.lse_ptr = lse_ptr as *mut f32;
        p.forgotten_ptr = forgotten_ptr as *mut u32;
        launch_unfused(rt, 1, s.rows() as u32, &p)?;
    }
    // SAFETY: W [bh, Nq, Nk], V [bh, Nk, Dv], O [bh, Nq, Dv].
    unsafe {
        gemm_rm(
            blas,
            bh,
            (false, false),
            (s.n_q, s.d_v, s.n_k),
            1.0,
            (&w, s.n_k),
            (&v, s.d_v),
            &mut o,
        )?
    };

    let download = device_error("copying the results from the device");
    st.synchronize().map_err(device_error("running the unfused forward"))?;
    let o = st.clone_dtoh(&o).map_err(&download)?;
    let lse = st.clone_dtoh(&lse).map_err(&download)?;
    let forgotten = st.clone_dtoh(&forgotten).map_err(&download)?;
    let t = if median_kernels {
        st.clone_dtoh(&state).map_err(&download)?[0].threshold
    } else {
        host_threshold(cfg)
    };
    Ok(Forward { o, lse, stats: call_stats(cfg, &t, &forgotten, entries) })
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
    cfg.validate()?;
    input.validate()?;
    input.check_precision(cfg.precision)?;
    check_limits(input, "cuda unfused")?;
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    let s = input.shape;
    for (tensor, got, expected) in [
        ("dO", d_o.len(), s.o_len()),
        ("O", fwd.o.len(), s.o_len()),
        ("lse", fwd.lse.len(), s.rows()),
    ] {
        if got != expected {
            return Err(Error::ShapeMismatch { tensor, got, expected, shape: s.to_string() });
        }
    }
    crate::op::check_finite("dO", d_o)?;
    let rt = runtime()?;
    let blas = blas(rt)?;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(empty_grads(input));
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let bh = s.batch * s.heads;
    let n2 = s.rows() * s.n_k;
    let beta = cfg.beta_for(s.d);
    let upload = device_error("copying the inputs to the device");
    let alloc = device_error("allocating device memory");
    let q = st.clone_htod(input.q).map_err(&upload)?;
    let k = st.clone_htod(input.k).map_err(&upload)?;
    let v = st.clone_htod(input.v).map_err(&upload)?;
    let valid = upload_valid(st, input)?;
    let o = st.clone_htod(&fwd.o).map_err(&upload)?;
    let lse = st.clone_htod(&fwd.lse).map_err(&upload)?;
    let g = st.clone_htod(d_o).map_err(&upload)?;
    let t = fwd.stats.threshold;
    let thr = st
        .clone_htod(&[LwpfThreshold {
            z: t.z,
            b: t.b,
            m: t.m.unwrap_or(f32::NAN),
            has_median: t.m.is_some() as i32,
            at_median: fwd.stats.at_median,
        }])
        .map_err(&upload)?;
    let mut delta = st.alloc_zeros::<f32>(s.rows()).map_err(&alloc)?;
    let mut center_rows = st.alloc_zeros::<f32>(s.rows()).map_err(&alloc)?;
    let mut center = st.clone_htod(&[LwpfCenterGrad::default()]).map_err(&upload)?;
    let mut sc = st.alloc_zeros::<f32>(n2).map_err(&alloc)?;
    let mut ds = st.alloc_zeros::<f32>(n2).map_err(&alloc)?;
    let mut w = st.alloc_zeros::<f32>(n2).map_err(&alloc)?;
    let mut dq = st.alloc_zeros::<f32>(s.q_len()).map_err(&alloc)?;
    let mut dk = st.alloc_zeros::<f32>(s.k_len()).map_err(&alloc)?;
    let mut dv = st.alloc_zeros::<f32>(s.v_len()).map_err(&alloc)?;

    // SAFETY (both): S and dP [bh, Nq, Nk] from Q, K [bh, N, D], dO, V.
    unsafe {
        gemm_rm(blas, bh, (false, true), (s.n_q, s.n_k, s.d), beta, (&q, s.d), (&k, s.d), &mut sc)?;
        gemm_rm(
            blas,
            bh,
            (false, true),
            (s.n_q, s.n_k, s.d_v),
            1.0,
            (&g, s.d_v),
            (&v, s.d_v),
            &mut ds,
        )?;
    }
    let center_gradient = super::backward::uses_center_gradient(fwd);
    {
        let (o_ptr, _o) = o.device_ptr(st);
        let (lse_ptr, _lse) = lse.device_ptr(st);
        let (g_ptr, _g) = g.device_ptr(st);
        let (thr_ptr, _thr) = thr.device_ptr(st);
        let (delta_ptr, _delta) = delta.device_ptr_mut(st);
        let (rows_ptr, _rows) = center_rows.device_ptr_mut(st);
        let (center_ptr, _center) = center.device_ptr_mut(st);
        let (s_ptr, _s) = sc.device_ptr(st);
        let (ds_ptr, _ds) = ds.device_ptr_mut(st);
        let (w_ptr, _w) = w.device_ptr_mut(st);
        let valid_ptr = valid.as_ref().map(|m| m.device_ptr(st));
        let bptr = BackwardPointers {
            q: std::ptr::null(),
            k: std::ptr::null(),
            v: std::ptr::null(),
            valid: std::ptr::null(),
            o: o_ptr as *const f32,
            lse: lse_ptr as *const f32,
            d_o: g_ptr as *const f32,
            delta: delta_ptr as *mut f32,
            center_rows: rows_ptr as *mut f32,
            center: center_ptr as *mut LwpfCenterGrad,
            dq: std::ptr::null_mut(),
            dk: std::ptr::null_mut(),
            dv: std::ptr::null_mut(),
        };
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
        let mut p = unfused::unfused_params(input, cfg);
        p.valid_ptr = valid_ptr.as_ref().map_or(std::ptr::null(), |(x, _)| *x as *const u8);
        p.s_ptr = s_ptr as *const f32;
        p.w_ptr = w_ptr as *mut f32;
        p.ds_ptr = ds_ptr as *mut f32;
        p.threshold_ptr = thr_ptr as *const LwpfThreshold;
        p.lse_ptr = lse_ptr as *mut f32;
        p.delta_ptr = delta_ptr as *const f32;
        p.center_rows_ptr = rows_ptr as *mut f32;
        p.center_ptr = center_ptr as *const LwpfCenterGrad;
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
    }
    // SAFETY: dV [bh, Nk, Dv] = W^T dO; dQ [bh, Nq, D] = beta dS K;
    // dK [bh, Nk, D] = beta dS^T Q.
    unsafe {
        gemm_rm(
            blas,
            bh,
            (true, false),
            (s.n_k, s.d_v, s.n_q),
            1.0,
            (&w, s.n_k),
            (&g, s.d_v),
            &mut dv,
        )?;
        gemm_rm(
            blas,
            bh,
            (false, false),
            (s.n_q, s.d, s.n_k),
            beta,
            (&ds, s.n_k),
            (&k, s.d),
            &mut dq,
        )?;
        gemm_rm(
            blas,
            bh,
            (true, false),
            (s.n_k, s.d, s.n_q),
            beta,
            (&ds, s.n_k),
            (&q, s.d),
            &mut dk,
        )?;
    }
    let download = device_error("copying the results from the device");
    st.synchronize().map_err(device_error("running the unfused backward"))?;
    Ok(Grads {
        dq: st.clone_dtoh(&dq).map_err(&download)?,
        dk: st.clone_dtoh(&dk).map_err(&download)?,
        dv: st.clone_dtoh(&dv).map_err(&download)?,
    })
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

/// `bits` read as bf16 and as fp16 by the kernels' loads on the device (the
/// emulation's `selftest::convert`): `(bf16 values, fp16 values)`.
pub fn selftest_convert(bits: &[u16]) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = bits.len();
    let rt = runtime()?;
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let upload = device_error("copying the inputs to the device");
    let words = st.clone_htod(bits).map_err(&upload)?;
    let mut out = st.clone_htod(&vec![f32::NAN; 2 * n]).map_err(&upload)?;
    let n_arg = n as i32;
    let grid = n.div_ceil(THREADS as usize).max(1) as u32;
    // SAFETY: the kernel reads n words of each input and writes 2 n floats.
    unsafe {
        st.launch_builder(&rt.selftest_convert)
            .arg(&words)
            .arg(&words)
            .arg(&n_arg)
            .arg(&mut out)
            .launch(launch_config(grid))
            .map_err(device_error("conversion self-test"))?;
    }
    st.synchronize().map_err(device_error("running the conversion self-test"))?;
    let mut out =
        st.clone_dtoh(&out).map_err(device_error("copying the results from the device"))?;
    let f16 = out.split_off(n);
    Ok((out, f16))
}
