//! Reader for the CIFAR-10 and CIFAR-100 binary versions.
//!
//! A file is a plain sequence of records, no header: CIFAR-10 records are one
//! label byte then 3,072 pixel bytes, CIFAR-100 records a coarse and a fine
//! label byte then the same pixels. The pixels are three 32 x 32 row-major
//! planes, R then G then B. The reader checks the size and every label and
//! names the file and the record of anything malformed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes of one image: 3 planes of 32 x 32.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Side of an image in pixels.
pub const SIDE: usize = 32;

/// Which of the two datasets a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    /// Label bytes in front of each image.
    pub fn label_bytes(&self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }

    pub fn record_bytes(&self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    /// Number of classes of the (fine) label.
    pub fn classes(&self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
}

/// CIFAR-100's superclasses.
pub const CIFAR100_COARSE_CLASSES: usize = 20;

/// Images and labels of one or more files of a variant.
#[derive(Clone, Debug)]
pub struct CifarSet {
    pub variant: Variant,
    /// `len * IMAGE_BYTES` pixel bytes, image after image.
    pub images: Vec<u8>,
    /// The label of CIFAR-10, the fine label of CIFAR-100.
    pub labels: Vec<u8>,
    /// CIFAR-100's coarse labels; empty for CIFAR-10.
    pub coarse_labels: Vec<u8>,
}

impl CifarSet {
    fn empty(variant: Variant) -> CifarSet {
        CifarSet { variant, images: Vec::new(), labels: Vec::new(), coarse_labels: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 3,072 pixel bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    pub fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    /// Images per (fine) class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.variant.classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    fn append(&mut self, other: CifarSet) {
        self.images.extend(other.images);
        self.labels.extend(other.labels);
        self.coarse_labels.extend(other.coarse_labels);
    }
}

/// Decodes the bytes of one file; `path` only names it in errors.
pub fn parse(bytes: &[u8], variant: Variant, path: &Path) -> Result<CifarSet> {
    let rec = variant.record_bytes();
    if !bytes.len().is_multiple_of(rec) {
        return Err(Error::DataRecord {
            path: path.to_path_buf(),
            record: bytes.len() / rec,
            what: format!(
                "truncated: {} bytes is not a whole number of {rec}-byte records \
                 (the last record has {} bytes)",
                bytes.len(),
                bytes.len() % rec
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut set = CifarSet::empty(variant);
    set.images.reserve(n * IMAGE_BYTES);
    set.labels.reserve(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let check = |label: u8, classes: usize, which: &str| {
            if (label as usize) < classes {
                Ok(label)
            } else {
                Err(Error::DataRecord {
                    path: path.to_path_buf(),
                    record: i,
                    what: format!("{which}label {label} outside 0..{classes}"),
                })
            }
        };
        match variant {
            Variant::Cifar10 => set.labels.push(check(r[0], 10, "")?),
            Variant::Cifar100 => {
                set.coarse_labels.push(check(r[0], CIFAR100_COARSE_CLASSES, "coarse ")?);
                set.labels.push(check(r[1], 100, "fine ")?);
            }
        }
        set.images.extend_from_slice(&r[variant.label_bytes()..]);
    }
    Ok(set)
}

/// Reads one file of `variant`.
pub fn read_file(path: &Path, variant: Variant) -> Result<CifarSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, variant, path)
}

/// Reads the files in order and concatenates them.
pub fn read_files(paths: &[PathBuf], variant: Variant) -> Result<CifarSet> {
    let mut set = CifarSet::empty(variant);
    for p in paths {
        set.append(read_file(p, variant)?);
    }
    Ok(set)
}

/// A training and a test set.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: CifarSet,
    pub test: CifarSet,
    /// The files the training set was read from.
    pub train_files: Vec<PathBuf>,
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Data { path: dir.to_path_buf(), what: "no such data directory".into() })
    }
}

/// CIFAR-10 from the official directory layout: `data_batch_1.bin` ..
/// `data_batch_5.bin` (whichever exist, at least one) for training and
/// `test_batch.bin` for test.
pub fn load_cifar10(dir: &Path) -> Result<Split> {
    check_dir(dir)?;
    let train_files: Vec<PathBuf> =
        (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).filter(|p| p.is_file()).collect();
    if train_files.is_empty() {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            what: "no training file (data_batch_1.bin .. data_batch_5.bin)".into(),
        });
    }
    let train = read_files(&train_files, Variant::Cifar10)?;
    let test = read_file(&dir.join("test_batch.bin"), Variant::Cifar10)?;
    Ok(Split { train, test, train_files })
}

/// CIFAR-100 from the official directory layout: `train.bin` and `test.bin`.
pub fn load_cifar100(dir: &Path) -> Result<Split> {
    check_dir(dir)?;
    let train_file = dir.join("train.bin");
    let train = read_file(&train_file, Variant::Cifar100)?;
    let test = read_file(&dir.join("test.bin"), Variant::Cifar100)?;
    Ok(Split { train, test, train_files: vec![train_file] })
}

/// Where CIFAR-10 lives by default: `../shared/data/cifar-10-batches-bin`
/// from the current directory (the repository root), or else from the crate's
/// source directory, so a binary started elsewhere in the checkout finds it.
pub fn default_cifar10_dir() -> PathBuf {
    let rel = Path::new("../shared/data/cifar-10-batches-bin");
    if rel.is_dir() {
        return rel.to_path_buf();
    }
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if from_manifest.is_dir() { from_manifest } else { rel.to_path_buf() }
}
