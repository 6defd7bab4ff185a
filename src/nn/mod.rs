//! Layers: parameters registered under timm's names in a [`ParamStore`], and
//! a forward pass on a [`Tape`]. Layers hold only parameter handles; every
//! value lives in the store or on the tape.
//!
//! Initialization follows timm's vision transformer: linear weights from a
//! normal with std 0.02 truncated to [-2, 2], zero biases, LayerNorm weight 1
//! and bias 0.

mod attention;
pub mod hopfield;
mod init;

pub use attention::SelfAttention;
pub use hopfield::{Hopfield, HopfieldConfig, HopfieldLayer, HopfieldPooling};
pub use init::{InitRng, normal, trunc_normal, uniform};

use crate::autograd::{ParamId, ParamStore, Tape, Tensor, Var};
use crate::error::{Error, Result};

/// `y = x W^T + b` with W `[out, in]`.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    /// Registers `{name}.weight` (truncated normal, std 0.02) and, with
    /// `bias`, `{name}.bias` (zeros).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        n_in: usize,
        n_out: usize,
        bias: bool,
        rng: &mut InitRng,
    ) -> Result<Linear> {
        let w = trunc_normal(rng, &[n_out, n_in], 0.02);
        let weight = store.add(&format!("{name}.weight"), w, true)?;
        let bias = if bias {
            Some(store.add(&format!("{name}.bias"), Tensor::zeros(&[n_out]), false)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let w = tape.param(self.weight);
        let b = self.bias.map(|b| tape.param(b));
        tape.linear(x, w, b)
    }
}

/// A 1-d convolution over ragged channels-last sequences (see
/// [`Tape::conv1d`]): weight `[C_out, width, C_in]`, bias `[C_out]`.
#[derive(Clone, Copy, Debug)]
pub struct Conv1d {
    pub w: ParamId,
    pub b: ParamId,
    pub width: usize,
}

impl Conv1d {
    /// Registers `{name}.weight` and `{name}.bias` with DeepRC's init: weights
    /// N(0, 1 / numel(weight)), biases uniform on +-1 / sqrt(width * c_in).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        width: usize,
        rng: &mut InitRng,
    ) -> Result<Conv1d> {
        if c_in == 0 || c_out == 0 || width == 0 {
            return Err(Error::InvalidConfig {
                what: format!("conv1d {name}: {c_in} -> {c_out} channels, width {width}"),
            });
        }
        let numel = c_out * width * c_in;
        let weight = normal(rng, &[c_out, width, c_in], (1.0 / numel as f64).sqrt() as f32);
        let bias = uniform(rng, &[c_out], (1.0 / ((width * c_in) as f64).sqrt()) as f32);
        Ok(Conv1d {
            w: store.add(&format!("{name}.weight"), weight, true)?,
            b: store.add(&format!("{name}.bias"), bias, false)?,
            width,
        })
    }

    /// x `[S, L, C_in]` with `lengths[s]` in `1..=L`; returns `[S, P, C_out]`
    /// and the valid windows per sequence.
    pub fn forward(&self, tape: &mut Tape, x: Var, lengths: &[usize]) -> Result<(Var, Vec<usize>)> {
        let (w, b) = (tape.param(self.w), tape.param(self.b));
        tape.conv1d(x, w, Some(b), lengths)
    }
}

/// Layer normalization over the last dimension.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub weight: ParamId,
    pub bias: ParamId,
    pub eps: f32,
}

impl LayerNorm {
    /// Registers `{name}.weight` (ones) and `{name}.bias` (zeros).
    pub fn new(store: &mut ParamStore, name: &str, width: usize, eps: f32) -> Result<LayerNorm> {
        let weight = store.add(&format!("{name}.weight"), Tensor::full(&[width], 1.0), false)?;
        let bias = store.add(&format!("{name}.bias"), Tensor::zeros(&[width]), false)?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.layer_norm(x, w, b, self.eps)
    }
}

/// The transformer's feed-forward part: `fc2(dropout(gelu(fc1(x))))`.
#[derive(Clone, Copy, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub drop: f32,
}

impl Mlp {
    /// Registers `{name}.fc1.*` (`width -> hidden`) and `{name}.fc2.*`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        width: usize,
        hidden: usize,
        drop: f32,
        rng: &mut InitRng,
    ) -> Result<Mlp> {
        Ok(Mlp {
            fc1: Linear::new(store, &format!("{name}.fc1"), width, hidden, true, rng)?,
            fc2: Linear::new(store, &format!("{name}.fc2"), hidden, width, true, rng)?,
            drop,
        })
    }

    /// `seed` drives the dropout masks (used only when `training`).
    pub fn forward(&self, tape: &mut Tape, x: Var, training: bool, seed: u64) -> Result<Var> {
        let p = if training { self.drop } else { 0.0 };
        let h = self.fc1.forward(tape, x)?;
        let h = tape.gelu(h)?;
        let h = tape.dropout(h, p, seed)?;
        self.fc2.forward(tape, h)
    }
}
