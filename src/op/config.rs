//! The forgetting function's options (SPEC sections 1 and 2) and their checks.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the threshold of the partial forgetting unit is centred.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Center {
    /// The lower median of all valid scores of the call, found exactly.
    Median,
    /// A fixed number.
    Fixed(f32),
}

/// What a forgotten score is replaced by.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Bias {
    /// The threshold itself, `b = z` (the authors' choice).
    Threshold,
    /// A fixed value.
    Fixed(f32),
    /// Minus infinity: forgotten entries vanish from the normalizer too.
    NegInf,
}

/// Options of the partial forgetting unit (`pfu`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pfu {
    /// Centre `m` of the threshold.
    pub center: Center,
    /// Standard deviation of the training-time noise: `z = m + noise_std * eps`.
    pub noise_std: f32,
    /// Value of a forgotten entry.
    pub bias: Bias,
    /// Whether the gradient reaching `b` flows on into the median (only with
    /// `Center::Median` and `Bias::Threshold`; see SPEC section 2).
    pub center_gradient: bool,
}

impl Pfu {
    /// Preset for the bit-pattern and immune-repertoire experiments: median
    /// centre, noise std 1e-4 (the authors' code squares the paper's 0.01), `b = z`.
    pub fn median_preset() -> Self {
        Pfu {
            center: Center::Median,
            noise_std: 1e-4,
            bias: Bias::Threshold,
            center_gradient: true,
        }
    }

    /// Preset for the vision transformers: centre 0, noise std 1, bias 0.
    pub fn vision_preset() -> Self {
        Pfu {
            center: Center::Fixed(0.0),
            noise_std: 1.0,
            bias: Bias::Fixed(0.0),
            center_gradient: false,
        }
    }
}

/// The forgetting function applied to every score before the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Forgetting {
    /// Plain attention: nothing is forgotten.
    None,
    /// `z = 0`, `b = 0`.
    Relu,
    /// The partial forgetting unit.
    Pfu(Pfu),
}

impl Forgetting {
    /// Short name used in logs and file names (`none`, `relu`, `pfu`).
    pub fn name(&self) -> &'static str {
        match self {
            Forgetting::None => "none",
            Forgetting::Relu => "relu",
            Forgetting::Pfu(_) => "pfu",
        }
    }

    /// Whether the call needs the median of its scores.
    pub fn needs_median(&self) -> bool {
        matches!(self, Forgetting::Pfu(Pfu { center: Center::Median, .. }))
    }
}

/// The number format Q, K and V are held in for the call. Every backend
/// rounds them to it (to nearest, ties to even) before any arithmetic, so
/// all backends see the same inputs; scores, softmax statistics, outputs and
/// gradients stay f32 (f64 in the reference). Gradients are those of the
/// rounded inputs, passed to the f32 ones unchanged.
///
/// The CUDA kernels read bf16 and fp16 inputs as 16-bit words (half the
/// bytes of f32) and form their scores on tensor cores; f32 inputs keep
/// exact f32 scores on the CUDA cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// Every precision, f32 first.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// `x` rounded to this precision, as an f32 (exactly representable).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// The 16-bit word of `x` rounded to this precision (`None` for f32).
    #[inline]
    pub fn bits(self, x: f32) -> Option<u16> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(half::bf16::from_f32(x).to_bits()),
            Precision::F16 => Some(half::f16::from_f32(x).to_bits()),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision {s:?} (f32, bf16 or f16)"))
    }
}

/// Everything about one call of the op except its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    /// Score scale; `None` means `1 / sqrt(D)`.
    pub beta: Option<f32>,
    /// The forgetting function.
    pub forgetting: Forgetting,
    /// Remove forgotten entries from the numerator of the retrieval (the
    /// paper's indicator). With `false` they stay there with weight `exp(b)`.
    pub drop_forgotten: bool,
    /// Attention dropout probability, used only when `training`.
    pub dropout: f32,
    /// Seeds the threshold draw and the dropout mask.
    pub seed: u64,
    /// Training mode: stochastic threshold and dropout.
    pub training: bool,
    /// The number format of Q, K and V (configurations saved before it
    /// existed read as f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig {
            beta: None,
            forgetting: Forgetting::None,
            drop_forgotten: true,
            dropout: 0.0,
            seed: 0,
            training: false,
            precision: Precision::F32,
        }
    }
}

impl AttentionConfig {
    /// Plain attention with the given forgetting function and defaults elsewhere.
    pub fn with_forgetting(forgetting: Forgetting) -> Self {
        AttentionConfig { forgetting, ..Default::default() }
    }

    /// The score scale for head dimension `d`.
    pub fn beta_for(&self, d: usize) -> f32 {
        self.beta.unwrap_or(1.0 / (d as f32).sqrt())
    }

    /// The dropout probability in effect (0 outside training).
    pub fn effective_dropout(&self) -> f32 {
        if self.training { self.dropout } else { 0.0 }
    }

    /// Checks every scalar option (SPEC section 6).
    pub fn validate(&self) -> Result<()> {
        if let Some(beta) = self.beta
            && !(beta.is_finite() && beta > 0.0)
        {
            return Err(Error::InvalidOption {
                name: "beta",
                value: beta.to_string(),
                reason: "must be finite and > 0",
            });
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(Error::InvalidOption {
                name: "dropout",
                value: self.dropout.to_string(),
                reason: "must lie in [0, 1)",
            });
        }
        if let Forgetting::Pfu(pfu) = self.forgetting {
            if !(pfu.noise_std.is_finite() && pfu.noise_std >= 0.0) {
                return Err(Error::InvalidOption {
                    name: "noise_std",
                    value: pfu.noise_std.to_string(),
                    reason: "must be finite and >= 0",
                });
            }
            if let Center::Fixed(c) = pfu.center
                && !c.is_finite()
            {
                return Err(Error::InvalidOption {
                    name: "center",
                    value: c.to_string(),
                    reason: "a fixed center must be finite",
                });
            }
            if let Bias::Fixed(b) = pfu.bias
                && !b.is_finite()
            {
                return Err(Error::InvalidOption {
                    name: "bias",
                    value: b.to_string(),
                    reason: "a fixed bias must be finite (use Bias::NegInf for -inf)",
                });
            }
        }
        Ok(())
    }
}
