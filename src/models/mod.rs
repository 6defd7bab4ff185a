//! The paper's models, built from [`crate::nn`] layers.

pub mod bitpattern;
pub mod deeprc;
pub mod vit;

pub use vit::{Vit, VitConfig};
