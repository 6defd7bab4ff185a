//! The six bit-pattern networks of the paper's section 4.1 (MODELS.md 1.5):
//! a Hopfield layer of each kind, in hopfield-layers' default and adapted
//! settings, followed by a linear head to one logit per bag.
//!
//! | network | layer | head |
//! | --- | --- | --- |
//! | hopfield, default | `Hopfield(8)`, self-association | flatten, Linear(16 * 8, 1) |
//! | hopfield, adapted | 8 heads of 8, 3 update steps, beta 0.25, dropout 0.5 | same |
//! | pooling, default | `HopfieldPooling(8)`, one query | Linear(8, 1) |
//! | pooling, adapted | as hopfield, adapted | Linear(8, 1) |
//! | lookup, default | `HopfieldLayer(8, 255 lookup patterns)` | flatten, Linear(16 * 8, 1) |
//! | lookup, adapted | lookup patterns = the distinct training instances, separated frozen random targets | same |
//!
//! Every trainable parameter takes weight decay (the reference optimizes all
//! of `model.parameters()` with AdamW).

use serde::{Deserialize, Serialize};

use crate::autograd::{ParamId, ParamStore, Tape, Tensor, Var};
use crate::error::{Error, Result};
use crate::nn::hopfield::{HopfieldConfig, HopfieldOutput};
use crate::nn::{Hopfield, HopfieldLayer, HopfieldPooling, InitRng, uniform};
use crate::op::Forgetting;

/// Which Hopfield layer the network is built around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    Hopfield,
    Pooling,
    Lookup,
}

/// hopfield-layers' default options, or the demo's adapted ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    Default,
    Adapted,
}

impl NetKind {
    pub const ALL: [NetKind; 3] = [NetKind::Hopfield, NetKind::Pooling, NetKind::Lookup];

    pub fn name(&self) -> &'static str {
        match self {
            NetKind::Hopfield => "hopfield",
            NetKind::Pooling => "pooling",
            NetKind::Lookup => "lookup",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            NetKind::Hopfield => "Hopfield",
            NetKind::Pooling => "HopfieldPooling",
            NetKind::Lookup => "HopfieldLayer",
        }
    }
}

impl Setting {
    pub const ALL: [Setting; 2] = [Setting::Default, Setting::Adapted];

    pub fn name(&self) -> &'static str {
        match self {
            Setting::Default => "default",
            Setting::Adapted => "adapted",
        }
    }
}

/// Sizes of the input bags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BagShape {
    pub instances: usize,
    pub bits: usize,
}

#[derive(Clone, Copy, Debug)]
enum Layer {
    Hopfield(Hopfield),
    Pooling(HopfieldPooling),
    Lookup(HopfieldLayer),
}

/// One of the six networks: parameter handles into a [`ParamStore`].
#[derive(Clone, Copy, Debug)]
pub struct BitPatternNet {
    pub kind: NetKind,
    pub setting: Setting,
    pub bag: BagShape,
    layer: Layer,
    pub head_weight: ParamId,
    pub head_bias: ParamId,
}

/// The adapted settings' layer options (hopfield-layers' demo).
fn adapted(config: &mut HopfieldConfig) {
    config.heads = 8;
    config.head_dim = Some(8);
    config.update_steps_max = 3;
    config.beta = Some(0.25);
    config.dropout = 0.5;
}

impl BitPatternNet {
    /// Builds the network. `lookup_init` is needed by the adapted lookup
    /// network only: the lookup patterns `[quantity, bits]` (the distinct
    /// training instances).
    pub fn new(
        store: &mut ParamStore,
        kind: NetKind,
        setting: Setting,
        forgetting: Forgetting,
        bag: BagShape,
        lookup_init: Option<Tensor>,
        rng: &mut InitRng,
    ) -> Result<BitPatternNet> {
        let mut config = HopfieldConfig::new(bag.bits);
        config.forgetting = forgetting;
        let (layer, features) = match (kind, setting) {
            (NetKind::Hopfield, s) => {
                if s == Setting::Adapted {
                    adapted(&mut config);
                }
                let h = Hopfield::new(store, "hopfield", config, rng)?;
                (Layer::Hopfield(h), bag.instances * config.dims().output)
            }
            (NetKind::Pooling, s) => {
                if s == Setting::Adapted {
                    adapted(&mut config);
                }
                let p = HopfieldPooling::new(store, "pooling", config, 1, rng)?;
                (Layer::Pooling(p), config.dims().output)
            }
            (NetKind::Lookup, Setting::Default) => {
                let quantity = (1usize << bag.bits) - 1;
                let l = HopfieldLayer::new(store, "lookup", config, quantity, false, false, rng)?;
                (Layer::Lookup(l), bag.instances * config.dims().output)
            }
            (NetKind::Lookup, Setting::Adapted) => {
                let init = lookup_init.ok_or_else(|| Error::InvalidConfig {
                    what: "the adapted lookup network needs its lookup patterns".into(),
                })?;
                match init.shape() {
                    &[q, w] if q > 0 && w == bag.bits => {}
                    s => {
                        return Err(Error::InvalidConfig {
                            what: format!(
                                "lookup patterns of shape {s:?} for {}-bit bags",
                                bag.bits
                            ),
                        });
                    }
                }
                let quantity = init.shape()[0];
                let l = HopfieldLayer::new(store, "lookup", config, quantity, true, false, rng)?;
                store.get_mut(l.lookup).value = init;
                (Layer::Lookup(l), bag.instances * config.dims().output)
            }
        };

        // PyTorch's Linear init: uniform(+-1 / sqrt(fan_in)) for both.
        let bound = 1.0 / (features as f32).sqrt();
        let head_weight = store.add("head.weight", uniform(rng, &[1, features], bound), true)?;
        let head_bias = store.add("head.bias", uniform(rng, &[1], bound), true)?;

        // Weight decay on every trainable parameter; frozen targets stay out.
        let frozen = match layer {
            Layer::Lookup(l) => l.targets.filter(|t| !t.trainable).map(|t| t.id),
            _ => None,
        };
        let ids: Vec<ParamId> = store.iter().map(|(id, _)| id).collect();
        for id in ids {
            store.get_mut(id).weight_decay = Some(id) != frozen;
        }
        Ok(BitPatternNet { kind, setting, bag, layer, head_weight, head_bias })
    }

    /// bags `[B, instances, bits]` -> one logit per bag `[B]`, and what the
    /// Hopfield layer's calls of the op saw.
    pub fn forward(
        &self,
        tape: &mut Tape,
        bags: Var,
        training: bool,
        seed: u64,
    ) -> Result<(Var, HopfieldOutput)> {
        let b = tape.shape(bags)[0];
        let out = match self.layer {
            Layer::Hopfield(h) => h.forward(tape, bags, training, seed)?,
            Layer::Pooling(p) => p.forward(tape, bags, None, training, seed)?,
            Layer::Lookup(l) => l.forward(tape, bags, training, seed)?,
        };
        let n = tape.value(out.out).numel() / b.max(1);
        let flat = tape.reshape(out.out, &[b, n])?;
        let (w, bias) = (tape.param(self.head_weight), tape.param(self.head_bias));
        let logits = tape.linear(flat, w, Some(bias))?;
        let logits = tape.reshape(logits, &[b])?;
        Ok((logits, out))
    }
}
