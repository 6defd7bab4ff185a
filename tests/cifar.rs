//! The CIFAR reader on the real files in ../shared/data, on malformed files,
//! and the batch transform (crop, flip, normalization).

use std::path::{Path, PathBuf};

use lwpf::Error;
use lwpf::data::cifar::{self, IMAGE_BYTES, Variant};
use lwpf::data::{self, CIFAR10_MEAN, CIFAR10_STD, Transform};

fn cifar10_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin")
}

fn cifar100_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-100-binary")
}

#[test]
fn cifar10_test_set_is_complete_and_balanced() {
    let set = cifar::read_file(&cifar10_dir().join("test_batch.bin"), Variant::Cifar10).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!(set.images.len(), 10_000 * IMAGE_BYTES);
    assert_eq!(set.class_counts(), vec![1000; 10]);
    // The official test set opens with cat, ship, ship, airplane, frog, frog,
    // automobile, frog, cat, automobile.
    let first: Vec<usize> = (0..10).map(|i| set.label(i)).collect();
    assert_eq!(first, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert!(set.coarse_labels.is_empty());
}

#[test]
fn cifar10_directory_loads_the_training_subset_and_the_test_set() {
    let split = cifar::load_cifar10(&cifar10_dir()).unwrap();
    assert_eq!(split.train.len(), 10_000);
    assert_eq!(split.train.class_counts(), vec![1000; 10]);
    assert_eq!(split.test.len(), 10_000);
    let names: Vec<_> = split.train_files.iter().filter_map(|p| p.file_name()).collect();
    assert_eq!(names, ["data_batch_1.bin"]);
    // Training images differ from test images (a swapped file would not).
    assert_ne!(split.train.image(0), split.test.image(0));
}

#[test]
fn cifar100_test_file_has_its_twenty_images_with_both_labels() {
    let set = cifar::read_file(&cifar100_dir().join("test.bin"), Variant::Cifar100).unwrap();
    assert_eq!(set.len(), 20);
    let fine: Vec<usize> = (0..20).map(|i| set.label(i)).collect();
    assert_eq!(
        fine,
        [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97, 70, 53]
    );
    // The official superclass of each fine class above (mountain, forest and
    // sea are large natural outdoor scenes (10), seal an aquatic mammal (0),
    // mushroom, apple and orange fruit and vegetables (4), ...).
    assert_eq!(
        set.coarse_labels,
        [10, 10, 0, 4, 10, 2, 11, 7, 10, 4, 10, 12, 19, 19, 5, 8, 2, 8, 2, 4]
    );
    assert_eq!(set.class_counts().iter().filter(|&&c| c > 0).count(), 18);
}

#[test]
fn cifar100_directory_without_train_bin_names_the_missing_file() {
    match cifar::load_cifar100(&cifar100_dir()) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("train.bin"), "{path:?}"),
        other => panic!("expected an I/O error naming train.bin, got {other:?}"),
    }
}

fn record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, IMAGE_BYTES));
    r
}

#[test]
fn truncated_file_names_the_file_and_the_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data_batch_1.bin");
    let mut bytes = [record(1, 7), record(2, 9)].concat();
    bytes.extend_from_slice(&record(3, 1)[..100]);
    std::fs::write(&path, &bytes).unwrap();
    match cifar::read_file(&path, Variant::Cifar10) {
        Err(Error::DataRecord { path: p, record, what }) => {
            assert_eq!(p, path);
            assert_eq!(record, 2);
            assert!(what.contains("truncated"), "{what}");
        }
        other => panic!("expected a record error, got {other:?}"),
    }
    // The message a user sees carries both.
    let msg = cifar::read_file(&path, Variant::Cifar10).unwrap_err().to_string();
    assert!(msg.contains("data_batch_1.bin") && msg.contains("record 2"), "{msg}");
}

#[test]
fn label_out_of_range_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    std::fs::write(&path, [record(4, 0), record(10, 0), record(11, 0)].concat()).unwrap();
    match cifar::read_file(&path, Variant::Cifar10) {
        Err(Error::DataRecord { record, what, .. }) => {
            assert_eq!(record, 1);
            assert!(what.contains("label 10"), "{what}");
        }
        other => panic!("expected a record error, got {other:?}"),
    }

    // CIFAR-100: coarse labels stop at 19, fine labels at 99.
    let c100 = |coarse: u8, fine: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(0u8, IMAGE_BYTES));
        r
    };
    std::fs::write(&path, [c100(19, 99), c100(20, 5)].concat()).unwrap();
    let err = cifar::read_file(&path, Variant::Cifar100).unwrap_err();
    assert!(matches!(err, Error::DataRecord { record: 1, .. }), "{err}");
    std::fs::write(&path, [c100(3, 100)].concat()).unwrap();
    let err = cifar::read_file(&path, Variant::Cifar100).unwrap_err();
    assert!(matches!(err, Error::DataRecord { record: 0, .. }), "{err}");
}

#[test]
fn directory_problems_are_errors_not_panics() {
    let missing = Path::new("/nonexistent/cifar");
    assert!(matches!(cifar::load_cifar10(missing), Err(Error::Data { .. })));

    let dir = tempfile::tempdir().unwrap();
    let err = cifar::load_cifar10(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no training file"), "{err}");

    std::fs::write(dir.path().join("data_batch_2.bin"), record(5, 3)).unwrap();
    match cifar::load_cifar10(dir.path()) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("test_batch.bin")),
        other => panic!("expected an I/O error naming test_batch.bin, got {other:?}"),
    }
    std::fs::write(dir.path().join("test_batch.bin"), record(0, 3)).unwrap();
    let split = cifar::load_cifar10(dir.path()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (1, 1));
    assert_eq!(split.train.label(0), 5);
}

/// A one-image set whose R plane holds `x + 4 y` at (y, x), G 200 and B 10.
fn gradient_image() -> cifar::CifarSet {
    let mut bytes = vec![0u8];
    bytes.extend((0..1024).map(|i| ((i % 32) + 4 * (i / 32)) as u8));
    bytes.extend(std::iter::repeat_n(200u8, 1024));
    bytes.extend(std::iter::repeat_n(10u8, 1024));
    cifar::parse(&bytes, Variant::Cifar10, Path::new("memory")).unwrap()
}

fn norm(pixel: f32, c: usize) -> f32 {
    (pixel / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
}

#[test]
fn batches_are_normalized_per_channel() {
    let set = gradient_image();
    let b = data::batch(&set, &[0], &[Transform::NONE]).unwrap();
    assert_eq!(b.shape(), &[1, 3, 32, 32]);
    let d = b.data();
    let r = |y: usize, x: usize| (x + 4 * y) as f32;
    for (y, x) in [(0, 0), (5, 7), (31, 31)] {
        assert!((d[y * 32 + x] - norm(r(y, x), 0)).abs() < 1e-5);
    }
    assert!((d[1024 + 100] - norm(200.0, 1)).abs() < 1e-5);
    assert!((d[2048 + 1023] - norm(10.0, 2)).abs() < 1e-5);
}

#[test]
fn crop_shifts_with_black_padding_and_flip_mirrors() {
    let set = gradient_image();
    let r = |y: usize, x: usize| (x + 4 * y) as f32;

    // Crop at (dy, dx) = (0, 8) of the image padded by 4: output (y, x) is
    // source (y - 4, x + 4), black where that leaves the image.
    let t = Transform { dy: 0, dx: 8, pad: 4, flip: false };
    let d = data::batch(&set, &[0], &[t]).unwrap().to_vec();
    assert!((d[0] - norm(0.0, 0)).abs() < 1e-5, "top rows are padding");
    assert!((d[4 * 32] - norm(r(0, 4), 0)).abs() < 1e-5);
    assert!((d[10 * 32 + 27] - norm(r(6, 31), 0)).abs() < 1e-5);
    assert!((d[10 * 32 + 28] - norm(0.0, 0)).abs() < 1e-5, "right columns are padding");
    assert!((d[1024 + 10 * 32 + 28] - norm(0.0, 1)).abs() < 1e-5);

    let flip = Transform { flip: true, ..Transform::NONE };
    let d = data::batch(&set, &[0], &[flip]).unwrap().to_vec();
    for (y, x) in [(0, 0), (3, 5), (31, 30)] {
        assert!((d[y * 32 + x] - norm(r(y, 31 - x), 0)).abs() < 1e-5);
    }
}

#[test]
fn bad_batch_requests_are_errors() {
    let set = gradient_image();
    assert!(data::batch(&set, &[1], &[Transform::NONE]).is_err(), "index past the end");
    assert!(data::batch(&set, &[0, 0], &[Transform::NONE]).is_err(), "one transform short");
    let t = Transform { dy: 9, dx: 0, pad: 4, flip: false };
    assert!(data::batch(&set, &[0], &[t]).is_err(), "crop outside the padding");
}

#[test]
fn random_transforms_stay_in_range_and_vary() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let ts: Vec<Transform> =
        (0..2000).map(|_| Transform::draw(&mut rng, data::Augment::CIFAR)).collect();
    assert!(ts.iter().all(|t| t.dy <= 8 && t.dx <= 8 && t.pad == 4));
    let flips = ts.iter().filter(|t| t.flip).count();
    // Binomial(2000, 1/2): standard deviation 22; 5 of them.
    assert!((flips as i64 - 1000).abs() < 110, "{flips} flips");
    for v in 0..=8 {
        assert!(ts.iter().any(|t| t.dx == v) && ts.iter().any(|t| t.dy == v));
    }
}
