//! The DeiT vision transformer (timm's `VisionTransformer`) with partially
//! forgetting attention in every block.
//!
//! Patch embedding (a conv with kernel = stride = patch, done as a linear map
//! of each flattened patch), a class token, learned position embeddings, then
//! `depth` pre-norm blocks `x += attn(norm1(x)); x += mlp(norm2(x))`, a final
//! LayerNorm and a linear head on the class token. Parameter names and shapes
//! are timm's, so a timm checkpoint saved as safetensors loads directly.
//!
//! Not included: stochastic depth (drop path) and the distillation token.

use serde::{Deserialize, Serialize};

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{InitRng, LayerNorm, Linear, Mlp, SelfAttention, trunc_normal, uniform};
use crate::op::Forgetting;

/// The sizes and options of a vision transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub name: String,
    pub img_size: usize,
    pub patch: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed: usize,
    pub depth: usize,
    pub heads: usize,
    /// MLP hidden width as a multiple of `embed`.
    pub mlp_ratio: usize,
    /// Dropout after the position embedding, in the MLP and after each
    /// residual branch (timm's `drop_rate`).
    pub drop: f32,
    /// Dropout on the attention weights (timm's `attn_drop_rate`).
    pub attn_drop: f32,
    pub forgetting: Forgetting,
    /// LayerNorm epsilon (timm's ViT uses 1e-6).
    pub eps: f32,
}

impl VitConfig {
    fn base(name: &str, embed: usize, heads: usize, depth: usize) -> VitConfig {
        VitConfig {
            name: name.to_string(),
            img_size: 224,
            patch: 16,
            in_chans: 3,
            num_classes: 1000,
            embed,
            depth,
            heads,
            mlp_ratio: 4,
            drop: 0.0,
            attn_drop: 0.0,
            forgetting: Forgetting::None,
            eps: 1e-6,
        }
    }

    /// `deit_tiny_patch16_224`.
    pub fn deit_tiny() -> VitConfig {
        VitConfig::base("deit-tiny", 192, 3, 12)
    }

    /// `deit_small_patch16_224`.
    pub fn deit_small() -> VitConfig {
        VitConfig::base("deit-small", 384, 6, 12)
    }

    /// `deit_base_patch16_224`.
    pub fn deit_base() -> VitConfig {
        VitConfig::base("deit-base", 768, 12, 12)
    }

    /// The small configuration that trains on CIFAR on two CPU cores in
    /// minutes: 32 x 32 input, patch 4 (64 patches and the class token).
    pub fn cpu_small() -> VitConfig {
        VitConfig {
            img_size: 32,
            patch: 4,
            num_classes: 10,
            ..VitConfig::base("cpu-small", 96, 3, 4)
        }
    }

    /// The configurations by name: `cpu-small`, `deit-tiny`, `deit-small`,
    /// `deit-base`.
    pub fn by_name(name: &str) -> Result<VitConfig> {
        match name {
            "cpu-small" => Ok(VitConfig::cpu_small()),
            "deit-tiny" => Ok(VitConfig::deit_tiny()),
            "deit-small" => Ok(VitConfig::deit_small()),
            "deit-base" => Ok(VitConfig::deit_base()),
            _ => Err(Error::InvalidConfig {
                what: format!(
                    "unknown model {name:?} (known: cpu-small, deit-tiny, deit-small, deit-base)"
                ),
            }),
        }
    }

    /// Patches per image.
    pub fn patches(&self) -> usize {
        (self.img_size / self.patch.max(1)).pow(2)
    }

    /// Tokens per image: the patches and the class token.
    pub fn tokens(&self) -> usize {
        self.patches() + 1
    }

    pub fn head_dim(&self) -> usize {
        self.embed / self.heads.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        if self.patch == 0 || self.img_size == 0 || !self.img_size.is_multiple_of(self.patch) {
            return bad(format!("patch {} does not tile {} px images", self.patch, self.img_size));
        }
        if self.heads == 0 || self.embed == 0 || !self.embed.is_multiple_of(self.heads) {
            return bad(format!("embed {} does not split into {} heads", self.embed, self.heads));
        }
        if self.depth == 0 || self.num_classes == 0 || self.in_chans == 0 || self.mlp_ratio == 0 {
            return bad("depth, classes, channels and mlp ratio must be positive".into());
        }
        for (name, p) in [("drop", self.drop), ("attn_drop", self.attn_drop)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} {p} outside [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("LayerNorm eps {}", self.eps));
        }
        Ok(())
    }
}

/// One pre-norm transformer block.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: SelfAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// Dropout on each residual branch.
    pub drop: f32,
}

impl Block {
    fn forward(&self, tape: &mut Tape, x: Var, training: bool, seeds: LayerSeeds) -> Result<Var> {
        let p = if training { self.drop } else { 0.0 };
        let h = self.norm1.forward(tape, x)?;
        let h = self.attn.forward(tape, h, training, seeds.attention)?;
        let h = tape.dropout(h, p, seeds.attn_out)?;
        let x = tape.add(x, h)?;
        let h = self.norm2.forward(tape, x)?;
        let h = self.mlp.forward(tape, h, training, seeds.mlp_hidden)?;
        let h = tape.dropout(h, p, seeds.mlp_out)?;
        tape.add(x, h)
    }
}

/// The random streams of one block in one forward pass.
#[derive(Clone, Copy, Debug)]
struct LayerSeeds {
    attention: u64,
    attn_out: u64,
    mlp_hidden: u64,
    mlp_out: u64,
}

/// SplitMix64's finalizer: spreads nearby inputs over all 64 bits.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of random stream `stream` of layer `layer` in the forward pass
/// seeded `pass_seed` (see [`step_seed`]).
pub fn layer_seed(pass_seed: u64, layer: usize, stream: u64) -> u64 {
    mix(pass_seed ^ mix((layer as u64) << 8 | stream))
}

/// The seed of the forward pass of training step `step` of a run seeded
/// `run_seed`: every step, layer and stream gets its own.
pub fn step_seed(run_seed: u64, step: u64) -> u64 {
    mix(mix(run_seed) ^ step)
}

/// A vision transformer: parameter handles into a [`ParamStore`].
#[derive(Clone, Debug)]
pub struct Vit {
    pub config: VitConfig,
    pub cls_token: ParamId,
    pub pos_embed: ParamId,
    pub patch_embed: Linear,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
}

impl Vit {
    /// Registers the parameters of `config` in `store` (timm's names, in
    /// timm's order) and initializes them from `seed`: as timm, truncated
    /// normals (std 0.02) for the class token, position embedding and linear
    /// weights, zero linear biases, LayerNorm 1 and 0, and PyTorch's conv
    /// default for the patch embedding (timm leaves that conv as it is):
    /// uniform on +-1/sqrt(fan_in) for weight and bias.
    pub fn new(config: VitConfig, store: &mut ParamStore, seed: u64) -> Result<Vit> {
        config.validate()?;
        let mut rng = InitRng::new(seed);
        let (e, p, c) = (config.embed, config.patch, config.in_chans);
        let cls = trunc_normal(&mut rng, &[1, 1, e], 0.02);
        let cls_token = store.add("cls_token", cls, false)?;
        let pos = trunc_normal(&mut rng, &[1, config.tokens(), e], 0.02);
        let pos_embed = store.add("pos_embed", pos, false)?;

        let fan_in = c * p * p;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let w = uniform(&mut rng, &[e, c, p, p], bound);
        let weight = store.add("patch_embed.proj.weight", w, true)?;
        let b = uniform(&mut rng, &[e], bound);
        let bias = Some(store.add("patch_embed.proj.bias", b, false)?);
        let patch_embed = Linear { weight, bias };

        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let name = format!("blocks.{i}");
            let norm1 = LayerNorm::new(store, &format!("{name}.norm1"), e, config.eps)?;
            let attn = SelfAttention::new(
                store,
                &format!("{name}.attn"),
                e,
                config.heads,
                config.forgetting,
                config.attn_drop,
                &mut rng,
            )?;
            let norm2 = LayerNorm::new(store, &format!("{name}.norm2"), e, config.eps)?;
            let hidden = config.mlp_ratio * e;
            let mlp = Mlp::new(store, &format!("{name}.mlp"), e, hidden, config.drop, &mut rng)?;
            blocks.push(Block { norm1, attn, norm2, mlp, drop: config.drop });
        }
        let norm = LayerNorm::new(store, "norm", e, config.eps)?;
        let head = Linear::new(store, "head", e, config.num_classes, true, &mut rng)?;
        Ok(Vit { config, cls_token, pos_embed, patch_embed, blocks, norm, head })
    }

    /// Logits `[B, classes]` of images `[B, C, H, W]`. `training` selects the
    /// stochastic threshold and the dropouts; `seed` (see [`step_seed`]) seeds
    /// them, a different stream per layer.
    pub fn forward(&self, tape: &mut Tape, images: Var, training: bool, seed: u64) -> Result<Var> {
        let cfg = &self.config;
        let want = [cfg.in_chans, cfg.img_size, cfg.img_size];
        let got = tape.shape(images).to_vec();
        if got.len() != 4 || got[1..] != want {
            return Err(Error::OpShape {
                op: "vit",
                what: format!("images {got:?}, the model takes [B, {want:?}]"),
            });
        }
        let p = if training { cfg.drop } else { 0.0 };

        let x = tape.patchify(images, cfg.patch)?;
        let x = self.patch_embed.forward(tape, x)?;
        let cls = tape.param(self.cls_token);
        let x = tape.concat_cls(cls, x)?;
        let pos = tape.param(self.pos_embed);
        let x = tape.add_broadcast(x, pos)?;
        let mut x = tape.dropout(x, p, layer_seed(seed, cfg.depth, 0))?;

        for (i, block) in self.blocks.iter().enumerate() {
            let seeds = LayerSeeds {
                attention: layer_seed(seed, i, 0),
                attn_out: layer_seed(seed, i, 1),
                mlp_hidden: layer_seed(seed, i, 2),
                mlp_out: layer_seed(seed, i, 3),
            };
            x = block.forward(tape, x, training, seeds)?;
        }
        let x = self.norm.forward(tape, x)?;
        let x = tape.select_token(x, 0)?;
        self.head.forward(tape, x)
    }
}

/// Whether timm would exclude a parameter from weight decay: biases, norms
/// (every tensor of rank 1 or less) and the embeddings it lists as
/// `no_weight_decay` (`cls_token`, `pos_embed`).
pub fn timm_no_weight_decay(name: &str, shape: &[usize]) -> bool {
    shape.len() <= 1 || name == "cls_token" || name == "pos_embed"
}
