//! The bit-pattern data set of the paper's section 4.1: multiple-instance
//! learning on bags of short bit strings.
//!
//! Every instance of every bag is a non-zero pattern of `bits` bits. A few
//! *signal* patterns are set aside; negative bags hold none of them, and each
//! positive bag holds exactly one, at a random position. A bag's label says
//! whether it holds a signal, so a network must find one instance among the
//! bag's many to classify it.
//!
//! Generation (MODELS.md 1.4), all from one seed:
//! 1. draw `signals` distinct non-zero patterns;
//! 2. the first half of the bags are positive, the second half negative;
//!    every instance is drawn uniformly from the non-zero patterns that are not
//!    signals;
//! 3. each positive bag gets one uniformly placed instance overwritten by a
//!    uniformly chosen signal;
//! 4. the evaluation split is the first and the last eighth of the bags
//!    (equal parts positive and negative), training the middle three
//!    quarters (also balanced).
//!
//! The reference code draws with PyTorch's generator; this one draws with the
//! crate's, so it reproduces the structure, not the reference's bits.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::autograd::Tensor;
use crate::error::{Error, Result};

/// Sizes of the data set; [`BitPatternConfig::default`] is the paper's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitPatternConfig {
    /// Number of bags; a multiple of 8 so that every split is balanced.
    pub bags: usize,
    pub instances_per_bag: usize,
    /// Bits per instance, 2 to 16.
    pub bits: usize,
    /// Number of distinct signal patterns.
    pub signals: usize,
    pub seed: u64,
}

impl Default for BitPatternConfig {
    fn default() -> Self {
        BitPatternConfig { bags: 2048, instances_per_bag: 16, bits: 8, signals: 8, seed: 0 }
    }
}

impl BitPatternConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        if self.bags == 0 || !self.bags.is_multiple_of(8) {
            return bad(format!("{} bags: must be a positive multiple of 8", self.bags));
        }
        if self.instances_per_bag == 0 {
            return bad("bags must hold at least one instance".into());
        }
        if !(2..=16).contains(&self.bits) {
            return bad(format!("{} bits per instance: must lie in 2..=16", self.bits));
        }
        let nonzero = (1usize << self.bits) - 1;
        if self.signals == 0 || self.signals >= nonzero {
            return bad(format!(
                "{} signals: need at least one, and at least one of the {nonzero} non-zero \
                 patterns left for the background",
                self.signals
            ));
        }
        Ok(())
    }
}

/// A generated data set.
#[derive(Clone, Debug)]
pub struct BitPatternSet {
    pub config: BitPatternConfig,
    /// The signal patterns, ascending.
    pub signals: Vec<u16>,
    /// Every instance, bag after bag: `bags * instances_per_bag` patterns.
    pub instances: Vec<u16>,
    /// Per bag: whether it holds a signal.
    pub labels: Vec<bool>,
    /// Per positive bag, the position of its signal; `None` for negative bags.
    pub signal_position: Vec<Option<usize>>,
}

/// Bit `i` of `pattern` as read left to right (`i = 0` is the most
/// significant of `bits`), so `0b0011_1001` reads `00111001`.
pub fn bit(pattern: u16, bits: usize, i: usize) -> f32 {
    ((pattern >> (bits - 1 - i)) & 1) as f32
}

impl BitPatternSet {
    /// Generates the data set of `config`.
    pub fn generate(config: BitPatternConfig) -> Result<BitPatternSet> {
        config.validate()?;
        let mut rng = SmallRng::seed_from_u64(config.seed ^ 0xb17_9a77_e125);
        let nonzero: Vec<u16> = (1..(1u32 << config.bits)).map(|p| p as u16).collect();

        // 1. Distinct signals: the first few of a shuffled list of all
        // non-zero patterns.
        let mut shuffled = nonzero.clone();
        shuffled.shuffle(&mut rng);
        let mut signals = shuffled[..config.signals].to_vec();
        signals.sort_unstable();
        let background: Vec<u16> =
            nonzero.iter().copied().filter(|p| signals.binary_search(p).is_err()).collect();

        // 2. Every instance from the background.
        let n = config.instances_per_bag;
        let mut instances: Vec<u16> = (0..config.bags * n)
            .map(|_| background[rng.random_range(0..background.len())])
            .collect();

        // 3. One signal in each positive bag.
        let positives = config.bags / 2;
        let mut signal_position = vec![None; config.bags];
        for (bag, slot) in signal_position.iter_mut().enumerate().take(positives) {
            let pos = rng.random_range(0..n);
            instances[bag * n + pos] = signals[rng.random_range(0..signals.len())];
            *slot = Some(pos);
        }
        let labels = (0..config.bags).map(|b| b < positives).collect();
        Ok(BitPatternSet { config, signals, instances, labels, signal_position })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The instances of bag `b`.
    pub fn bag(&self, b: usize) -> &[u16] {
        let n = self.config.instances_per_bag;
        &self.instances[b * n..(b + 1) * n]
    }

    /// Indices of the training bags: the middle three quarters.
    pub fn train_indices(&self) -> Vec<usize> {
        let eighth = self.len() / 8;
        (eighth..self.len() - eighth).collect()
    }

    /// Indices of the evaluation bags: the first and the last eighth.
    pub fn eval_indices(&self) -> Vec<usize> {
        let eighth = self.len() / 8;
        (0..eighth).chain(self.len() - eighth..self.len()).collect()
    }

    /// Bags `indices` as a tensor `[n, instances, bits]` of 0.0 / 1.0.
    pub fn bags_tensor(&self, indices: &[usize]) -> Tensor {
        let (n, bits) = (self.config.instances_per_bag, self.config.bits);
        let mut data = Vec::with_capacity(indices.len() * n * bits);
        for &b in indices {
            for &p in self.bag(b) {
                data.extend((0..bits).map(|i| bit(p, bits, i)));
            }
        }
        Tensor::from_parts(vec![indices.len(), n, bits], data)
    }

    /// Labels of bags `indices` as 1.0 (positive) / 0.0.
    pub fn targets(&self, indices: &[usize]) -> Vec<f32> {
        indices.iter().map(|&b| if self.labels[b] { 1.0 } else { 0.0 }).collect()
    }

    /// The distinct instances of the bags `indices`, ascending.
    pub fn unique_instances(&self, indices: &[usize]) -> Vec<u16> {
        let mut seen = vec![false; 1 << self.config.bits];
        for &b in indices {
            for &p in self.bag(b) {
                seen[p as usize] = true;
            }
        }
        (0..seen.len()).filter(|&p| seen[p]).map(|p| p as u16).collect()
    }

    /// Patterns as rows of 0.0 / 1.0: `[patterns.len(), bits]`.
    pub fn patterns_tensor(&self, patterns: &[u16]) -> Tensor {
        let bits = self.config.bits;
        let data = patterns.iter().flat_map(|&p| (0..bits).map(move |i| bit(p, bits, i))).collect();
        Tensor::from_parts(vec![patterns.len(), bits], data)
    }
}
