//! Optimizers and the learning-rate schedule.
//!
//! Weight decay applies only to parameters registered with `weight_decay`
//! (timm's grouping: not biases, norms, the class token or the position
//! embedding). Both optimizers follow PyTorch's update rules, so the paper's
//! hyperparameters mean the same thing here.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::autograd::{Grads, ParamStore};
use crate::error::{Error, Result};

/// Elements per rayon task in the parameter updates.
const CHUNK: usize = 1 << 14;

/// An optimizer stepping the parameters of one store.
pub trait Optimizer {
    /// Applies one update with learning rate `lr`. Parameters that received
    /// no gradient are left alone.
    fn step(&mut self, store: &mut ParamStore, grads: &Grads, lr: f32) -> Result<()>;
}

fn check_grads(store: &ParamStore, grads: &Grads) -> Result<()> {
    if grads.params().len() != store.len() {
        return Err(Error::InvalidConfig {
            what: format!(
                "gradients for {} parameters, the store has {}",
                grads.params().len(),
                store.len()
            ),
        });
    }
    Ok(())
}

/// Stochastic gradient descent with momentum and coupled weight decay
/// (`torch.optim.SGD`): `g += wd * p; buf = momentum * buf + g; p -= lr * buf`.
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    buffers: Vec<Vec<f32>>,
}

impl Sgd {
    pub fn new(store: &ParamStore, momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            momentum,
            weight_decay,
            buffers: store.iter().map(|(_, p)| vec![0.0; p.value.numel()]).collect(),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, store: &mut ParamStore, grads: &Grads, lr: f32) -> Result<()> {
        check_grads(store, grads)?;
        let (momentum, wd) = (self.momentum, self.weight_decay);
        for ((param, grad), buf) in
            store.params_mut().iter_mut().zip(grads.params()).zip(&mut self.buffers)
        {
            let Some(grad) = grad else { continue };
            let decay = if param.weight_decay { wd } else { 0.0 };
            param
                .value
                .data_mut()
                .par_chunks_mut(CHUNK)
                .zip(grad.data().par_chunks(CHUNK))
                .zip(buf.par_chunks_mut(CHUNK))
                .for_each(|((p, g), b)| {
                    for i in 0..p.len() {
                        let gi = g[i] + decay * p[i];
                        b[i] = momentum * b[i] + gi;
                        p[i] -= lr * b[i];
                    }
                });
        }
        Ok(())
    }
}

/// Adam with decoupled weight decay (`torch.optim.AdamW`): `p *= 1 - lr * wd`,
/// then the bias-corrected Adam step.
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// PyTorch's defaults for the moments: betas (0.9, 0.999), eps 1e-8.
    pub fn new(store: &ParamStore, weight_decay: f32) -> AdamW {
        let zeros = || store.iter().map(|(_, p)| vec![0.0; p.value.numel()]).collect();
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0, m: zeros(), v: zeros() }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, store: &mut ParamStore, grads: &Grads, lr: f32) -> Result<()> {
        check_grads(store, grads)?;
        self.step += 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let t = self.step as i32;
        let bc1 = 1.0 - (b1 as f64).powi(t);
        let bc2 = 1.0 - (b2 as f64).powi(t);
        // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), PyTorch's order.
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (((param, grad), m), v) in
            store.params_mut().iter_mut().zip(grads.params()).zip(&mut self.m).zip(&mut self.v)
        {
            let Some(grad) = grad else { continue };
            let shrink = if param.weight_decay { 1.0 - lr * self.weight_decay } else { 1.0 };
            param
                .value
                .data_mut()
                .par_chunks_mut(CHUNK)
                .zip(grad.data().par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        p[i] *= shrink;
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                    }
                });
        }
        Ok(())
    }
}

/// Linear warmup from 0 to `base_lr` over `warmup_steps`, then a cosine decay
/// to `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub base_lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        (self.min_lr as f64 + (self.base_lr - self.min_lr) as f64 * cos) as f32
    }
}
