//! # lwpf: partially forgetting attention
//!
//! Attention is the update rule of a modern Hopfield network. Learning with
//! Partial Forgetting (LwPF; Ota, Sato, Kawakami, Tanaka, Inoue, AISTATS 2023)
//! passes every attention score through a *forgetting function* before the
//! softmax: a score at or below a threshold `z` is replaced by a bias `b`, and
//! its memory drops out of the retrieval. This crate implements that op
//! ([`op`]) on several backends that agree with one contract, a small autograd
//! ([`autograd`]) and the paper's models built around the op.

pub mod autograd;
pub mod data;
pub mod error;
pub mod gemm;
pub mod models;
pub mod nn;
pub mod op;
pub mod optim;
pub mod plot;
pub mod train;

pub use error::{Error, Result};

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
