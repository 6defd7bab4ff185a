//! Autograd-light: reverse-mode differentiation over a tape, with just the ops
//! a vision transformer needs.
//!
//! A [`Tape`] records every op applied in one forward pass, in order, so the
//! order of the tape is already a topological order: [`Tape::backward`] walks
//! it from the end and hands each node's gradient to the inputs of its op. The
//! tape borrows a [`ParamStore`] for the parameters; the optimizer updates the
//! store once the tape is gone. A tape made with [`Tape::inference`] records no
//! backward information (evaluation): ops only compute values.
//!
//! What it does not do: no broadcasting beyond what the ops name, no in-place
//! ops, no higher-order gradients, one dtype (`f32`). A node's value is freed as
//! soon as the backward pass is done with it, so a tape is consumed by
//! `backward`.

mod attention;
mod bags;
mod conv;
pub mod gradcheck;
mod hopfield_ops;
mod linear;
mod loss;
mod norm;
mod par;
mod params;
mod pointwise;
mod shape;
mod tensor;

pub use conv::conv_windows;
pub use hopfield_ops::softplus;
pub use params::{Param, ParamId, ParamStore};
pub use pointwise::{gelu, gelu_grad};
pub use tensor::{Storage, Tensor};

use crate::error::{Error, Result};
use crate::op::CallStats;

/// A value on a tape: a parameter of the store or the output of a node. A
/// node handle belongs to the tape that made it; another tape indexes its own
/// nodes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Param(ParamId),
    Node(usize),
}

/// What the backward pass needs from one op; each variant holds the op's
/// inputs and what it saved in the forward pass.
enum Op {
    /// No gradient flows here: data, or any node of an inference tape.
    Constant,
    /// An input whose gradient [`Grads`] reports.
    Leaf,
    Linear(linear::LinearSaved),
    MatMul(linear::MatMulSaved),
    Add {
        a: Var,
        b: Var,
    },
    AddBroadcast {
        x: Var,
        y: Var,
    },
    Reshape {
        x: Var,
    },
    Permute {
        x: Var,
        perm: Vec<usize>,
    },
    Select {
        x: Var,
        index: usize,
    },
    ConcatCls {
        cls: Var,
        x: Var,
    },
    SelectToken {
        x: Var,
        token: usize,
    },
    Patchify(shape::PatchifySaved),
    LayerNorm(norm::LayerNormSaved),
    Gelu {
        x: Var,
    },
    Dropout {
        x: Var,
        p: f32,
        seed: u64,
    },
    CrossEntropy(loss::CrossEntropySaved),
    Attention(Box<attention::AttentionSaved>),
    BceWithLogits(hopfield_ops::BceSaved),
    SelectHeads(hopfield_ops::SelectHeadsSaved),
    Conv1d(Box<conv::Conv1dSaved>),
    Selu {
        x: Var,
    },
    MaxPositions(conv::MaxPositionsSaved),
    PadBags(bags::PadBagsSaved),
}

struct Node {
    value: Tensor,
    op: Op,
    requires_grad: bool,
}

/// A gradient flowing to one input: the whole tensor, or a contiguous range
/// of it (the rest zero), which is what slicing ops produce.
enum Contrib {
    Full(Vec<f32>),
    Range { offset: usize, data: Vec<f32> },
}

/// One forward pass and what its backward pass needs.
pub struct Tape<'p> {
    params: &'p ParamStore,
    nodes: Vec<Node>,
    record: bool,
    attention: Vec<CallStats>,
}

impl<'p> Tape<'p> {
    /// A tape that records the backward pass (training).
    pub fn new(params: &'p ParamStore) -> Self {
        Tape { params, nodes: Vec::new(), record: true, attention: Vec::new() }
    }

    /// A tape that only computes values (evaluation).
    pub fn inference(params: &'p ParamStore) -> Self {
        Tape { record: false, ..Tape::new(params) }
    }

    /// Whether this tape records gradients.
    pub fn is_recording(&self) -> bool {
        self.record
    }

    /// A parameter of the store as a value of this tape.
    pub fn param(&self, id: ParamId) -> Var {
        Var::Param(id)
    }

    /// Data: no gradient is computed for it.
    pub fn input(&mut self, value: Tensor) -> Var {
        self.push_node(value, Op::Constant, false)
    }

    /// An input whose gradient the backward pass reports (gradient checks).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        let record = self.record;
        self.push_node(value, Op::Leaf, record)
    }

    /// The value of `v`.
    pub fn value(&self, v: Var) -> &Tensor {
        match v {
            Var::Param(id) => self.params.value(id),
            Var::Node(i) => &self.nodes[i].value,
        }
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        self.value(v).shape()
    }

    /// Statistics of every attention call of this tape, in call order.
    pub fn attention_stats(&self) -> &[CallStats] {
        &self.attention
    }

    /// Whether a gradient must reach `v`.
    fn requires(&self, v: Var) -> bool {
        match v {
            Var::Param(_) => self.record,
            Var::Node(i) => self.nodes[i].requires_grad,
        }
    }

    /// Whether an op on `inputs` needs to save anything for its backward.
    fn any_requires(&self, inputs: &[Var]) -> bool {
        inputs.iter().any(|&v| self.requires(v))
    }

    fn push_node(&mut self, value: Tensor, op: Op, requires_grad: bool) -> Var {
        self.nodes.push(Node { value, op, requires_grad });
        Var::Node(self.nodes.len() - 1)
    }

    /// Appends an op's result; its backward information is kept only when a
    /// gradient must reach one of its inputs.
    fn push(&mut self, value: Tensor, op: Op, inputs: &[Var]) -> Var {
        if self.any_requires(inputs) {
            self.push_node(value, op, true)
        } else {
            self.push_node(value, Op::Constant, false)
        }
    }

    /// Gradients of the scalar `loss` with respect to every parameter and leaf.
    pub fn backward(self, loss: Var) -> Result<Grads> {
        let n = self.value(loss).numel();
        if n != 1 {
            return Err(Error::OpShape {
                op: "backward",
                what: format!("the loss must have one element, it has {n}"),
            });
        }
        self.backward_with(loss, &[1.0])
    }

    /// Gradients of `sum(out * seed)`: the backward pass started from an
    /// arbitrary output gradient `seed` of `out`'s shape.
    pub fn backward_with(mut self, out: Var, seed: &[f32]) -> Result<Grads> {
        let n_out = self.value(out).numel();
        if seed.len() != n_out {
            return Err(Error::ShapeMismatch {
                tensor: "backward seed",
                got: seed.len(),
                expected: n_out,
                shape: format!("{:?}", self.shape(out)),
            });
        }
        let mut param_grads: Vec<Option<Vec<f32>>> = vec![None; self.params.len()];
        let mut node_grads: Vec<Option<Vec<f32>>> = vec![None; self.nodes.len()];
        let mut leaves = Vec::new();
        match out {
            Var::Param(id) => param_grads[id.0] = Some(seed.to_vec()),
            Var::Node(i) => node_grads[i] = Some(seed.to_vec()),
        }

        let mut contribs = Vec::new();
        for i in (0..self.nodes.len()).rev() {
            // Every consumer of node i comes later on the tape and is done, so
            // node i's value is needed only by its own backward: free it here.
            let node = std::mem::replace(
                &mut self.nodes[i],
                Node { value: Tensor::empty(), op: Op::Constant, requires_grad: false },
            );
            let Some(g) = node_grads[i].take() else {
                continue;
            };
            if matches!(node.op, Op::Leaf) {
                leaves.push((i, Tensor::from_parts(node.value.shape().to_vec(), g)));
                continue;
            }
            self.backward_op(node.op, &node.value, g, &mut contribs)?;
            for (v, c) in contribs.drain(..) {
                if !self.requires(v) {
                    continue;
                }
                let (slot, len) = match v {
                    Var::Param(id) => (&mut param_grads[id.0], self.params.value(id).numel()),
                    Var::Node(j) => (&mut node_grads[j], self.nodes[j].value.numel()),
                };
                accumulate(slot, len, c);
            }
        }

        let params = param_grads
            .into_iter()
            .zip(self.params.iter())
            .map(|(g, (_, p))| g.map(|g| Tensor::from_parts(p.value.shape().to_vec(), g)))
            .collect();
        Ok(Grads { params, leaves })
    }

    /// Turns the gradient `g` of one node's output into gradients of the
    /// op's inputs, pushed onto `out`.
    fn backward_op(
        &self,
        op: Op,
        value: &Tensor,
        g: Vec<f32>,
        out: &mut Vec<(Var, Contrib)>,
    ) -> Result<()> {
        match op {
            Op::Constant | Op::Leaf => {}
            Op::Linear(s) => self.linear_backward(&s, g, out),
            Op::MatMul(s) => self.matmul_backward(&s, &g, out),
            Op::Add { a, b } => match (self.requires(a), self.requires(b)) {
                (true, true) => {
                    out.push((a, Contrib::Full(g.clone())));
                    out.push((b, Contrib::Full(g)));
                }
                (true, false) => out.push((a, Contrib::Full(g))),
                _ => out.push((b, Contrib::Full(g))),
            },
            Op::AddBroadcast { x, y } => self.add_broadcast_backward(x, y, g, out),
            Op::Reshape { x } => out.push((x, Contrib::Full(g))),
            Op::Permute { x, perm } => self.permute_backward(x, &perm, value, &g, out),
            Op::Select { x, index } => {
                out.push((x, Contrib::Range { offset: index * g.len(), data: g }))
            }
            Op::ConcatCls { cls, x } => self.concat_cls_backward(cls, x, &g, out),
            Op::SelectToken { x, token } => self.select_token_backward(x, token, &g, out),
            Op::Patchify(s) => self.patchify_backward(&s, &g, out),
            Op::LayerNorm(s) => self.layer_norm_backward(&s, &g, out),
            Op::Gelu { x } => self.gelu_backward(x, g, out),
            Op::Dropout { x, p, seed } => self.dropout_backward(x, p, seed, g, out),
            Op::CrossEntropy(s) => self.cross_entropy_backward(&s, &g, out),
            Op::Attention(s) => self.attention_backward(&s, &g, out)?,
            Op::BceWithLogits(s) => self.bce_with_logits_backward(&s, &g, out),
            Op::SelectHeads(s) => self.select_heads_backward(&s, &g, out),
            Op::Conv1d(s) => self.conv1d_backward(&s, &g, out),
            Op::Selu { x } => self.selu_backward(x, g, out),
            Op::MaxPositions(s) => self.max_positions_backward(&s, &g, out),
            Op::PadBags(s) => self.pad_bags_backward(&s, &g, out),
        }
        Ok(())
    }
}

/// Adds a gradient contribution into an input's slot of `len` elements.
fn accumulate(slot: &mut Option<Vec<f32>>, len: usize, c: Contrib) {
    match (slot.as_mut(), c) {
        (None, Contrib::Full(data)) => *slot = Some(data),
        (None, Contrib::Range { offset, data }) => {
            let mut full = vec![0.0; len];
            full[offset..offset + data.len()].copy_from_slice(&data);
            *slot = Some(full);
        }
        (Some(acc), Contrib::Full(data)) => par::add_assign(acc, &data),
        (Some(acc), Contrib::Range { offset, data }) => {
            par::add_assign(&mut acc[offset..offset + data.len()], &data)
        }
    }
}

/// The gradients of one backward pass.
#[derive(Debug)]
pub struct Grads {
    /// Per parameter, in store order; `None` when no gradient reached it.
    params: Vec<Option<Tensor>>,
    /// Gradients of the tape's leaves, by node index.
    leaves: Vec<(usize, Tensor)>,
}

impl Grads {
    /// The gradient of a parameter or leaf, if one reached it.
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        match v {
            Var::Param(id) => self.params.get(id.0).and_then(Option::as_ref),
            Var::Node(i) => self.leaves.iter().find(|(j, _)| *j == i).map(|(_, t)| t),
        }
    }

    /// The gradient of a parameter, if one reached it.
    pub fn param(&self, id: ParamId) -> Option<&Tensor> {
        self.get(Var::Param(id))
    }

    /// Parameter gradients in store order.
    pub fn params(&self) -> &[Option<Tensor>] {
        &self.params
    }

    /// The global L2 norm of every parameter gradient.
    pub fn global_norm(&self) -> f64 {
        self.params
            .iter()
            .flatten()
            .map(|g| g.data().iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    }

    /// Scales every parameter gradient so that the global norm is at most
    /// `max_norm`; returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        if norm > max_norm && norm > 0.0 {
            let scale = (max_norm / norm) as f32;
            for g in self.params.iter_mut().flatten() {
                g.data_mut().iter_mut().for_each(|x| *x *= scale);
            }
        }
        norm
    }
}

/// Checks that an op's input has the expected rank.
fn expect_rank(op: &'static str, shape: &[usize], rank: usize) -> Result<()> {
    if shape.len() != rank {
        return Err(Error::OpShape {
            op,
            what: format!("expected a rank-{rank} tensor, got shape {shape:?}"),
        });
    }
    Ok(())
}
