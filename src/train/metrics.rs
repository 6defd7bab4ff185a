//! `metrics.jsonl`: one JSON object per line, each with a `kind` field.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Every record of a `metrics.jsonl` file, blank lines skipped; a line that
/// does not parse is an error naming its line number.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| Error::DataRecord {
                path: path.to_path_buf(),
                record: i + 1,
                what: e.to_string(),
            })
        })
        .collect()
}
