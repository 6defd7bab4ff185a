//! Partially forgetting attention: the op, its options and its backends.
//!
//! Every score `s = beta * q . k` passes through the forgetting function before
//! the softmax: an entry with `s <= z` is *forgotten*, its value replaced by the
//! bias `b`, and (with `drop_forgotten`) its memory leaves the numerator of the
//! retrieval. `../shared/SPEC.md` is the contract; this module holds the types
//! every backend shares and picks the backend.
//!
//! Tensors are flat row-major `f32` slices: Q `[B, H, Nq, D]`, K `[B, H, Nk, D]`,
//! V `[B, H, Nk, Dv]`, the key padding mask `[B, Nk]` (true = a real key), O
//! `[B, H, Nq, Dv]` and `lse` `[B, H, Nq]`.

pub mod config;
pub mod fast;
pub mod kernels;
pub mod median;
pub mod philox;
pub mod reference;
pub mod unfused;

pub use config::{AttentionConfig, Bias, Center, Forgetting, Pfu, Precision};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub d: usize,
    pub d_v: usize,
}

impl Shape {
    /// Shape with `d_v = d`.
    pub fn new(batch: usize, heads: usize, n_q: usize, n_k: usize, d: usize) -> Self {
        Shape { batch, heads, n_q, n_k, d, d_v: d }
    }

    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.n_q * self.d
    }
    pub fn k_len(&self) -> usize {
        self.batch * self.heads * self.n_k * self.d
    }
    pub fn v_len(&self) -> usize {
        self.batch * self.heads * self.n_k * self.d_v
    }
    pub fn o_len(&self) -> usize {
        self.batch * self.heads * self.n_q * self.d_v
    }
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.n_q
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[B={}, H={}, Nq={}, Nk={}, D={}, Dv={}]",
            self.batch, self.heads, self.n_q, self.n_k, self.d, self.d_v
        )
    }
}

/// The tensors of one call, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct AttentionInput<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Key padding mask `[B, Nk]`, true = a real key; `None` = all real.
    pub valid: Option<&'a [bool]>,
    pub shape: Shape,
}

impl AttentionInput<'_> {
    /// Whether key `j` of batch item `b` takes part in the call.
    #[inline]
    pub fn is_valid(&self, b: usize, j: usize) -> bool {
        self.valid.is_none_or(|m| m[b * self.shape.n_k + j])
    }

    /// Checks shapes and values (SPEC section 6).
    pub fn validate(&self) -> Result<()> {
        let s = self.shape;
        for (dim, n) in [("batch", s.batch), ("heads", s.heads), ("d", s.d), ("d_v", s.d_v)] {
            if n == 0 {
                return Err(Error::ZeroDim { dim });
            }
        }
        let check_len = |tensor, got, expected| {
            if got != expected {
                Err(Error::ShapeMismatch { tensor, got, expected, shape: s.to_string() })
            } else {
                Ok(())
            }
        };
        check_len("Q", self.q.len(), s.q_len())?;
        check_len("K", self.k.len(), s.k_len())?;
        check_len("V", self.v.len(), s.v_len())?;
        if let Some(m) = self.valid {
            check_len("key padding mask", m.len(), s.batch * s.n_k)?;
        }
        check_finite("Q", self.q)?;
        check_finite("K", self.k)?;
        check_finite("V", self.v)?;
        Ok(())
    }
}

impl AttentionInput<'_> {
    /// Checks that Q, K and V stay finite when rounded to `precision` (an
    /// f32 beyond fp16's 65504 does not).
    pub fn check_precision(&self, precision: Precision) -> Result<()> {
        if precision == Precision::F32 {
            return Ok(());
        }
        for (tensor, x) in [("Q", self.q), ("K", self.k), ("V", self.v)] {
            if let Some(index) = x.iter().position(|&v| !precision.round(v).is_finite()) {
                return Err(Error::OutOfRange {
                    tensor,
                    index,
                    value: x[index],
                    precision: precision.name(),
                });
            }
        }
        Ok(())
    }
}

/// Q, K and V of a call rounded to its precision, for the backends that
/// compute on f32 slices.
pub struct RoundedInput {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl RoundedInput {
    /// The rounded copies, or `None` where the precision is f32 and the
    /// input serves as it is.
    pub fn new(input: &AttentionInput, precision: Precision) -> Option<Self> {
        if precision == Precision::F32 {
            return None;
        }
        let round = |x: &[f32]| x.iter().map(|&v| precision.round(v)).collect();
        Some(RoundedInput { q: round(input.q), k: round(input.k), v: round(input.v) })
    }

    /// `like` with Q, K and V replaced by the rounded copies.
    pub fn input<'a>(&'a self, like: &AttentionInput<'a>) -> AttentionInput<'a> {
        AttentionInput { q: &self.q, k: &self.k, v: &self.v, ..*like }
    }
}

/// Fails with the tensor's name and the first non-finite element.
pub fn check_finite(tensor: &'static str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { tensor, index, value: x[index] }),
        None => Ok(()),
    }
}

/// The threshold of one call once resolved: all backends decide kept versus
/// forgotten as `s > z` with these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Entries with `s <= z` are forgotten (`-inf` for `none`).
    pub z: f32,
    /// Value of a forgotten entry (`-inf` allowed).
    pub b: f32,
    /// The centre when it is the median of the call's scores.
    pub m: Option<f32>,
    /// Whether `b` passes its gradient on to the scores equal to `m`.
    pub center_gradient: bool,
}

impl Threshold {
    /// The threshold of plain attention: nothing is ever forgotten.
    pub const NONE: Threshold =
        Threshold { z: f32::NEG_INFINITY, b: f32::NEG_INFINITY, m: None, center_gradient: false };

    /// Resolves the threshold of a call from its options and, for a median
    /// centre, the median of its valid scores (`None` when it has none).
    pub fn resolve(cfg: &AttentionConfig, median: Option<f32>) -> Threshold {
        match cfg.forgetting {
            Forgetting::None => Threshold::NONE,
            Forgetting::Relu => Threshold { z: 0.0, b: 0.0, m: None, center_gradient: false },
            Forgetting::Pfu(p) => {
                let (center, m) = match p.center {
                    Center::Fixed(c) => (c, None),
                    Center::Median => (median.unwrap_or(0.0), median),
                };
                let z = if cfg.training {
                    center + p.noise_std * philox::threshold_eps(cfg.seed)
                } else {
                    center
                };
                let b = match p.bias {
                    Bias::Threshold => z,
                    Bias::Fixed(b) => b,
                    Bias::NegInf => f32::NEG_INFINITY,
                };
                let center_gradient =
                    p.center_gradient && m.is_some() && matches!(p.bias, Bias::Threshold);
                Threshold { z, b, m, center_gradient }
            }
        }
    }
}

/// Statistics of one call, for logging and for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    /// The threshold used.
    pub threshold: Threshold,
    /// Number of forgotten entries (valid entries with `s <= z`).
    pub forgotten: u64,
    /// Number of valid entries (score count of the call).
    pub entries: u64,
    /// Number of valid entries whose score equals the median `m`.
    pub at_median: u64,
}

impl CallStats {
    /// Fraction of the call's valid entries that were forgotten.
    pub fn forgotten_fraction(&self) -> f64 {
        if self.entries == 0 { 0.0 } else { self.forgotten as f64 / self.entries as f64 }
    }
}

/// Result of the forward pass.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Output `[B, H, Nq, Dv]`.
    pub o: Vec<f32>,
    /// `log(den)` per row `[B, H, Nq]`, `-inf` for an empty row.
    pub lse: Vec<f32>,
    pub stats: CallStats,
}

impl Forward {
    /// The forward of a call without scores (no queries or no keys): every
    /// row is empty (SPEC section 6).
    pub fn empty(shape: Shape, cfg: &AttentionConfig) -> Forward {
        let s = shape;
        Forward {
            o: vec![0.0; s.o_len()],
            lse: vec![f32::NEG_INFINITY; s.rows()],
            stats: CallStats {
                threshold: Threshold::resolve(cfg, None),
                forgotten: 0,
                entries: 0,
                at_median: 0,
            },
        }
    }
}

/// Gradients of the backward pass.
#[derive(Clone, Debug)]
pub struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

impl Grads {
    /// Zero gradients of a call of `shape` (also those of a call without
    /// scores).
    pub fn zeros(shape: Shape) -> Grads {
        let s = shape;
        Grads { dq: vec![0.0; s.q_len()], dk: vec![0.0; s.k_len()], dv: vec![0.0; s.v_len()] }
    }
}

/// Which implementation runs the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Backend {
    /// The f64 oracle: obvious, materializes every score, slow.
    Reference,
    /// The fast CPU path: tiled, online softmax, no N x N buffer, multithreaded.
    #[default]
    Cpu,
    /// The unfused CPU baseline that materializes the N x N scores the way the
    /// authors' PyTorch code does; kept for benchmarks.
    Unfused,
    /// The fused CUDA kernels.
    Cuda,
    /// The same kernel sources under the host emulation (`kernels/emu/`):
    /// the fused kernels' code on the CPU, far too slow for real work, for
    /// tests where no GPU is (the backward's dQ in the deterministic mode).
    Emulated,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Unfused => "unfused",
            Backend::Cuda => "cuda",
            Backend::Emulated => "emulated",
        }
    }
}

/// Why the CUDA backend cannot run a call in this build.
#[cfg(not(feature = "cuda"))]
fn cuda_unavailable(_pass: &str) -> Error {
    let reason = "this build has no CUDA kernels: rebuild with `--features cuda` \
                  (needs nvcc 13.0, see scripts/install-nvcc.sh)"
        .into();
    Error::BackendUnavailable { backend: "cuda", reason }
}

/// The fused CUDA forward pass, where this build has it.
fn cuda_forward(input: &AttentionInput, cfg: &AttentionConfig) -> Result<Forward> {
    #[cfg(feature = "cuda")]
    {
        kernels::cuda::forward(input, cfg)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (input, cfg);
        Err(cuda_unavailable("forward"))
    }
}

/// The fused CUDA backward pass, where this build has it: dQ in the
/// deterministic mode (bit-identical run to run, see kernels/backward.cu).
fn cuda_backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Result<Grads> {
    #[cfg(feature = "cuda")]
    {
        kernels::cuda::backward(input, cfg, fwd, d_o, kernels::backward::DqMode::Deterministic)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (input, cfg, fwd, d_o);
        Err(cuda_unavailable("backward"))
    }
}

/// Forward pass of partially forgetting attention.
pub fn forward(input: &AttentionInput, cfg: &AttentionConfig, backend: Backend) -> Result<Forward> {
    check_forward_input(input, cfg)?;
    // The kernel backends round to the precision themselves (they read the
    // 16-bit words), and a request for CUDA fails even for an empty call.
    match backend {
        Backend::Cuda => return cuda_forward(input, cfg),
        Backend::Emulated => return kernels::emulated::forward(input, cfg),
        _ => {}
    }
    let s = input.shape;
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Forward::empty(s, cfg));
    }
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    match backend {
        Backend::Reference => Ok(reference::forward(input, cfg)),
        Backend::Cpu => Ok(fast::forward(input, cfg)),
        Backend::Unfused => Ok(unfused::forward(input, cfg)),
        Backend::Cuda | Backend::Emulated => unreachable!("dispatched above"),
    }
}

/// What every backend's forward checks (SPEC section 6): the options, the
/// input's shapes and values, and its values within the call's precision.
pub fn check_forward_input(input: &AttentionInput, cfg: &AttentionConfig) -> Result<()> {
    cfg.validate()?;
    input.validate()?;
    input.check_precision(cfg.precision)
}

/// What every backend's backward checks (SPEC section 6): the forward's
/// checks, and O, lse and dO of the call's shape, dO finite.
pub fn check_backward_input(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
) -> Result<()> {
    check_forward_input(input, cfg)?;
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
    check_finite("dO", d_o)
}

/// Backward pass: the gradients of a scalar loss with respect to Q, K and V,
/// given its gradient `d_o` with respect to the output of `fwd`.
pub fn backward(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    fwd: &Forward,
    d_o: &[f32],
    backend: Backend,
) -> Result<Grads> {
    check_backward_input(input, cfg, fwd, d_o)?;
    let s = input.shape;
    match backend {
        Backend::Cuda => return cuda_backward(input, cfg, fwd, d_o),
        Backend::Emulated => {
            let mode = kernels::backward::DqMode::Deterministic;
            return kernels::emulated::backward(input, cfg, fwd, d_o, mode);
        }
        _ => {}
    }
    if s.n_q == 0 || s.n_k == 0 {
        return Ok(Grads::zeros(s));
    }
    let rounded = RoundedInput::new(input, cfg.precision);
    let input = &rounded.as_ref().map_or(*input, |r| r.input(input));
    match backend {
        Backend::Reference => Ok(reference::backward(input, cfg, fwd, d_o)),
        Backend::Cpu => Ok(fast::backward(input, cfg, fwd, d_o)),
        Backend::Unfused => Ok(unfused::backward(input, cfg, fwd, d_o)),
        Backend::Cuda | Backend::Emulated => unreachable!("dispatched above"),
    }
}

/// What a forward call keeps for its own backward beyond [`Forward`]: on
/// the CUDA backend, its tensors left on the device (Q, K, V in the call's
/// precision, the mask, O and lse), so that [`backward_saved`] uploads only
/// dO. Empty on the other backends.
#[derive(Default)]
pub struct Saved {
    #[cfg(feature = "cuda")]
    device: Option<kernels::cuda::DeviceCall>,
}

impl Saved {
    /// Whether the call's tensors are held on the device.
    pub fn on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.device.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }
}

/// [`forward`], also returning what the call's backward reuses.
pub fn forward_saving(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    backend: Backend,
) -> Result<(Forward, Saved)> {
    #[cfg(feature = "cuda")]
    if backend == Backend::Cuda {
        let (fwd, device) = kernels::cuda::forward_resident(input, cfg)?;
        return Ok((fwd, Saved { device }));
    }
    Ok((forward(input, cfg, backend)?, Saved::default()))
}

/// [`backward`] of a call made by [`forward_saving`] with the same input,
/// options and backend, on the tensors it saved where it saved any.
pub fn backward_saved(
    input: &AttentionInput,
    cfg: &AttentionConfig,
    (fwd, saved): (&Forward, &Saved),
    d_o: &[f32],
    backend: Backend,
) -> Result<Grads> {
    #[cfg(feature = "cuda")]
    if backend == Backend::Cuda
        && let Some(call) = &saved.device
    {
        let mode = kernels::backward::DqMode::Deterministic;
        return kernels::cuda::backward_resident(call, input, cfg, fwd, d_o, mode);
    }
    let _ = saved;
    backward(input, cfg, fwd, d_o, backend)
}
