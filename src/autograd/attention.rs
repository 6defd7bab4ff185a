//! Partially forgetting attention as one node of the tape: the forward and
//! backward passes are the op's own ([`crate::op::forward_saving`],
//! [`crate::op::backward_saved`]), never re-derived here. On the CUDA
//! backend the node keeps the call's tensors on the device, and its
//! backward runs the fused backward kernels on them.

use super::{Contrib, Op, Tape, Tensor, Var, expect_rank};
use crate::error::{Error, Result};
use crate::op::{self, AttentionConfig, AttentionInput, Backend, Forward, Saved, Shape};

pub(super) struct AttentionSaved {
    q: Var,
    k: Var,
    v: Var,
    valid: Option<Vec<bool>>,
    cfg: AttentionConfig,
    backend: Backend,
    shape: Shape,
    fwd: Forward,
    saved: Saved,
}

impl Tape<'_> {
    /// Partially forgetting attention of queries `q` `[B, H, Nq, D]` over keys
    /// `k` `[B, H, Nk, D]` and values `v` `[B, H, Nk, Dv]`, with an optional
    /// key padding mask `[B, Nk]` (true = a real key). Output `[B, H, Nq, Dv]`.
    /// The call's statistics (threshold, entries forgotten) are appended to
    /// [`Tape::attention_stats`].
    pub fn attention(
        &mut self,
        (q, k, v): (Var, Var, Var),
        valid: Option<&[bool]>,
        cfg: &AttentionConfig,
        backend: Backend,
    ) -> Result<Var> {
        let (qs, ks, vs) = (self.shape(q).to_vec(), self.shape(k).to_vec(), self.shape(v).to_vec());
        for s in [&qs, &ks, &vs] {
            expect_rank("attention", s, 4)?;
        }
        if qs[..2] != ks[..2] || ks[..3] != vs[..3] || qs[3] != ks[3] {
            return Err(Error::OpShape {
                op: "attention",
                what: format!("Q {qs:?}, K {ks:?} and V {vs:?} do not fit together"),
            });
        }
        let shape =
            Shape { batch: qs[0], heads: qs[1], n_q: qs[2], n_k: ks[2], d: qs[3], d_v: vs[3] };
        let input = AttentionInput {
            q: self.value(q).data(),
            k: self.value(k).data(),
            v: self.value(v).data(),
            valid,
            shape,
        };
        let (mut fwd, saved) = op::forward_saving(&input, cfg, backend)?;
        self.attention.push(fwd.stats);

        let out_shape = vec![shape.batch, shape.heads, shape.n_q, shape.d_v];
        if !self.any_requires(&[q, k, v]) {
            let o = std::mem::take(&mut fwd.o);
            return Ok(self.push(Tensor::from_parts(out_shape, o), Op::Constant, &[]));
        }
        let value = Tensor::from_parts(out_shape, fwd.o.clone());
        let saved = AttentionSaved {
            q,
            k,
            v,
            valid: valid.map(<[bool]>::to_vec),
            cfg: *cfg,
            backend,
            shape,
            fwd,
            saved,
        };
        Ok(self.push(value, Op::Attention(Box::new(saved)), &[q, k, v]))
    }

    pub(super) fn attention_backward(
        &self,
        s: &AttentionSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) -> Result<()> {
        let input = AttentionInput {
            q: self.value(s.q).data(),
            k: self.value(s.k).data(),
            v: self.value(s.v).data(),
            valid: s.valid.as_deref(),
            shape: s.shape,
        };
        let grads = op::backward_saved(&input, &s.cfg, (&s.fwd, &s.saved), g, s.backend)?;
        out.push((s.q, Contrib::Full(grads.dq)));
        out.push((s.k, Contrib::Full(grads.dk)));
        out.push((s.v, Contrib::Full(grads.dv)));
        Ok(())
    }
}
