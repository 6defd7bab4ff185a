//! The bit-pattern data set's invariants (MODELS.md 1.4).

use lwpf::data::bitpattern::{BitPatternConfig, BitPatternSet, bit};

fn paper_set(seed: u64) -> BitPatternSet {
    BitPatternSet::generate(BitPatternConfig { seed, ..Default::default() }).unwrap()
}

#[test]
fn the_paper_sizes() {
    let set = paper_set(0);
    assert_eq!(set.len(), 2048);
    assert_eq!(set.instances.len(), 2048 * 16);
    assert_eq!(set.signals.len(), 8);
    assert_eq!(set.bags_tensor(&[0, 1, 2]).shape(), &[3, 16, 8]);
}

#[test]
fn signals_are_distinct_and_non_zero() {
    for seed in 0..5 {
        let set = paper_set(seed);
        assert!(set.signals.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert!(set.signals.iter().all(|&s| s != 0 && s < 256));
    }
}

#[test]
fn negative_bags_hold_no_signal_and_positive_bags_exactly_one() {
    for seed in 0..3 {
        let set = paper_set(seed);
        for b in 0..set.len() {
            let n = set.bag(b).iter().filter(|p| set.signals.binary_search(p).is_ok()).count();
            if set.labels[b] {
                assert_eq!(n, 1, "seed {seed}, positive bag {b}");
                let pos = set.signal_position[b].unwrap();
                assert!(set.signals.contains(&set.bag(b)[pos]));
            } else {
                assert_eq!(n, 0, "seed {seed}, negative bag {b}");
                assert!(set.signal_position[b].is_none());
            }
        }
        assert!(set.labels[..1024].iter().all(|&l| l) && set.labels[1024..].iter().all(|&l| !l));
    }
}

#[test]
fn no_instance_is_all_zero() {
    let set = paper_set(1);
    assert!(set.instances.iter().all(|&p| p != 0 && p < 256));
    let t = set.bags_tensor(&(0..set.len()).collect::<Vec<_>>());
    for row in t.data().chunks(8) {
        assert!(row.contains(&1.0), "an all-zero row");
        assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
    }
}

#[test]
fn splits_are_balanced_disjoint_and_the_papers() {
    let set = paper_set(2);
    let (train, eval) = (set.train_indices(), set.eval_indices());
    assert_eq!(train, (256..1792).collect::<Vec<_>>());
    assert_eq!(eval, (0..256).chain(1792..2048).collect::<Vec<_>>());
    let positives = |ix: &[usize]| ix.iter().filter(|&&b| set.labels[b]).count();
    assert_eq!((positives(&train), train.len()), (768, 1536));
    assert_eq!((positives(&eval), eval.len()), (256, 512));
    assert_eq!(set.targets(&[0, 2047]), vec![1.0, 0.0]);
}

#[test]
fn backgrounds_and_signals_are_spread() {
    // Every background pattern and every signal occurs, roughly uniformly.
    let set = paper_set(3);
    let mut counts = vec![0usize; 256];
    for &p in &set.instances {
        counts[p as usize] += 1;
    }
    let background: Vec<usize> =
        (1..256).filter(|p| set.signals.binary_search(&(*p as u16)).is_err()).collect();
    assert_eq!(background.len(), 247);
    // 2048 * 16 - 1024 background draws over 247 patterns: about 128 each.
    for &p in &background {
        assert!((60..220).contains(&counts[p]), "pattern {p}: {} draws", counts[p]);
    }
    for &s in &set.signals {
        // 1024 signals over 8 patterns: about 128 each.
        assert!((70..200).contains(&counts[s as usize]), "signal {s}: {}", counts[s as usize]);
    }
    assert_eq!(set.unique_instances(&set.train_indices()).len(), 255);
}

#[test]
fn a_seed_gives_one_set() {
    let (a, b, c) = (paper_set(7), paper_set(7), paper_set(8));
    assert_eq!(a.instances, b.instances);
    assert_eq!(a.signals, b.signals);
    assert_ne!(a.instances, c.instances);
}

#[test]
fn bits_read_left_to_right() {
    let bits: Vec<f32> = (0..8).map(|i| bit(0b0011_1001, 8, i)).collect();
    assert_eq!(bits, vec![0., 0., 1., 1., 1., 0., 0., 1.]);
}

#[test]
fn bad_sizes_are_errors() {
    let bad = [
        BitPatternConfig { bags: 100, ..Default::default() },
        BitPatternConfig { bits: 1, ..Default::default() },
        BitPatternConfig { bits: 3, signals: 7, ..Default::default() },
        BitPatternConfig { signals: 0, ..Default::default() },
        BitPatternConfig { instances_per_bag: 0, ..Default::default() },
    ];
    for c in bad {
        assert!(BitPatternSet::generate(c).is_err(), "{c:?}");
    }
    let small = BitPatternSet::generate(BitPatternConfig {
        bags: 16,
        bits: 3,
        signals: 6,
        ..Default::default()
    });
    assert!(small.is_ok());
}
