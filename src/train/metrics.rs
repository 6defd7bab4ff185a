//! `metrics.jsonl`: one JSON object per line, each with a `kind` field.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Appends JSON lines to a file, flushed after each line so that a reader
/// (or a killed run) sees every finished record.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<MetricsWriter> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    /// Writes `record` as one line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        serde_json::to_writer(&mut self.out, record).map_err(|e| io(e.into()))?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}
