//! Multi-head self-attention with partially forgetting attention at its core.

use super::{InitRng, Linear};
use crate::autograd::{ParamStore, Tape, Var};
use crate::error::{Error, Result};
use crate::op::{AttentionConfig, Backend, Forgetting, Precision};

/// timm's `Attention`: a fused `qkv` linear map, the attention op per head,
/// and an output projection `proj`. Scores are scaled by `1 / sqrt(head_dim)`
/// and pass through the forgetting function before the softmax.
#[derive(Clone, Copy, Debug)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    pub width: usize,
    pub forgetting: Forgetting,
    /// Dropout on the attention weights (the op's dropout).
    pub attn_drop: f32,
}

impl SelfAttention {
    /// Registers `{name}.qkv.*` (`[3 width, width]`) and `{name}.proj.*`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        width: usize,
        heads: usize,
        forgetting: Forgetting,
        attn_drop: f32,
        rng: &mut InitRng,
    ) -> Result<SelfAttention> {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::InvalidConfig {
                what: format!("width {width} does not split into {heads} heads"),
            });
        }
        Ok(SelfAttention {
            qkv: Linear::new(store, &format!("{name}.qkv"), width, 3 * width, true, rng)?,
            proj: Linear::new(store, &format!("{name}.proj"), width, width, true, rng)?,
            heads,
            width,
            forgetting,
            attn_drop,
        })
    }

    /// x `[B, N, E]` -> `[B, N, E]`. `seed` drives the op's threshold draw and
    /// dropout mask; a fresh one per call.
    pub fn forward(&self, tape: &mut Tape, x: Var, training: bool, seed: u64) -> Result<Var> {
        let shape = tape.shape(x).to_vec();
        let (b, n) = match shape[..] {
            [b, n, e] if e == self.width => (b, n),
            _ => {
                return Err(Error::OpShape {
                    op: "self-attention",
                    what: format!("input {shape:?} for width {}", self.width),
                });
            }
        };
        let (h, dh) = (self.heads, self.width / self.heads);

        // [B, N, 3E] -> [B, N, 3, H, Dh] -> [3, B, H, N, Dh] -> Q, K, V [B, H, N, Dh].
        let qkv = self.qkv.forward(tape, x)?;
        let qkv = tape.reshape(qkv, &[b, n, 3, h, dh])?;
        let qkv = tape.permute(qkv, &[2, 0, 3, 1, 4])?;
        let (q, k, v) = (tape.select(qkv, 0)?, tape.select(qkv, 1)?, tape.select(qkv, 2)?);

        let cfg = AttentionConfig {
            beta: None,
            forgetting: self.forgetting,
            drop_forgotten: true,
            dropout: self.attn_drop,
            seed,
            training,
            precision: Precision::F32,
        };
        let o = tape.attention((q, k, v), None, &cfg, Backend::Cpu)?;

        // [B, H, N, Dh] -> [B, N, H, Dh] -> [B, N, E].
        let o = tape.permute(o, &[0, 2, 1, 3])?;
        let o = tape.reshape(o, &[b, n, self.width])?;
        self.proj.forward(tape, o)
    }
}
