//! The CUDA kernel sources run under host emulation: the emulation's own
//! pieces against plain loops, then the kernels against the CPU reference
//! (the checks in kernel_checks/). Shapes stay small: an emulated barrier
//! costs about a tenth of a millisecond.

mod common;
mod kernel_checks;

use common::*;
use lwpf::op::kernels::emulated::{self, selftest};
use lwpf::op::{AttentionConfig, AttentionInput, Forgetting, Pfu, Precision, Shape};

// ---- The emulation's own pieces ----------------------------------------------

#[test]
fn barrier_and_shared_memory() {
    // 3 blocks of 96 threads (a block that is not a power of two), 5 rounds.
    let (grid, block, rounds) = (3u32, 96u32, 5);
    let got = selftest::barrier(grid, block, rounds);
    for b in 0..grid {
        for t in 0..block {
            let nb = (t + 1) % block;
            let want = (0..rounds as u32).fold(0u32, |s, k| {
                s.wrapping_add(
                    (b + 1).wrapping_mul(1_000_003).wrapping_add(k * 7919).wrapping_add(nb),
                )
            });
            assert_eq!(got[(b * block + t) as usize], want, "block {b} thread {t}");
        }
    }
}

#[test]
fn dynamic_shared_memory() {
    // 2 blocks of 96 threads over 20000 words (78 KB, past the 48 KB of a
    // static array): every word is written and read back by another thread.
    let (grid, block, words) = (2u32, 96u32, 20_000usize);
    let got = selftest::dynamic_smem(grid, block, words as i32);
    for b in 0..grid as usize {
        for i in 0..words {
            let want = (b as u32 + 1).wrapping_mul(1_000_003).wrapping_add((words - 1 - i) as u32);
            assert_eq!(got[b * words + i], want, "block {b} word {i}");
        }
    }
}

#[test]
fn warp_shuffles_and_votes() {
    // Two warps with different values; warp 1 has a 40, warp 0 none.
    let input: Vec<i32> = (0..64).map(|t| (t * 13 + 5) % 97 - 20).collect();
    let got = selftest::warp(&input);
    for t in 0..64usize {
        let (w, l) = (t / 32 * 32, t % 32);
        let v = |lane: usize| input[w + lane];
        let o = &got[8 * t..][..8];
        assert_eq!(o[0], v((l * 7) % 32), "shfl, thread {t}");
        assert_eq!(o[1], v(l ^ 5), "shfl_xor, thread {t}");
        assert_eq!(o[2], if l + 3 < 32 { v(l + 3) } else { v(l) }, "shfl_down {t}");
        assert_eq!(o[3], if l >= 2 { v(l - 2) } else { v(l) }, "shfl_up {t}");
        assert_eq!(o[4], v(l / 8 * 8 + 1), "width-8 shfl, thread {t}");
        let ballot = (0..32).fold(0u32, |m, k| m | (((v(k) & 1) as u32) << k));
        assert_eq!(o[5] as u32, ballot, "ballot, thread {t}");
        assert_eq!(o[6], (0..32).any(|k| v(k) == 40) as i32, "any, thread {t}");
        assert_eq!(o[7], (0..32).all(|k| v(k) >= 0) as i32, "all, thread {t}");
    }
    assert!((0..32).any(|k| input[32 + k] == 40), "the test needs a 40 in warp 1");
}

#[test]
fn atomics_from_every_thread() {
    let (grid, block) = (4u32, 64u32);
    let (u32s, sum, fsum) = selftest::atomics(grid, block);
    let n = grid * block;
    assert_eq!(u32s[0], n);
    assert_eq!(u32s[1], (0..n).map(|t| t ^ 0x55).max().unwrap());
    assert_eq!(u32s[2], (0..n).map(|t| t ^ 0x55).min().unwrap());
    assert_eq!(u32s[3], n, "shared-memory counters, summed over blocks");
    assert_eq!(sum, (0..n as u64).sum::<u64>());
    assert_eq!(fsum, 0.5 * n as f32);
}

#[test]
fn mma_wrapper_matches_loops() {
    kernel_checks::mma_matches_loops(|w, a, b, c| Ok(selftest::mma(w, a, b, c)));
}

#[test]
fn sixteen_bit_loads_match_half() {
    kernel_checks::conversions_match_half(|b| Ok(selftest::convert(b)));
}

// ---- The kernels ---------------------------------------------------------------

#[test]
fn median_kernels_are_exact() {
    kernel_checks::median_is_exact(emulated::forward);
}

#[test]
fn forward_matches_reference_on_option_matrix() {
    kernel_checks::forward_matches_reference(
        emulated::forward,
        &kernel_checks::ragged_kernel_shapes(),
    );
}

#[test]
fn rows_with_every_key_forgotten() {
    kernel_checks::rows_with_every_key_forgotten(emulated::forward);
}

#[test]
fn dropout_mask_is_philox_bit_for_bit() {
    kernel_checks::dropout_mask_is_philox(emulated::forward);
}

#[test]
fn forward_in_bf16_matches_reference() {
    kernel_checks::forward_in_precision(emulated::forward, Precision::Bf16);
}

#[test]
fn forward_in_f16_matches_reference() {
    kernel_checks::forward_in_precision(emulated::forward, Precision::F16);
}

/// The emulated mma adds its products in the order of the CUDA cores' fmaf
/// chain, so on continuous inputs the 16-bit kernels (tensor-core scores,
/// 16-bit loads) must give the f32 kernels' bits on the rounded inputs:
/// median, threshold, counts, O and lse. On a GPU the tensor cores may round
/// their sums otherwise; there the dyadic checks above hold instead.
#[test]
fn sixteen_bit_forward_gives_the_f32_bits_on_rounded_inputs() {
    let seed = run_seed("16-bit forward bits");
    let mut r = rng(seed);
    let shape = Shape { d_v: 9, ..Shape::new(2, 1, 37, 45, 36) };
    let (q, k, v) = (
        uniform(&mut r, shape.q_len()),
        uniform(&mut r, shape.k_len()),
        uniform(&mut r, shape.v_len()),
    );
    let m = mask(&mut r, shape.batch, shape.n_k, false);
    for precision in [Precision::Bf16, Precision::F16] {
        let round = |x: &[f32]| x.iter().map(|&a| precision.round(a)).collect::<Vec<_>>();
        let (qr, kr, vr) = (round(&q), round(&k), round(&v));
        let input = AttentionInput { q: &q, k: &k, v: &v, valid: Some(&m), shape };
        let rounded = AttentionInput { q: &qr, k: &kr, v: &vr, valid: Some(&m), shape };
        for forgetting in [Forgetting::Relu, Forgetting::Pfu(Pfu::median_preset())] {
            let cfg = AttentionConfig {
                forgetting,
                training: true,
                dropout: 0.2,
                seed,
                precision,
                ..Default::default()
            };
            let name = format!("{} {}", precision.name(), forgetting.name());
            let got = emulated::forward(&input, &cfg).expect("16-bit kernels");
            let f32_cfg = AttentionConfig { precision: Precision::F32, ..cfg };
            let want = emulated::forward(&rounded, &f32_cfg).expect("f32 kernels");
            assert_eq!(got.stats, want.stats, "{name}: statistics");
            common::assert_same_bits(&format!("{name}: O"), &got.o, &want.o);
            common::assert_same_bits(&format!("{name}: lse"), &got.lse, &want.lse);
        }
    }
}
