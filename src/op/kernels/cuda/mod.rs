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
//! Calls are serialized on the context's default stream. A call of
//! [`forward`] or [`backward`] copies its inputs to the device and its
//! results back; [`forward_resident`] keeps a call's tensors there for
//! [`backward_resident`] (the autograd node's path), and [`bench::BenchCall`]
//! keeps a whole call there for timing. The unfused baseline is in
//! [`unfused_forward`] and [`unfused_backward`].

use std::sync::{Arc, Mutex, OnceLock};

pub mod bench;
mod unfused;

pub use unfused::{unfused_backward, unfused_forward};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;

use super::backward::{
    BackwardKernel, BackwardPointers, BackwardTiles, DqMode, backward_launches, backward_params,
    check_backward,
};
use super::params::*;
use super::{
    CallPointers, KernelInputs, KernelTensor, THREADS, call_stats, check_limits, dtype_code,
    forward_params, host_threshold, median_params, median_state, tiled_grid, uses_median_kernels,
    valid_entries,
};
use crate::error::{Error, Result};
use crate::op::{AttentionConfig, AttentionInput, Forward, Grads, Precision, Shape};

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
    /// The unfused baseline's elementwise kernels ([`super::unfused::SYMBOLS`]).
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
    // Each file is loaded once (on a later device the driver compiles its
    // PTX then), and every function of it comes from that one module.
    let modules = MODULES
        .iter()
        .map(|m| {
            let image = if (major, minor) == (9, 0) {
                Ptx::from_binary(m.cubin.to_vec())
            } else {
                Ptx::from_src(m.ptx)
            };
            let module =
                ctx.load_module(image).map_err(|e| format!("loading module {}: {e}", m.name))?;
            Ok((m.name, module))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let load = |module: &str, function: &str| -> std::result::Result<CudaFunction, String> {
        let (_, m) = modules
            .iter()
            .find(|(name, _)| *name == module)
            .ok_or_else(|| format!("kernel module {module} was not built"))?;
        m.load_function(function).map_err(|e| format!("loading {function} from {module}: {e}"))
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
        let f = |p: Precision| load(module, &format!("{family}_{}", p.name()));
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
            load("unfused", super::unfused::SYMBOLS[0])?,
            load("unfused", super::unfused::SYMBOLS[1])?,
            load("unfused", super::unfused::SYMBOLS[2])?,
            load("unfused", super::unfused::SYMBOLS[3])?,
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

    fn bytes(&self) -> usize {
        match self {
            DeviceTensor::F32(x) => bytes(x),
            DeviceTensor::Bits(x) => bytes(x),
        }
    }

    fn addr(&self, st: &CudaStream) -> *const std::ffi::c_void {
        match self {
            DeviceTensor::F32(x) => addr(x, st) as *const std::ffi::c_void,
            DeviceTensor::Bits(x) => addr(x, st) as *const std::ffi::c_void,
        }
    }
}

/// The device address of `x`, for a kernel's parameter struct. Every copy
/// and launch of this backend runs on the runtime's one stream, which
/// orders them, so the guard with which cudarc orders work across streams
/// is let go at once. That holds while no other stream sees a buffer that
/// this backend writes without waiting for it (it hands none out).
fn addr<T>(x: &CudaSlice<T>, st: &CudaStream) -> sys::CUdeviceptr {
    x.device_ptr(st).0
}

/// The size of `x` on the device.
fn bytes<T>(x: &CudaSlice<T>) -> usize {
    x.len() * std::mem::size_of::<T>()
}

/// The threshold inside the median's state, which the selection writes.
fn state_threshold(state: *mut LwpfMedianState) -> *const LwpfThreshold {
    let offset = std::mem::offset_of!(LwpfMedianState, threshold);
    state.cast::<u8>().wrapping_add(offset).cast::<LwpfThreshold>()
}

/// The key padding mask on the device as bytes, where the call has one.
fn upload_valid(st: &Arc<CudaStream>, input: &AttentionInput) -> Result<Option<CudaSlice<u8>>> {
    match input.valid {
        Some(m) => {
            let bytes: Vec<u8> = m.iter().map(|&x| x as u8).collect();
            Ok(Some(st.clone_htod(&bytes).map_err(device_error("copying the mask"))?))
        }
        None => Ok(None),
    }
}

/// `len` copies of `value` on the device.
fn filled<T: DeviceRepr + Clone>(
    st: &Arc<CudaStream>,
    value: T,
    len: usize,
) -> Result<CudaSlice<T>> {
    st.clone_htod(&vec![value; len]).map_err(device_error("allocating device memory"))
}

/// The device buffers of one call's fused forward: its inputs, the median's
/// state, the host's threshold, and what the kernels write.
struct ForwardBuffers {
    /// Q, K and V in the call's precision.
    qkv: [DeviceTensor; 3],
    valid: Option<CudaSlice<u8>>,
    state: CudaSlice<LwpfMedianState>,
    /// The selection's starting state, copied over `state` on the device
    /// before each forward (the selection leaves its rank and prefix behind).
    state0: CudaSlice<LwpfMedianState>,
    thr: CudaSlice<LwpfThreshold>,
    o: CudaSlice<f32>,
    lse: CudaSlice<f32>,
    forgotten: CudaSlice<u32>,
    entries: u64,
    median_kernels: bool,
}

impl ForwardBuffers {
    /// `results`: a forward's O and lse to start from (for a backward);
    /// without them, O and lse start as NaN.
    fn upload(
        st: &Arc<CudaStream>,
        input: &AttentionInput,
        cfg: &AttentionConfig,
        results: Option<&Forward>,
    ) -> Result<Self> {
        let s = input.shape;
        let copy = |x: &[f32]| st.clone_htod(x).map_err(device_error("copying O and lse"));
        let x = KernelInputs::new(input, cfg.precision);
        let entries = valid_entries(input);
        let state0 = filled(st, median_state(entries.max(1)), 1)?;
        Ok(ForwardBuffers {
            qkv: [
                DeviceTensor::upload(st, &x.q)?,
                DeviceTensor::upload(st, &x.k)?,
                DeviceTensor::upload(st, &x.v)?,
            ],
            valid: upload_valid(st, input)?,
            state: filled(st, median_state(entries.max(1)), 1)?,
            state0,
            thr: filled(st, host_threshold(cfg), 1)?,
            // NaN and u32::MAX: an element a kernel failed to write shows in
            // tests.
            o: results.map_or_else(|| filled(st, f32::NAN, s.o_len()), |f| copy(&f.o))?,
            lse: results.map_or_else(|| filled(st, f32::NAN, s.rows()), |f| copy(&f.lse))?,
            forgotten: filled(st, u32::MAX, s.rows())?,
            entries,
            median_kernels: uses_median_kernels(cfg, entries),
        })
    }

    /// Enqueues the call's forward on the runtime's stream; nothing waits.
    fn enqueue(
        &mut self,
        rt: &Runtime,
        input: &AttentionInput,
        cfg: &AttentionConfig,
    ) -> Result<()> {
        let st = &rt.stream;
        if self.median_kernels {
            st.memcpy_dtod(&self.state0, &mut self.state)
                .map_err(device_error("resetting the median state"))?;
        }
        let mut ptr = self.pointers(st);
        // SAFETY: the pointers are this call's live device buffers, of the
        // sizes of `input`'s shape (the one they were uploaded for).
        unsafe { launch_forward(rt, input, cfg, &mut ptr, self.median_kernels) }
    }

    /// Device memory held by the buffers.
    fn bytes(&self) -> usize {
        let inputs: usize = self.qkv.iter().map(DeviceTensor::bytes).sum();
        inputs
            + self.valid.as_ref().map_or(0, bytes)
            + bytes(&self.state)
            + bytes(&self.state0)
            + bytes(&self.thr)
            + bytes(&self.o)
            + bytes(&self.lse)
            + bytes(&self.forgotten)
    }

    /// The buffers' device addresses, the host's threshold as the one the
    /// forward reads.
    fn pointers(&self, st: &CudaStream) -> CallPointers {
        let [q, k, v] = &self.qkv;
        CallPointers {
            q: q.addr(st),
            k: k.addr(st),
            v: v.addr(st),
            valid: self.valid.as_ref().map_or(std::ptr::null(), |m| addr(m, st) as *const u8),
            state: addr(&self.state, st) as *mut LwpfMedianState,
            threshold: addr(&self.thr, st) as *const LwpfThreshold,
            o: addr(&self.o, st) as *mut f32,
            lse: addr(&self.lse, st) as *mut f32,
            forgotten: addr(&self.forgotten, st) as *mut u32,
        }
    }

    /// Waits for the stream and copies the forward's results to the host.
    fn download(&self, st: &Arc<CudaStream>, cfg: &AttentionConfig) -> Result<Forward> {
        let download = device_error("copying the results from the device");
        st.synchronize().map_err(device_error("running the kernels"))?;
        let forgotten = st.clone_dtoh(&self.forgotten).map_err(&download)?;
        let thr = if self.median_kernels {
            st.clone_dtoh(&self.state).map_err(&download)?[0].threshold
        } else {
            host_threshold(cfg)
        };
        Ok(Forward {
            o: st.clone_dtoh(&self.o).map_err(&download)?,
            lse: st.clone_dtoh(&self.lse).map_err(&download)?,
            stats: call_stats(cfg, &thr, &forgotten, self.entries),
        })
    }
}

/// The device buffers of one call's fused backward beyond the forward's.
struct BackwardBuffers {
    d_o: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    center_rows: CudaSlice<f32>,
    center: CudaSlice<LwpfCenterGrad>,
    dq: CudaSlice<f32>,
    dk: CudaSlice<f32>,
    dv: CudaSlice<f32>,
}

impl BackwardBuffers {
    fn upload(st: &Arc<CudaStream>, s: Shape, d_o: &[f32]) -> Result<Self> {
        // NaN: an element the kernels failed to write shows in tests.
        Ok(BackwardBuffers {
            d_o: st.clone_htod(d_o).map_err(device_error("copying dO to the device"))?,
            delta: filled(st, f32::NAN, s.rows())?,
            center_rows: filled(st, f32::NAN, s.rows())?,
            center: filled(st, LwpfCenterGrad::default(), 1)?,
            dq: filled(st, f32::NAN, s.q_len())?,
            dk: filled(st, f32::NAN, s.k_len())?,
            dv: filled(st, f32::NAN, s.v_len())?,
        })
    }

    /// Enqueues the backward of the call whose forward buffers are `f` and
    /// whose forward statistics are in `fwd`; nothing waits.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        rt: &Runtime,
        (input, cfg): (&AttentionInput, &AttentionConfig),
        fwd: &Forward,
        f: &ForwardBuffers,
        mode: DqMode,
        tiles: BackwardTiles,
    ) -> Result<()> {
        let st = &rt.stream;
        if mode == DqMode::Atomic {
            // The atomic mode adds into dQ.
            st.memset_zeros(&mut self.dq).map_err(device_error("clearing dQ"))?;
        }
        let ptr = self.pointers(st, f);
        let p = backward_params(input, cfg, fwd, &ptr, mode);
        // SAFETY: `p` holds this call's live device buffers, of the sizes of
        // `input`'s shape; the caller checked that `tiles` holds the call.
        unsafe { launch_backward(rt, (input, cfg), fwd, &p, mode, tiles) }
    }

    /// Device memory held by the buffers.
    fn bytes(&self) -> usize {
        [&self.d_o, &self.delta, &self.center_rows, &self.dq, &self.dk, &self.dv]
            .into_iter()
            .map(bytes)
            .sum::<usize>()
            + bytes(&self.center)
    }

    /// The device addresses of the backward of the call whose forward
    /// buffers are `f`.
    fn pointers(&self, st: &CudaStream, f: &ForwardBuffers) -> BackwardPointers {
        let x = f.pointers(st);
        BackwardPointers {
            q: x.q,
            k: x.k,
            v: x.v,
            valid: x.valid,
            o: x.o,
            lse: x.lse,
            d_o: addr(&self.d_o, st) as *const f32,
            delta: addr(&self.delta, st) as *mut f32,
            center_rows: addr(&self.center_rows, st) as *mut f32,
            center: addr(&self.center, st) as *mut LwpfCenterGrad,
            dq: addr(&self.dq, st) as *mut f32,
            dk: addr(&self.dk, st) as *mut f32,
            dv: addr(&self.dv, st) as *mut f32,
        }
    }

    /// Waits for the stream and copies the gradients to the host.
    fn download(&self, st: &Arc<CudaStream>) -> Result<Grads> {
        let download = device_error("copying the results from the device");
        st.synchronize().map_err(device_error("running the backward kernels"))?;
        Ok(Grads {
            dq: st.clone_dtoh(&self.dq).map_err(&download)?,
            dk: st.clone_dtoh(&self.dk).map_err(&download)?,
            dv: st.clone_dtoh(&self.dv).map_err(&download)?,
        })
    }
}

/// Forward pass (SPEC section 3) on the GPU.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    forward_resident(input, cfg).map(|(fwd, _)| fwd)
}

/// A forward call's tensors kept on the device for the backward of the same
/// call: Q, K and V in the call's precision, the mask, O and lse. With it
/// the backward uploads only dO ([`backward_resident`]); the autograd node
/// of the op holds one.
pub struct DeviceCall {
    buffers: ForwardBuffers,
    shape: Shape,
    cfg: AttentionConfig,
}

/// [`forward`], also returning the call's tensors on the device (`None`
/// for a call without scores, whose backward is zero).
pub fn forward_resident(
    input: &AttentionInput,
    cfg: &AttentionConfig,
) -> Result<(Forward, Option<DeviceCall>)> {
    crate::op::check_forward_input(input, cfg)?;
    check_limits(input, "cuda")?;
    // Also for empty calls: a request for CUDA where it cannot run fails.
    let rt = runtime()?;
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok((Forward::empty(s, cfg), None));
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut buffers = ForwardBuffers::upload(&rt.stream, input, cfg, None)?;
    buffers.enqueue(rt, input, cfg)?;
    let fwd = buffers.download(&rt.stream, cfg)?;
    Ok((fwd, Some(DeviceCall { buffers, shape: s, cfg: *cfg })))
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
        // SAFETY: the caller's promise on `ptr`.
        unsafe { launch_median(rt, input, cfg, ptr, grid)? };
        // The forward pass reads the threshold the selection wrote.
        ptr.threshold = state_threshold(ptr.state);
    }
    let p = forward_params(input, cfg, ptr);
    // SAFETY: the kernel reads and writes only inside the buffers of `ptr`,
    // whose sizes match the shape in `p` (the caller's promise).
    unsafe {
        st.launch_builder(&rt.forward[dtype_code(cfg.precision) as usize])
            .arg(&p)
            .launch(launch_config(grid))
            .map_err(device_error("forward kernel"))?;
    }
    Ok(())
}

/// The radix selection's passes over the scores recomputed from Q and K:
/// a histogram over `grid` blocks, then the one-block selection step.
///
/// # Safety
/// As [`launch_forward`].
unsafe fn launch_median(
    rt: &Runtime,
    input: &AttentionInput,
    cfg: &AttentionConfig,
    ptr: &CallPointers,
    grid: u32,
) -> Result<()> {
    let st = &rt.stream;
    for pass in 0..LWPF_RADIX_PASSES as i32 {
        let p = median_params(input, cfg, ptr, pass);
        // SAFETY: the kernels read and write only inside the buffers of
        // `ptr`, whose sizes match the shape in `p` (the caller's promise).
        unsafe {
            st.launch_builder(&rt.median_hist[dtype_code(cfg.precision) as usize])
                .arg(&p)
                .launch(launch_config(grid))
                .map_err(device_error("median histogram"))?;
        }
        launch_median_select(rt, &p)?;
    }
    Ok(())
}

/// The selection step of one radix pass: it touches the state of `p` only.
fn launch_median_select(rt: &Runtime, p: &LwpfMedianParams) -> Result<()> {
    // SAFETY: the selection reads and writes the one-element state that
    // every caller points `p` at.
    unsafe {
        rt.stream
            .launch_builder(&rt.median_select)
            .arg(p)
            .launch(launch_config(1))
            .map_err(device_error("median selection"))?;
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
                .map_err(|e| device_error(&kernel.symbol(cfg.precision, tiles))(e))?;
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
        return Ok(Grads::zeros(input.shape));
    }
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let st = &rt.stream;
    let f = ForwardBuffers::upload(st, input, cfg, Some(fwd))?;
    let mut b = BackwardBuffers::upload(st, s, d_o)?;
    b.enqueue(rt, (input, cfg), fwd, &f, mode, tiles)?;
    b.download(st)
}

/// Backward pass of the call `call` left on the device by
/// [`forward_resident`]: `input`, `cfg` and `fwd` must be that call's (the
/// shape and options are checked), and only dO travels to the device.
pub fn backward_resident(
    call: &DeviceCall,
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    mode: DqMode,
) -> Result<Grads> {
    let tiles = check_backward(input, cfg, fwd, d_o, "cuda")?;
    if call.shape != input.shape || call.cfg != *cfg {
        return Err(Error::InvalidConfig {
            what: format!(
                "the backward's shape {} or options differ from those of the forward call \
                 whose tensors it was given ({})",
                input.shape, call.shape
            ),
        });
    }
    let rt = runtime()?;
    let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = BackwardBuffers::upload(&rt.stream, input.shape, d_o)?;
    b.enqueue(rt, (input, cfg), fwd, &call.buffers, mode, tiles)?;
    b.download(&rt.stream)
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
