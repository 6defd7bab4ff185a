//! Datasets and the batches fed to the models: the CIFAR reader, the training
//! augmentation (random crop with zero padding, horizontal flip) and the
//! normalization.

pub mod bitpattern;
pub mod cifar;
pub mod repertoire;

use rand::{Rng, RngExt};
use rayon::prelude::*;

use crate::autograd::Tensor;
use crate::error::{Error, Result};
use cifar::{CifarSet, IMAGE_BYTES, SIDE};

/// Per-channel mean of the CIFAR-10 training images (pixels scaled to [0, 1]).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The random part of the training transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the random crop back to 32 x 32.
    pub pad: usize,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The usual CIFAR recipe: pad 4, random crop, random flip.
    pub const CIFAR: Augment = Augment { pad: 4, flip: true };
}

/// Where one image is cropped and whether it is flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Offset of the crop in the padded image, 0 ..= 2 * pad.
    pub dy: usize,
    pub dx: usize,
    pub pad: usize,
    pub flip: bool,
}

impl Transform {
    /// The identity (evaluation).
    pub const NONE: Transform = Transform { dy: 0, dx: 0, pad: 0, flip: false };

    pub fn draw(rng: &mut impl Rng, aug: Augment) -> Transform {
        let span = 2 * aug.pad + 1;
        Transform {
            dy: rng.random_range(0..span),
            dx: rng.random_range(0..span),
            pad: aug.pad,
            flip: aug.flip && rng.random::<bool>(),
        }
    }
}

/// Images `indices` of `set` as a normalized batch `[B, 3, 32, 32]`, each
/// transformed by its entry of `transforms` (crop first, then flip, as
/// torchvision's RandomCrop then RandomHorizontalFlip). Padding is black
/// before normalization.
pub fn batch(set: &CifarSet, indices: &[usize], transforms: &[Transform]) -> Result<Tensor> {
    if indices.len() != transforms.len() {
        return Err(Error::InvalidConfig {
            what: format!("{} images but {} transforms", indices.len(), transforms.len()),
        });
    }
    if let Some(&i) = indices.iter().find(|&&i| i >= set.len()) {
        return Err(Error::InvalidConfig { what: format!("image {i} of a set of {}", set.len()) });
    }
    if let Some(t) = transforms.iter().find(|t| t.dy > 2 * t.pad || t.dx > 2 * t.pad) {
        return Err(Error::InvalidConfig { what: format!("crop {t:?} outside the padding") });
    }
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * CIFAR10_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| CIFAR10_MEAN[c] / CIFAR10_STD[c]);
    let mut out = vec![0.0f32; indices.len() * IMAGE_BYTES];
    out.par_chunks_mut(IMAGE_BYTES).zip(indices.par_iter().zip(transforms)).for_each(
        |(dst, (&i, t))| {
            let src = set.image(i);
            for c in 0..3 {
                let plane = &src[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
                let dplane = &mut dst[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
                for y in 0..SIDE {
                    // Source row in the unpadded image, if the crop is inside it.
                    let sy = (y + t.dy).checked_sub(t.pad).filter(|&v| v < SIDE);
                    for x in 0..SIDE {
                        let cx = if t.flip { SIDE - 1 - x } else { x };
                        let sx = (cx + t.dx).checked_sub(t.pad).filter(|&v| v < SIDE);
                        let pixel = match (sy, sx) {
                            (Some(sy), Some(sx)) => plane[sy * SIDE + sx] as f32,
                            _ => 0.0,
                        };
                        dplane[y * SIDE + x] = pixel * scale[c] - shift[c];
                    }
                }
            }
        },
    );
    Ok(Tensor::from_parts(vec![indices.len(), 3, SIDE, SIDE], out))
}
