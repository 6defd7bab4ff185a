//! Hopfield layers: the modern Hopfield network's update rule as a layer, in
//! the three forms of hopfield-layers (MODELS.md 1.1 to 1.3), with partially
//! forgetting attention at their core.
//!
//! [`Hopfield`] retrieves, for every *state pattern* `r` (a row of R
//! `[B, L, E]`), a mixture of the *pattern projections* (rows of V_in
//! `[B, S, E_v]`) weighted by its similarity to the *stored patterns* (rows of
//! Y `[B, S, E_y]`):
//!
//! ```text
//! q = LN(R) W_q^T + b_q,  k = LN(Y) W_k^T + b_k,  v = LN(V_in) W_v^T + b_v
//! xi_0 = softmax(beta q k^T);  q_t = xi_{t-1} k,  xi_t = softmax(beta q_t k^T)
//! out  = (dropout(xi_T) v) W_o^T + b_o          (per head, heads concatenated)
//! ```
//!
//! The update steps iterate the retrieval in the projected space, keys fixed
//! and differentiably; a head stops after `update_steps_max` steps, or as soon
//! as its weights change by at most `update_steps_eps` (the largest Frobenius
//! norm over the batch of `xi_{t-1} - xi_t`, computed outside the gradient).
//! A head that stops keeps its state while the others go on.
//!
//! LwPF sits where the authors put it: the forgetting function acts on the
//! scores before every softmax of the iteration, each step with its own
//! threshold (its own median); inside the iteration forgotten entries keep
//! their weight `exp(b)` (the op's `drop_forgotten = false`), and only the final
//! retrieval drops them from the numerator (the indicator, after dropout).
//! Each iteration step is one call of the op with the keys as values
//! (`q_{t+1} = xi_t k`), the final retrieval one call with the values.
//!
//! [`HopfieldPooling`] takes trainable state patterns (one query per pooled
//! output) and pools a bag; [`HopfieldLayer`] takes trainable stored patterns
//! (a lookup table) and maps every input row through it.
//!
//! Known limitations: with forgetting, a head that stopped early is still
//! recomputed in every later call of the op, so its scores count in those
//! calls' medians, and its final weights use the final call's threshold (a
//! different noise draw than its last step's in training). Plain attention is
//! unaffected. Not modelled from hopfield-layers: association with zero
//! patterns, bias patterns, and its per-element scaling vectors.

use super::{InitRng, LayerNorm, Linear, trunc_normal};
use crate::autograd::{ParamId, ParamStore, Tape, Tensor, Var};
use crate::error::{Error, Result};
use crate::op::fast::{exp_in_place, max_of};
use crate::op::{AttentionConfig, Backend, CallStats, Forgetting, Precision, Shape, Threshold};

/// Epsilon of the three layer norms (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Standard deviation of the projection weights, the pooling queries and the
/// lookup and target patterns at initialization.
pub const INIT_STD: f32 = 0.02;

/// Options of a [`Hopfield`] layer; [`HopfieldConfig::new`] gives
/// hopfield-layers' defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HopfieldConfig {
    /// Width `E` of the state patterns.
    pub input_size: usize,
    /// Width `E_y` of the stored patterns (default `E`).
    pub stored_size: Option<usize>,
    /// Width `E_v` of the pattern projection input (default `E`).
    pub projection_size: Option<usize>,
    /// Width of the output projection (default `E`).
    pub output_size: Option<usize>,
    pub heads: usize,
    /// Head dimension `d` of states and keys (default `E / heads`).
    pub head_dim: Option<usize>,
    /// Head dimension `p` of the values (default `d`).
    pub value_dim: Option<usize>,
    /// Score scale (default `1 / sqrt(d)`).
    pub beta: Option<f32>,
    /// Most update steps per head; 0 is plain attention.
    pub update_steps_max: usize,
    /// A head stops once its weights change by at most this.
    pub update_steps_eps: f32,
    /// Dropout on the final weights (training only).
    pub dropout: f32,
    /// Layer norms on the stored patterns, the state patterns and the
    /// pattern projection input.
    pub norm_stored: bool,
    pub norm_state: bool,
    pub norm_projection: bool,
    /// Static patterns enter without their projection (`W = I`, no bias); their
    /// width must then be `heads * d` (`heads * p` for the projection input).
    pub stored_static: bool,
    pub state_static: bool,
    pub projection_static: bool,
    /// Biases of the three input projections.
    pub bias: bool,
    /// The output projection `heads * p -> output_size`; without it the
    /// output is the heads concatenated.
    pub out_projection: bool,
    pub forgetting: Forgetting,
}

/// The resolved sizes of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopfieldDims {
    pub state: usize,
    pub stored: usize,
    pub projection: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    /// Width of the layer's output rows.
    pub output: usize,
}

impl HopfieldConfig {
    /// hopfield-layers' defaults for state width `input_size`: one head,
    /// `d = p = E`, `beta = 1 / sqrt(d)`, no update steps (eps 1e-4), no
    /// dropout, all three layer norms, biases and the output projection.
    pub fn new(input_size: usize) -> HopfieldConfig {
        HopfieldConfig {
            input_size,
            stored_size: None,
            projection_size: None,
            output_size: None,
            heads: 1,
            head_dim: None,
            value_dim: None,
            beta: None,
            update_steps_max: 0,
            update_steps_eps: 1e-4,
            dropout: 0.0,
            norm_stored: true,
            norm_state: true,
            norm_projection: true,
            stored_static: false,
            state_static: false,
            projection_static: false,
            bias: true,
            out_projection: true,
            forgetting: Forgetting::None,
        }
    }

    pub fn dims(&self) -> HopfieldDims {
        let heads = self.heads.max(1);
        let head_dim = self.head_dim.unwrap_or(self.input_size / heads);
        let value_dim = self.value_dim.unwrap_or(head_dim);
        let output = if self.out_projection {
            self.output_size.unwrap_or(self.input_size)
        } else {
            heads * value_dim
        };
        HopfieldDims {
            state: self.input_size,
            stored: self.stored_size.unwrap_or(self.input_size),
            projection: self.projection_size.unwrap_or(self.input_size),
            heads,
            head_dim,
            value_dim,
            output,
        }
    }

    /// The score scale in effect.
    pub fn beta(&self) -> f32 {
        self.beta.unwrap_or(1.0 / (self.dims().head_dim as f32).sqrt())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        let d = self.dims();
        if self.heads == 0 {
            return bad("a Hopfield layer needs at least one head".into());
        }
        for (name, n) in [
            ("input size", d.state),
            ("stored size", d.stored),
            ("projection size", d.projection),
            ("head dim", d.head_dim),
            ("value dim", d.value_dim),
            ("output size", d.output),
        ] {
            if n == 0 {
                return bad(format!("{name} must be positive (input size {})", d.state));
            }
        }
        for (is_static, name, width, need) in [
            (self.state_static, "static state patterns", d.state, d.heads * d.head_dim),
            (self.stored_static, "static stored patterns", d.stored, d.heads * d.head_dim),
            (self.projection_static, "a static projection input", d.projection, {
                d.heads * d.value_dim
            }),
        ] {
            if is_static && width != need {
                return bad(format!("{name} of width {width} need width heads x dim = {need}"));
            }
        }
        if let Some(beta) = self.beta
            && !(beta.is_finite() && beta > 0.0)
        {
            return bad(format!("beta {beta} must be finite and > 0"));
        }
        if !(self.update_steps_eps.is_finite() && self.update_steps_eps >= 0.0) {
            return bad(format!("update_steps_eps {} must be finite, >= 0", self.update_steps_eps));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} outside [0, 1)", self.dropout));
        }
        AttentionConfig::with_forgetting(self.forgetting).validate()
    }
}

/// One pattern input of [`Hopfield::retrieve`].
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// Patterns per batch item, `[B, n, width]`.
    Batched(Var),
    /// The same patterns for every batch item, `[n, width]` (a trainable
    /// query or lookup table).
    Shared(Var),
}

impl Pattern {
    fn var(&self) -> Var {
        match *self {
            Pattern::Batched(v) | Pattern::Shared(v) => v,
        }
    }
}

/// A layer's output and what its calls of the op saw.
#[derive(Clone, Debug)]
pub struct HopfieldOutput {
    /// `[B, L, output]` (`[B, quantity * output]` for pooling).
    pub out: Var,
    /// Statistics of the op calls that shaped the output, in order: one per
    /// update step taken, then the final retrieval.
    pub calls: Vec<CallStats>,
    /// Update steps taken by the longest-running head.
    pub update_steps: usize,
}

impl HopfieldOutput {
    /// Fraction of all score entries forgotten, pooled over the layer's calls.
    pub fn forgotten_fraction(&self) -> f64 {
        let (f, e) =
            self.calls.iter().fold((0u64, 0u64), |(f, e), c| (f + c.forgotten, e + c.entries));
        if e == 0 { 0.0 } else { f as f64 / e as f64 }
    }

    /// Statistics of the final retrieval.
    pub fn retrieval(&self) -> Option<&CallStats> {
        self.calls.last()
    }
}

/// The Hopfield layer: parameter handles into a [`ParamStore`].
#[derive(Clone, Copy, Debug)]
pub struct Hopfield {
    pub config: HopfieldConfig,
    pub norm_stored: Option<LayerNorm>,
    pub norm_state: Option<LayerNorm>,
    pub norm_projection: Option<LayerNorm>,
    pub q_proj: Option<Linear>,
    pub k_proj: Option<Linear>,
    pub v_proj: Option<Linear>,
    pub out_proj: Option<Linear>,
}

/// A seed per op call of one forward pass.
fn call_seed(seed: u64, call: u64) -> u64 {
    let mut z =
        (seed ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Hopfield {
    /// Registers `{name}.norm_{stored,state,projection}.*`,
    /// `{name}.{q,k,v}_proj.*` (weights N(0, 0.02^2), biases 0; none for a
    /// static input) and `{name}.out_proj.*`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        config: HopfieldConfig,
        rng: &mut InitRng,
    ) -> Result<Hopfield> {
        config.validate()?;
        let d = config.dims();
        let norm = |store: &mut ParamStore, on: bool, part: &str, width: usize| {
            on.then(|| LayerNorm::new(store, &format!("{name}.norm_{part}"), width, LAYER_NORM_EPS))
                .transpose()
        };
        let norm_stored = norm(store, config.norm_stored, "stored", d.stored)?;
        let norm_state = norm(store, config.norm_state, "state", d.state)?;
        let norm_projection = norm(store, config.norm_projection, "projection", d.projection)?;
        let mut proj = |on: bool, part: &str, n_in: usize, n_out: usize, bias: bool| {
            on.then(|| Linear::new(store, &format!("{name}.{part}"), n_in, n_out, bias, rng))
                .transpose()
        };
        let q_proj =
            proj(!config.state_static, "q_proj", d.state, d.heads * d.head_dim, config.bias)?;
        let k_proj =
            proj(!config.stored_static, "k_proj", d.stored, d.heads * d.head_dim, config.bias)?;
        let v_proj = proj(
            !config.projection_static,
            "v_proj",
            d.projection,
            d.heads * d.value_dim,
            config.bias,
        )?;
        let out_proj =
            proj(config.out_projection, "out_proj", d.heads * d.value_dim, d.output, true)?;
        Ok(Hopfield {
            config,
            norm_stored,
            norm_state,
            norm_projection,
            q_proj,
            k_proj,
            v_proj,
            out_proj,
        })
    }

    /// Self-association: `x` `[B, N, E]` is stored patterns, state patterns and
    /// pattern projection input at once. Output `[B, N, output]`.
    pub fn forward(
        &self,
        tape: &mut Tape,
        x: Var,
        training: bool,
        seed: u64,
    ) -> Result<HopfieldOutput> {
        let p = Pattern::Batched(x);
        self.retrieve(tape, p, p, p, None, training, seed)
    }

    /// The general retrieval: `stored` Y, `state` R and `projection` V_in,
    /// each batched `[B, n, width]` or shared by every batch item `[n, width]`;
    /// Y and V_in have the same number of patterns S. `valid` `[B, S]` masks
    /// stored patterns (true = real). Output `[B, L, output]`, `B = 1` when
    /// every input is shared. `seed` drives the op's threshold draws and the
    /// dropout mask (training only).
    #[allow(clippy::too_many_arguments)]
    pub fn retrieve(
        &self,
        tape: &mut Tape,
        stored: Pattern,
        state: Pattern,
        projection: Pattern,
        valid: Option<&[bool]>,
        training: bool,
        seed: u64,
    ) -> Result<HopfieldOutput> {
        let dims = self.config.dims();
        let (h, d, pd) = (dims.heads, dims.head_dim, dims.value_dim);

        // Shapes: the batch, the number of states L and of stored patterns S.
        let mut batch = None;
        let mut lens = [0usize; 3];
        for (i, (p, width, what)) in [
            (stored, dims.stored, "stored patterns"),
            (state, dims.state, "state patterns"),
            (projection, dims.projection, "pattern projection input"),
        ]
        .into_iter()
        .enumerate()
        {
            let s = tape.shape(p.var()).to_vec();
            let (b, n, w) = match (p, s.as_slice()) {
                (Pattern::Batched(_), &[b, n, w]) => (Some(b), n, w),
                (Pattern::Shared(_), &[n, w]) => (None, n, w),
                _ => {
                    return Err(Error::OpShape {
                        op: "hopfield",
                        what: format!("{what} of shape {s:?} ({p:?})"),
                    });
                }
            };
            if w != width || b.is_some_and(|b| batch.is_some_and(|bb| bb != b)) {
                return Err(Error::OpShape {
                    op: "hopfield",
                    what: format!(
                        "{what} of shape {s:?}: width {width} and a common batch expected"
                    ),
                });
            }
            batch = batch.or(b);
            lens[i] = n;
        }
        let [s_len, l_len, v_len] = lens;
        if s_len != v_len {
            return Err(Error::OpShape {
                op: "hopfield",
                what: format!("{s_len} stored patterns but {v_len} pattern projections"),
            });
        }
        let b = batch.unwrap_or(1);
        if let Some(m) = valid
            && m.len() != b * s_len
        {
            return Err(Error::OpShape {
                op: "hopfield",
                what: format!("key padding mask of {} for batch {b} and {s_len} keys", m.len()),
            });
        }

        // Layer norms and projections, on whatever leading shape each has.
        let prep = |tape: &mut Tape, p: Pattern, norm: Option<LayerNorm>, proj: Option<Linear>| {
            let mut x = p.var();
            if let Some(n) = norm {
                x = n.forward(tape, x)?;
            }
            if let Some(l) = proj {
                x = l.forward(tape, x)?;
            }
            Ok::<Var, Error>(x)
        };
        let q = prep(tape, state, self.norm_state, self.q_proj)?;
        let k = prep(tape, stored, self.norm_stored, self.k_proj)?;
        let v = prep(tape, projection, self.norm_projection, self.v_proj)?;

        // Heads. Stored patterns shared by the whole batch fold the batch into
        // the queries (one item of B * L queries): same scores, same median,
        // and K is not copied B times.
        let fold = matches!(
            (stored, state, projection),
            (Pattern::Shared(_), Pattern::Batched(_), Pattern::Shared(_))
        ) && valid.is_none();
        let to_heads = |tape: &mut Tape, x: Var, p: Pattern, c: usize| -> Result<Var> {
            match p {
                Pattern::Shared(_) => {
                    let n = tape.shape(x)[0];
                    let x = if h == 1 {
                        tape.reshape(x, &[1, 1, n, c])?
                    } else {
                        let x = tape.reshape(x, &[n, h, c])?;
                        let x = tape.permute(x, &[1, 0, 2])?;
                        tape.reshape(x, &[1, h, n, c])?
                    };
                    if fold || b == 1 {
                        Ok(x)
                    } else {
                        let zeros = tape.input(Tensor::zeros(&[b, h, n, c]));
                        tape.add_broadcast(zeros, x)
                    }
                }
                Pattern::Batched(_) => {
                    let n = tape.shape(x)[1];
                    if fold {
                        if h == 1 {
                            return tape.reshape(x, &[1, 1, b * n, c]);
                        }
                        let x = tape.reshape(x, &[b, n, h, c])?;
                        let x = tape.permute(x, &[2, 0, 1, 3])?;
                        tape.reshape(x, &[1, h, b * n, c])
                    } else if h == 1 {
                        tape.reshape(x, &[b, 1, n, c])
                    } else {
                        let x = tape.reshape(x, &[b, n, h, c])?;
                        tape.permute(x, &[0, 2, 1, 3])
                    }
                }
            }
        };
        let q = to_heads(tape, q, state, d)?;
        let k = to_heads(tape, k, stored, d)?;
        let v = to_heads(tape, v, projection, pd)?;
        let (bq, lq) = if fold { (1, b * l_len) } else { (b, l_len) };
        let shape = Shape { batch: bq, heads: h, n_q: lq, n_k: s_len, d, d_v: d };

        let (q, calls, steps, final_seed) =
            self.iterate(tape, (q, k), shape, l_len, valid, training, seed)?;

        // The final retrieval: dropout and the indicator, then the values.
        let cfg = AttentionConfig {
            beta: Some(self.config.beta()),
            forgetting: self.config.forgetting,
            drop_forgotten: true,
            dropout: self.config.dropout,
            seed: final_seed,
            training,
            precision: Precision::F32,
        };
        let o = tape.attention((q, k, v), valid, &cfg, Backend::Cpu)?;
        let mut calls = calls;
        calls.extend(tape.attention_stats().last().copied());

        // [Bq, H, Lq, p] -> [B, L, H * p].
        let o = if h == 1 {
            tape.reshape(o, &[b, l_len, pd])?
        } else if fold {
            let o = tape.reshape(o, &[h, b, l_len, pd])?;
            let o = tape.permute(o, &[1, 2, 0, 3])?;
            tape.reshape(o, &[b, l_len, h * pd])?
        } else {
            let o = tape.permute(o, &[0, 2, 1, 3])?;
            tape.reshape(o, &[b, l_len, h * pd])?
        };
        let out = match self.out_proj {
            Some(l) => l.forward(tape, o)?,
            None => o,
        };
        Ok(HopfieldOutput { out, calls, update_steps: steps })
    }

    /// The update steps: returns the final states `[Bq, H, Lq, d]`, the
    /// statistics of the steps taken, the number of steps and the seed the
    /// final retrieval must use (that of the last weights `xi_T`, so that the
    /// retrieval sees the same threshold as the stopping rule).
    #[allow(clippy::too_many_arguments)]
    fn iterate(
        &self,
        tape: &mut Tape,
        (q0, k): (Var, Var),
        shape: Shape,
        rows_per_item: usize,
        valid: Option<&[bool]>,
        training: bool,
        seed: u64,
    ) -> Result<(Var, Vec<CallStats>, usize, u64)> {
        let max = self.config.update_steps_max;
        let beta = self.config.beta();
        let mut q = q0;
        let mut calls = Vec::new();
        let mut active = vec![true; shape.heads];
        let mut prev_xi: Option<Vec<f32>> = None;
        let mut t = 0usize;
        while t < max {
            // Candidate step: q_{t+1} = xi_t k, forgotten entries kept at exp(b).
            let cfg = AttentionConfig {
                beta: Some(beta),
                forgetting: self.config.forgetting,
                drop_forgotten: false,
                dropout: 0.0,
                seed: call_seed(seed, t as u64),
                training,
                precision: Precision::F32,
            };
            let next = tape.attention((q, k, k), valid, &cfg, Backend::Cpu)?;
            let stats = tape.attention_stats().last().copied();

            // The stopping rule needs xi_t (and xi_{t-1}) from step 1 on.
            if max >= 2 {
                let thr = stats.map(|s| s.threshold).unwrap_or(Threshold::NONE);
                let xi = iteration_weights(
                    tape.value(q).data(),
                    tape.value(k).data(),
                    shape,
                    beta,
                    thr,
                    valid,
                );
                if let Some(prev) = &prev_xi {
                    let change = head_changes(prev, &xi, shape, rows_per_item);
                    for (a, c) in active.iter_mut().zip(change) {
                        *a = *a && c > self.config.update_steps_eps as f64;
                    }
                }
                prev_xi = Some(xi);
            }
            if !active.iter().any(|&a| a) {
                // Converged at xi_t: the retrieval reuses this step's seed.
                return Ok((q, calls, t, call_seed(seed, t as u64)));
            }
            q = if active.iter().all(|&a| a) { next } else { tape.select_heads(next, q, &active)? };
            calls.extend(stats);
            t += 1;
        }
        Ok((q, calls, t, call_seed(seed, t as u64)))
    }
}

/// The weights `xi` `[Bq, H, Lq, S]` of one iteration step, outside the
/// gradient: the softmax of the forgotten scores with forgotten entries at
/// `exp(b)` (no indicator), under the threshold the op reported.
fn iteration_weights(
    q: &[f32],
    k: &[f32],
    s: Shape,
    beta: f32,
    thr: Threshold,
    valid: Option<&[bool]>,
) -> Vec<f32> {
    let (n_q, n_k, d) = (s.n_q, s.n_k, s.d);
    let mut xi = vec![0.0f32; s.batch * s.heads * n_q * n_k];
    if n_k == 0 || d == 0 {
        return xi;
    }
    // K^T of one head, so that a row's scores accumulate along contiguous keys.
    let mut k_t = vec![0.0f32; d * n_k];
    for (bh, (xi_h, q_h)) in xi.chunks_mut(n_q * n_k).zip(q.chunks(n_q * d)).enumerate() {
        let k_h = &k[bh * n_k * d..(bh + 1) * n_k * d];
        for (j, kj) in k_h.chunks(d).enumerate() {
            for (p, &x) in kj.iter().enumerate() {
                k_t[p * n_k + j] = x;
            }
        }
        let mask = valid.map(|m| &m[(bh / s.heads) * n_k..][..n_k]);
        for (w, qr) in xi_h.chunks_mut(n_k).zip(q_h.chunks(d)) {
            w.fill(0.0);
            for (&x, kp) in qr.iter().zip(k_t.chunks(n_k)) {
                let x = beta * x;
                for (wj, &y) in w.iter_mut().zip(kp) {
                    *wj += x * y;
                }
            }
            // Effective scores: s when kept, b when forgotten, -inf when padded.
            for wj in w.iter_mut() {
                *wj = if *wj > thr.z { *wj } else { thr.b };
            }
            if let Some(m) = mask {
                for (wj, &ok) in w.iter_mut().zip(m) {
                    *wj = if ok { *wj } else { f32::NEG_INFINITY };
                }
            }
            let top = max_of(w);
            if top == f32::NEG_INFINITY {
                w.fill(0.0);
                continue;
            }
            let inv = 1.0 / exp_in_place(w, top);
            w.iter_mut().for_each(|wj| *wj *= inv);
        }
    }
    xi
}

/// Per head: the largest Frobenius norm, over batch items, of `a - b`, both
/// `[Bq, H, Lq, S]`; each item is `rows_per_item` consecutive rows of a head
/// (the batch folded into the rows counts item by item).
fn head_changes(a: &[f32], b: &[f32], s: Shape, rows_per_item: usize) -> Vec<f64> {
    let mut change = vec![0.0f64; s.heads];
    let item_len = rows_per_item.max(1) * s.n_k;
    let head_len = s.n_q * s.n_k;
    for (bh, (ha, hb)) in a.chunks(head_len.max(1)).zip(b.chunks(head_len.max(1))).enumerate() {
        let h = bh % s.heads;
        for (ia, ib) in ha.chunks(item_len).zip(hb.chunks(item_len)) {
            let sq: f64 = ia.iter().zip(ib).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            change[h] = change[h].max(sq.sqrt());
        }
    }
    change
}

/// `HopfieldPooling`: `quantity` trainable state patterns (queries), shared by
/// every batch item, pool a bag (stored patterns = projection input = bag).
#[derive(Clone, Copy, Debug)]
pub struct HopfieldPooling {
    pub hopfield: Hopfield,
    /// `{name}.pooling_weights` `[quantity, E]`, N(0, 0.02^2).
    pub query: ParamId,
    pub quantity: usize,
}

impl HopfieldPooling {
    /// The bag's width is `config`'s stored and projection size.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        config: HopfieldConfig,
        quantity: usize,
        rng: &mut InitRng,
    ) -> Result<HopfieldPooling> {
        if quantity == 0 {
            return Err(Error::InvalidConfig { what: "pooling needs at least one query".into() });
        }
        let hopfield = Hopfield::new(store, name, config, rng)?;
        let init = trunc_normal(rng, &[quantity, config.input_size], INIT_STD);
        let query = store.add(&format!("{name}.pooling_weights"), init, true)?;
        Ok(HopfieldPooling { hopfield, query, quantity })
    }

    /// bag `[B, S, E_y]` (with `valid` `[B, S]`) -> `[B, quantity * output]`.
    pub fn forward(
        &self,
        tape: &mut Tape,
        bag: Var,
        valid: Option<&[bool]>,
        training: bool,
        seed: u64,
    ) -> Result<HopfieldOutput> {
        let query = tape.param(self.query);
        let bag_p = Pattern::Batched(bag);
        let mut out = self.hopfield.retrieve(
            tape,
            bag_p,
            Pattern::Shared(query),
            bag_p,
            valid,
            training,
            seed,
        )?;
        let s = tape.shape(out.out).to_vec();
        out.out = tape.reshape(out.out, &[s[0], s[1] * s[2]])?;
        Ok(out)
    }
}

/// Target patterns of a [`HopfieldLayer`] whose lookup weights are separated.
#[derive(Clone, Copy, Debug)]
pub struct TargetPatterns {
    /// `{name}.target_weights` `[quantity, E_v]`, N(0, 0.02^2).
    pub id: ParamId,
    /// Whether the targets train; frozen ones enter the tape as constants.
    pub trainable: bool,
}

/// `HopfieldLayer`: `quantity` trainable lookup patterns are the stored
/// patterns; every input row is a state pattern. The pattern projection input
/// is the lookup patterns themselves (through the projection layer norm), or
/// with separated lookup weights a second table of target patterns.
#[derive(Clone, Copy, Debug)]
pub struct HopfieldLayer {
    pub hopfield: Hopfield,
    /// `{name}.lookup_weights` `[quantity, E_y]`, N(0, 0.02^2).
    pub lookup: ParamId,
    pub targets: Option<TargetPatterns>,
    pub quantity: usize,
}

impl HopfieldLayer {
    /// With `separated`, registers target patterns that train when
    /// `targets_trainable`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        config: HopfieldConfig,
        quantity: usize,
        separated: bool,
        targets_trainable: bool,
        rng: &mut InitRng,
    ) -> Result<HopfieldLayer> {
        if quantity == 0 {
            return Err(Error::InvalidConfig {
                what: "a lookup table needs at least one pattern".into(),
            });
        }
        let dims = config.dims();
        if !separated && dims.stored != dims.projection {
            return Err(Error::InvalidConfig {
                what: format!(
                    "lookup patterns of width {} cannot serve as projection input of width {}; \
                     separate them",
                    dims.stored, dims.projection
                ),
            });
        }
        let hopfield = Hopfield::new(store, name, config, rng)?;
        let init = trunc_normal(rng, &[quantity, dims.stored], INIT_STD);
        let lookup = store.add(&format!("{name}.lookup_weights"), init, true)?;
        let targets = if separated {
            let init = trunc_normal(rng, &[quantity, dims.projection], INIT_STD);
            let id = store.add(&format!("{name}.target_weights"), init, targets_trainable)?;
            Some(TargetPatterns { id, trainable: targets_trainable })
        } else {
            None
        };
        Ok(HopfieldLayer { hopfield, lookup, targets, quantity })
    }

    /// x `[B, L, E]` -> `[B, L, output]`.
    pub fn forward(
        &self,
        tape: &mut Tape,
        x: Var,
        training: bool,
        seed: u64,
    ) -> Result<HopfieldOutput> {
        let lookup = tape.param(self.lookup);
        let projection = match self.targets {
            None => lookup,
            Some(t) if t.trainable => tape.param(t.id),
            Some(t) => {
                let frozen = tape.value(tape.param(t.id)).clone();
                tape.input(frozen)
            }
        };
        self.hopfield.retrieve(
            tape,
            Pattern::Shared(lookup),
            Pattern::Batched(x),
            Pattern::Shared(projection),
            None,
            training,
            seed,
        )
    }
}
