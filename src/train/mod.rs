//! Training: the loops for the paper's models, and what they write (metrics,
//! summaries, checkpoints), always atomically.

pub mod binary;
pub mod bitpattern;
pub mod checkpoint;
pub mod deeprc;
pub mod metrics;
pub mod vit;
pub mod vit_plot;

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that readers see the old file or the new one,
/// never a part: a temporary file in the same directory, synced, then renamed
/// over `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    // The temporary file is private (0600); what it becomes is an ordinary
    // output file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(|e| Error::io(tmp.path(), e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Sizes rayon's global pool to `n` threads (`--threads`); `None` keeps
/// rayon's default of one per core. The global pool can be built once only,
/// so this belongs at the start of a command, before any parallel work.
pub fn set_threads(n: Option<usize>) -> Result<()> {
    let Some(n) = n else { return Ok(()) };
    if n == 0 {
        return Err(Error::InvalidConfig { what: "--threads must be positive".into() });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::InvalidConfig { what: format!("cannot start {n} threads: {e}") })
}

/// The process's peak resident memory so far, in MiB (0 where the platform
/// does not say).
pub fn peak_rss_mib() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage only writes into the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            // Linux reports ru_maxrss in KiB.
            return usage.ru_maxrss as f64 / 1024.0;
        }
    }
    0.0
}
