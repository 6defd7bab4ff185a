//! The tensor type of the autograd: a shape and the storage of its elements.
//!
//! Elements are `f32`, row-major, contiguous. [`Storage`] names where they
//! live; today that is host memory only. Layers never touch storage directly:
//! they call the tape's ops, and the ops reach the elements through the few
//! methods here, so a device storage adds match arms in the ops, not changes in
//! the layers.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Where the elements of a tensor live.
///
/// Host storage is reference counted so that a reshape, or a parameter read by
/// a tape, shares the elements instead of copying them.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(Arc<Vec<f32>>),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
        }
    }
}

/// A dense row-major `f32` tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; fails when the counts differ.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(Error::ShapeMismatch {
                tensor: "tensor data",
                got: data.len(),
                expected,
                shape: format!("{shape:?}"),
            });
        }
        Ok(Tensor::from_parts(shape.to_vec(), data))
    }

    /// Builds a tensor whose element count the caller has already checked.
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, storage: Storage::Cpu(Arc::new(data)) }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor with every element `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_parts(shape.to_vec(), vec![value; n])
    }

    /// A tensor of shape `[]` holding one number.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_parts(Vec::new(), vec![value])
    }

    /// An empty placeholder (shape `[0]`).
    pub(crate) fn empty() -> Tensor {
        Tensor::from_parts(vec![0], Vec::new())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.storage.len()
    }

    /// The elements, row-major, in host memory.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Cpu(v) => v,
        }
    }

    /// The elements for writing; copies them first if they are shared.
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Cpu(v) => Arc::make_mut(v).as_mut_slice(),
        }
    }

    /// A copy of the elements in host memory.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// The first element (the value of a scalar).
    pub fn item(&self) -> Option<f32> {
        self.data().first().copied()
    }

    /// The same elements under another shape of equal element count; the
    /// storage is shared, not copied.
    pub fn reshaped(&self, shape: &[usize]) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if expected != self.numel() {
            return Err(Error::OpShape {
                op: "reshape",
                what: format!("cannot view {:?} as {shape:?}", self.shape),
            });
        }
        Ok(Tensor { shape: shape.to_vec(), storage: self.storage.clone() })
    }
}
