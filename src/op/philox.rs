//! Philox-4x32-10, the counter-based generator behind the threshold draw and
//! the dropout mask. A counter-based generator lets every backend (CPU paths,
//! CUDA kernels, their host emulation, and the backward pass) draw the same
//! random number for the same entry without storing or sharing any state: the
//! number is a pure function of (seed, entry index).
//!
//! Streams, so that the two uses never share counters:
//! - dropout: counter `[e / 4 (low 32 bits), e / 4 (high 32 bits), 0, 0]`, word
//!   `e % 4`, for the entry's flat index `e = ((bh * n_q) + i) * n_k + j`;
//! - threshold noise: counter `[0, 0, 1, 0]`, words 0 and 1 (Box-Muller).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Stream id in counter word 2 for the dropout mask.
pub const STREAM_DROPOUT: u32 = 0;
/// Stream id in counter word 2 for the threshold noise.
pub const STREAM_THRESHOLD: u32 = 1;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox-4x32 on `counter` under `key`.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The Philox key of a call's seed.
#[inline]
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// Maps the top 24 bits of a word to a float in [0, 1) exactly.
#[inline]
pub fn unit_f32(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The four dropout words of the group of entries `4 * group .. 4 * group + 3`.
#[inline]
pub fn dropout_words(key: [u32; 2], group: u64) -> [u32; 4] {
    philox4x32_10([group as u32, (group >> 32) as u32, STREAM_DROPOUT, 0], key)
}

/// Whether entry `e` survives dropout with probability `p` of being dropped.
#[inline]
pub fn dropout_keep(key: [u32; 2], e: u64, p: f32) -> bool {
    unit_f32(dropout_words(key, e >> 2)[(e & 3) as usize]) >= p
}

/// Inverted-dropout scale of entry `e`: `1 / (1 - p)` if it survives, else 0
/// (1 when `p` is 0, without drawing).
#[inline]
pub fn dropout_scale(key: [u32; 2], e: u64, p: f32) -> f32 {
    if p == 0.0 {
        1.0
    } else if dropout_keep(key, e, p) {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// The call's standard normal draw for the threshold noise (Box-Muller on the
/// first two words of the threshold stream).
pub fn threshold_eps(seed: u64) -> f32 {
    let w = philox4x32_10([0, 0, STREAM_THRESHOLD, 0], key_of(seed));
    // u1 in (0, 1] so that ln(u1) is finite.
    let u1 = ((w[0] >> 8) as f64 + 1.0) / 16_777_216.0;
    let u2 = (w[1] >> 8) as f64 / 16_777_216.0;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors published with the Random123 library.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn dropout_rate_matches_p() {
        let key = key_of(12345);
        let n = 200_000u64;
        for p in [0.1f32, 0.5, 0.9] {
            let kept = (0..n).filter(|&e| dropout_keep(key, e, p)).count() as f64;
            let rate = kept / n as f64;
            // Binomial standard deviation is below 0.0012 here; 5 sigma.
            assert!((rate - (1.0 - p as f64)).abs() < 0.006, "p={p} rate={rate}");
        }
    }

    #[test]
    fn threshold_eps_is_standard_normal() {
        let draws: Vec<f64> = (0..20_000u64).map(|s| threshold_eps(s) as f64).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        assert_eq!(threshold_eps(7), threshold_eps(7));
    }
}
