//! DeepRC (MODELS.md 2.2): a repertoire is a bag of CDR3 sequences; each
//! sequence is embedded by a 1-D convolution, and one learned query attends
//! over the bag with partially forgetting attention to pool the embeddings
//! into one vector, from which a linear layer predicts the bag's label.
//!
//! | step | shape |
//! | --- | --- |
//! | encoded sequences, channels last | `[S, L, 23]` (S = every sequence of the minibatch) |
//! | Conv1d(23 -> n_k, width n_c) + SELU, max over valid windows | `z [S, n_k]` |
//! | keys: Linear(n_k -> 32) + SELU, Linear(32 -> 32) + SELU | `[S, 32]` |
//! | bags padded, with a key padding mask | `K [B, 1, N_max, 32]`, `V = z [B, 1, N_max, n_k]` |
//! | one learned query, beta 1 (folded into the query) | `q [B, 1, 1, 32]` |
//! | attention pooling, softmax within each bag | `[B, n_k]` |
//! | Linear(n_k -> 1) | one logit per bag |
//!
//! The query is the weight of DeepRC's last attention layer, Linear(32 -> 1);
//! its bias would add one constant to every logit of every bag, which the
//! softmax ignores, so it is left out. With a forgetting function that is no
//! longer true (`relu` forgets logits below 0), and the model has to move its
//! logits across the threshold through the keys instead.
//!
//! Initialization is DeepRC's: every weight from `N(0, 1/numel(weight))`, every
//! bias uniform on `+-1/sqrt(fan_in)`.

use serde::{Deserialize, Serialize};

use crate::autograd::{ParamId, ParamStore, Tape, Tensor, Var};
use crate::data::repertoire::MAX_LEN;
use crate::error::{Error, Result};
use crate::nn::{Conv1d, InitRng, Linear, normal, uniform};
use crate::op::{AttentionConfig, Backend, Forgetting};

pub use crate::data::repertoire::CHANNELS;

/// Width of the attention network (DeepRC's default).
pub const ATTENTION_WIDTH: usize = 32;

/// The network's sizes and its forgetting function.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeepRcConfig {
    /// Convolution kernels `n_k` (the embedding width).
    pub kernels: usize,
    /// Kernel width `n_c`, in sequence positions.
    pub width: usize,
    /// Forgetting function on the attention logits of the whole minibatch.
    pub forgetting: Forgetting,
}

impl DeepRcConfig {
    pub fn validate(&self) -> Result<()> {
        // No sequence is longer than the readers' cap, so the weights of a
        // wider kernel past it would never meet a residue.
        if self.kernels == 0 || self.width == 0 || self.width > MAX_LEN {
            return Err(Error::InvalidConfig {
                what: format!(
                    "DeepRC needs at least one kernel and a width in 1..={MAX_LEN}, got {} \
                     kernels of width {}",
                    self.kernels, self.width
                ),
            });
        }
        Ok(())
    }
}

/// A minibatch of bags: the selected sequences of every bag, encoded and
/// stacked bag after bag.
#[derive(Clone, Debug)]
pub struct BagBatch {
    /// `[S, L, 23]`, channels last, zero past each sequence's end.
    pub x: Tensor,
    /// Length of each of the S sequences.
    pub lengths: Vec<usize>,
    /// Sequences per bag, in order; they sum to S.
    pub bag_sizes: Vec<usize>,
}

/// What one forward pass returns.
pub struct DeepRcOutput {
    /// One logit per bag, `[B]`.
    pub logits: Var,
}

/// DeepRC's parameters (handles into a [`ParamStore`]).
#[derive(Clone, Copy, Debug)]
pub struct DeepRc {
    pub cfg: DeepRcConfig,
    pub conv: Conv1d,
    pub key1: Linear,
    pub key2: Linear,
    /// The learned query `[32]`.
    pub query: ParamId,
    pub out: Linear,
}

/// A weight from `N(0, 1/numel)` and a bias uniform on `+-1/sqrt(fan_in)`.
fn deeprc_linear(
    store: &mut ParamStore,
    name: &str,
    n_in: usize,
    n_out: usize,
    rng: &mut InitRng,
) -> Result<Linear> {
    let std = (1.0 / (n_in * n_out) as f64).sqrt() as f32;
    let weight = store.add(&format!("{name}.weight"), normal(rng, &[n_out, n_in], std), false)?;
    let bound = 1.0 / (n_in as f32).sqrt();
    let bias = store.add(&format!("{name}.bias"), uniform(rng, &[n_out], bound), false)?;
    Ok(Linear { weight, bias: Some(bias) })
}

impl DeepRc {
    /// Registers every parameter in `store`, initialized from `seed`.
    pub fn new(store: &mut ParamStore, cfg: DeepRcConfig, seed: u64) -> Result<DeepRc> {
        cfg.validate()?;
        let rng = &mut InitRng::new(seed);
        let conv = Conv1d::new(store, "embedding.conv", CHANNELS, cfg.kernels, cfg.width, rng)?;
        let key1 = deeprc_linear(store, "attention.fc1", cfg.kernels, ATTENTION_WIDTH, rng)?;
        let key2 = deeprc_linear(store, "attention.fc2", ATTENTION_WIDTH, ATTENTION_WIDTH, rng)?;
        let std = (1.0 / ATTENTION_WIDTH as f64).sqrt() as f32;
        let query = store.add("attention.query", normal(rng, &[ATTENTION_WIDTH], std), false)?;
        let out = deeprc_linear(store, "output", cfg.kernels, 1, rng)?;
        Ok(DeepRc { cfg, conv, key1, key2, query, out })
    }

    /// Sequence embeddings `z [S, n_k]` and keys `[S, 32]` of `x [S, L, 23]`.
    fn embed_and_keys(&self, tape: &mut Tape, x: Var, lengths: &[usize]) -> Result<(Var, Var)> {
        // SELU is strictly increasing, so max(selu(h)) = selu(max(h)): taking
        // the max first gives the same embedding (and gradient, but at exact
        // ties) while SELU runs on [S, n_k] instead of [S, P, n_k].
        let (h, windows) = self.conv.forward(tape, x, lengths)?;
        let h = tape.max_positions(h, &windows)?;
        let z = tape.selu(h)?;
        let k = self.key1.forward(tape, z)?;
        let k = tape.selu(k)?;
        let k = self.key2.forward(tape, k)?;
        let k = tape.selu(k)?;
        Ok((z, k))
    }

    /// The attention logit of every sequence of `x [S, L, 23]`, without
    /// gradient: what the top-10% reduction ranks by. The caller chunks long
    /// bags, so memory stays proportional to the chunk.
    pub fn attention_logits(
        &self,
        store: &ParamStore,
        x: Tensor,
        lengths: &[usize],
    ) -> Result<Vec<f32>> {
        let mut tape = Tape::inference(store);
        let x = tape.input(x);
        let (_, k) = self.embed_and_keys(&mut tape, x, lengths)?;
        let q = store.value(self.query).data();
        let keys = tape.value(k).data();
        Ok(keys
            .chunks(ATTENTION_WIDTH)
            .map(|k| k.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect())
    }

    /// The bag logits of `batch`, with the model's forgetting function applied
    /// to the attention logits of the whole minibatch (one op call, so one
    /// median). `attention` gives the mode and the seed of the threshold draw;
    /// its own forgetting function and beta are ignored.
    pub fn forward(
        &self,
        tape: &mut Tape,
        batch: &BagBatch,
        attention: &AttentionConfig,
    ) -> Result<DeepRcOutput> {
        let bags = batch.bag_sizes.len();
        let x = tape.input(batch.x.clone());
        let (z, k) = self.embed_and_keys(tape, x, &batch.lengths)?;

        let (k, valid) = tape.pad_bags(k, &batch.bag_sizes)?;
        let (v, _) = tape.pad_bags(z, &batch.bag_sizes)?;
        let n_max = tape.shape(k)[1];
        let k = tape.reshape(k, &[bags, 1, n_max, ATTENTION_WIDTH])?;
        let v = tape.reshape(v, &[bags, 1, n_max, self.cfg.kernels])?;
        let zeros = tape.input(Tensor::zeros(&[bags, 1, 1, ATTENTION_WIDTH]));
        let query = tape.param(self.query);
        let q = tape.add_broadcast(zeros, query)?;

        let cfg =
            AttentionConfig { beta: Some(1.0), forgetting: self.cfg.forgetting, ..*attention };
        let pooled = tape.attention((q, k, v), Some(&valid), &cfg, Backend::Cpu)?;
        let pooled = tape.reshape(pooled, &[bags, self.cfg.kernels])?;
        let logits = self.out.forward(tape, pooled)?;
        let logits = tape.reshape(logits, &[bags])?;
        Ok(DeepRcOutput { logits })
    }
}
