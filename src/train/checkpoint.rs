//! Checkpoints: every parameter of a store as an f32 safetensors tensor under
//! its own (timm) name, plus string metadata.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::atomic_write;
use crate::autograd::{ParamStore, Tensor};
use crate::error::{Error, Result};

fn ckpt_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), what: what.to_string() }
}

/// Encodes the store's parameters and `metadata` as safetensors bytes.
pub fn encode(store: &ParamStore, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = store
        .iter()
        .map(|(_, p)| p.value.data().iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(store.len());
    for ((_, p), b) in store.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, p.value.shape().to_vec(), b)
            .map_err(|e| ckpt_err(Path::new(&p.name), e))?;
        views.push((p.name.clone(), view));
    }
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| ckpt_err(Path::new("<memory>"), e))
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, store: &ParamStore, metadata: HashMap<String, String>) -> Result<()> {
    let bytes = encode(store, metadata).map_err(|e| match e {
        Error::Checkpoint { what, .. } => ckpt_err(path, what),
        other => other,
    })?;
    atomic_write(path, &bytes)
}

/// Loads every parameter of `store` from the checkpoint at `path`, by name;
/// the shapes must match. Tensors of the file that the store lacks are
/// ignored. Returns the file's metadata.
pub fn load(path: &Path, store: &mut ParamStore) -> Result<HashMap<String, String>> {
    let buffer = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafeTensors::deserialize(&buffer).map_err(|e| ckpt_err(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&buffer).map_err(|e| ckpt_err(path, e))?;

    // Decode everything first, so that a bad file leaves the store untouched.
    let mut values = Vec::with_capacity(store.len());
    for (id, p) in store.iter() {
        let t =
            file.tensor(&p.name).map_err(|_| ckpt_err(path, format!("no tensor {}", p.name)))?;
        if t.dtype() != Dtype::F32 || t.shape() != p.value.shape() {
            return Err(ckpt_err(
                path,
                format!(
                    "{} is {:?} {:?}, the model has F32 {:?}",
                    p.name,
                    t.dtype(),
                    t.shape(),
                    p.value.shape()
                ),
            ));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        values.push((id, Tensor::new(t.shape(), data)?));
    }
    for (id, v) in values {
        store.get_mut(id).value = v;
    }
    Ok(meta.metadata().clone().unwrap_or_default())
}
