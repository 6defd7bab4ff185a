//! Immune repertoires for DeepRC (MODELS.md section 2): the TSV readers, the
//! "real background + implanted signal" generator, the 23-channel sequence
//! encoding and the per-bag scale.
//!
//! A repertoire (bag) is the list of one person's CDR3 amino-acid sequences
//! with their clone counts. The readers take the common TSV exports (DeepRC /
//! immuneACCESS, AIRR rearrangement, immunarch, Adaptive immunoSEQ v2, the
//! DeepTCR antigen sets), drop the sequences DeepRC cannot use and say in a
//! [`ReadReport`] how many of each kind they dropped; duplicates within a file
//! are merged, their counts summed.
//!
//! What this module does not do: it reads plain tab-separated text only (no
//! quoting, no compression), it never writes into the folders it reads, and it
//! builds no tensors of the autograd graph; [`encode`] returns plain buffers
//! for the model to wrap.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::seq::index;
use rand::{Rng, RngExt, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::atomic_write;

/// The 20 standard amino acids; a sequence stores each residue as its index
/// in this string.
pub const ALPHABET: &[u8; 20] = b"ACDEFGHIKLMNPQRSTVWY";

/// Longest CDR3 the readers keep (DeepRC's cap).
pub const MAX_LEN: usize = 30;

/// Channels per position of the encoding: 20 one-hot plus 3 position channels.
pub const CHANNELS: usize = 23;

/// `INDEX[b]` is the alphabet index of the ASCII letter `b`, or `NOT_AA`.
const NOT_AA: u8 = u8::MAX;
const INDEX: [u8; 256] = {
    let mut table = [NOT_AA; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The indices of `s`, which must use only the letters of [`ALPHABET`]
/// (upper case). Length is not checked here; the readers apply [`MAX_LEN`].
pub fn parse_sequence(s: &str) -> Result<Vec<u8>> {
    s.bytes()
        .map(|b| INDEX[b as usize])
        .map(|i| if i == NOT_AA { None } else { Some(i) })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| Error::InvalidOption {
            name: "sequence",
            value: s.to_string(),
            reason: "uses a letter outside ACDEFGHIKLMNPQRSTVWY",
        })
}

/// The letters of a sequence of indices; an index outside the alphabet, which
/// only a hand-built slice can hold, shows as `?`.
pub fn to_string(seq: &[u8]) -> String {
    seq.iter().map(|&i| ALPHABET.get(i as usize).map_or('?', |&b| b as char)).collect()
}

/// One repertoire: its sequences in file order, packed end to end, with a
/// count each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repertoire {
    pub id: String,
    /// Every residue of every sequence, one after the other.
    residues: Vec<u8>,
    /// Sequence `i` is `residues[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    counts: Vec<u64>,
}

impl Repertoire {
    pub fn new(id: impl Into<String>) -> Repertoire {
        Repertoire { id: id.into(), residues: Vec::new(), offsets: vec![0], counts: Vec::new() }
    }

    /// A repertoire from `(letters, count)` pairs, in that order.
    pub fn from_strings(id: impl Into<String>, rows: &[(&str, u64)]) -> Result<Repertoire> {
        let mut rep = Repertoire::new(id);
        for &(s, count) in rows {
            rep.push(&parse_sequence(s)?, count)?;
        }
        Ok(rep)
    }

    /// Appends a sequence. Duplicates are not merged here (the readers do
    /// that); every index must lie in the alphabet so that [`encode`] and
    /// [`bag_scale`] can trust a repertoire.
    pub fn push(&mut self, seq: &[u8], count: u64) -> Result<()> {
        if let Some(&bad) = seq.iter().find(|&&i| i as usize >= ALPHABET.len()) {
            return Err(Error::InvalidOption {
                name: "sequence",
                value: format!("index {bad} in {seq:?}"),
                reason: "amino-acid indices lie in 0..20",
            });
        }
        self.residues.extend_from_slice(seq);
        self.offsets.push(self.residues.len());
        self.counts.push(count);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The indices of sequence `i`.
    pub fn seq(&self, i: usize) -> &[u8] {
        &self.residues[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn count(&self, i: usize) -> u64 {
        self.counts[i]
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Residues over all sequences (the real, non-padding positions).
    pub fn residues(&self) -> usize {
        self.residues.len()
    }

    /// `(sequence, count)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        (0..self.len()).map(|i| (self.seq(i), self.count(i)))
    }
}

/// The column conventions the readers know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// DeepRC's own files and immuneACCESS exports: `amino_acid`,
    /// `templates`, and where present `frame_type` (only `In` is kept).
    ImmuneAccess,
    /// AIRR rearrangement: `junction_aa`, `duplicate_count`, and where present
    /// `productive` (only `T` / `true` is kept).
    Airr,
    /// immunarch: `CDR3.aa`, `Clones` (written as floats, `539.0`).
    Immunarch,
    /// Adaptive immunoSEQ v2: `aminoAcid`, `count (templates/reads)`,
    /// `sequenceStatus` (only `In` is kept).
    AdaptiveV2,
    /// DeepTCR's antigen-specific sets: first column `beta` or `aminoAcid`,
    /// count `counts` or `count (templates/reads)`.
    DeepTcrAntigen,
}

impl Layout {
    pub const ALL: [Layout; 5] = [
        Layout::ImmuneAccess,
        Layout::Airr,
        Layout::Immunarch,
        Layout::AdaptiveV2,
        Layout::DeepTcrAntigen,
    ];

    /// The name `FromStr` accepts.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::ImmuneAccess => "immuneaccess",
            Layout::Airr => "airr",
            Layout::Immunarch => "immunarch",
            Layout::AdaptiveV2 => "adaptive-v2",
            Layout::DeepTcrAntigen => "deeptcr-antigen",
        }
    }

    /// The layout a header belongs to. The sequence column decides; Adaptive
    /// v2 and the DeepTCR antigen files share `aminoAcid`, and only the
    /// former has `sequenceStatus`.
    pub fn detect(header: &[&str]) -> Option<Layout> {
        let has = |name: &str| header.contains(&name);
        if has("junction_aa") {
            Some(Layout::Airr)
        } else if has("CDR3.aa") {
            Some(Layout::Immunarch)
        } else if has("amino_acid") {
            Some(Layout::ImmuneAccess)
        } else if has("aminoAcid") && has("sequenceStatus") {
            Some(Layout::AdaptiveV2)
        } else if matches!(header.first(), Some(&"beta") | Some(&"aminoAcid")) {
            Some(Layout::DeepTcrAntigen)
        } else {
            None
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| Error::InvalidOption {
            name: "layout",
            value: s.to_string(),
            reason: "expected immuneaccess, airr, immunarch, adaptive-v2 or deeptcr-antigen",
        })
    }
}

/// What a reader did with the rows of one file. Every data row ends up in
/// exactly one of `kept`, `merged` or a `dropped_*` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReport {
    pub path: PathBuf,
    pub layout: Layout,
    /// Data rows (lines after the header, blank lines not counted).
    pub rows: usize,
    /// Distinct sequences kept: the repertoire's length.
    pub kept: usize,
    /// Rows whose sequence an earlier row already had; their counts were added
    /// to that row's.
    pub merged: usize,
    pub dropped_alphabet: usize,
    pub dropped_length: usize,
    pub dropped_empty: usize,
    pub dropped_unproductive: usize,
}

impl ReadReport {
    pub fn dropped(&self) -> usize {
        self.dropped_alphabet + self.dropped_length + self.dropped_empty + self.dropped_unproductive
    }
}

impl fmt::Display for ReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} layout, {} rows, {} sequences kept, {} duplicates merged, dropped {} \
             unproductive, {} empty, {} with other letters, {} longer than {MAX_LEN}",
            self.path.display(),
            self.layout,
            self.rows,
            self.kept,
            self.merged,
            self.dropped_unproductive,
            self.dropped_empty,
            self.dropped_alphabet,
            self.dropped_length,
        )
    }
}

/// A data line: its 1-based line number and its fields.
type Row<'a> = (usize, Vec<&'a str>);

/// A tab-separated file: its text, split into lines on demand.
struct Tsv {
    path: PathBuf,
    text: String,
}

impl Tsv {
    fn read(path: &Path) -> Result<Tsv> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Error::DataRecord { path: path.into(), record: line, what: "not UTF-8 text".into() }
        })?;
        Ok(Tsv { path: path.into(), text })
    }

    /// The header's column names and the data lines as `(line number,
    /// fields)`, each field trimmed; lines of nothing but spaces are skipped
    /// (a line of tabs is a row of empty fields), a trailing `\r` is cut.
    fn split(&self) -> Result<(Vec<&str>, impl Iterator<Item = Row<'_>>)> {
        let mut lines = self.text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let header = match lines.next() {
            Some(h) if !h.trim().is_empty() => h.trim_start_matches('\u{feff}'),
            _ => return Err(self.error("empty file: no header line".into())),
        };
        let header = header.split('\t').map(str::trim).collect();
        let rows = lines
            .enumerate()
            .filter(|(_, l)| !l.trim_matches(' ').is_empty())
            .map(|(i, l)| (i + 2, l.split('\t').map(str::trim).collect()));
        Ok((header, rows))
    }

    fn error(&self, what: String) -> Error {
        Error::Data { path: self.path.clone(), what }
    }

    fn record_error(&self, record: usize, what: String) -> Error {
        Error::DataRecord { path: self.path.clone(), record, what }
    }

    /// The index of column `name`, or an error on the header line.
    fn column(&self, header: &[&str], name: &str, context: &str) -> Result<usize> {
        header.iter().position(|&h| h == name).ok_or_else(|| {
            self.record_error(
                1,
                format!("{context} needs the column `{name}`; {}", columns(header)),
            )
        })
    }
}

/// The header's names for an error message, the first dozen at most.
fn columns(header: &[&str]) -> String {
    let shown: Vec<String> = header.iter().take(12).map(|h| format!("`{h}`")).collect();
    let more = if header.len() > 12 { ", ..." } else { "" };
    format!("the header has {} columns: {}{more}", header.len(), shown.join(", "))
}

/// A row that has fewer fields than the columns it must supply.
fn too_few(tsv: &Tsv, record: usize, got: usize, need: usize) -> Error {
    tsv.record_error(record, format!("{got} fields, need at least {need}"))
}

/// A count: a whole, finite, non-negative number, written as an integer or a
/// float with zero fraction (immunarch writes `539.0`).
fn parse_count(s: &str) -> std::result::Result<u64, String> {
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v);
    }
    // Above 2^53 a float no longer says which integer it meant.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= EXACT => Ok(v as u64),
        _ => Err(format!("count `{s}` is not a whole non-negative number")),
    }
}

/// Whether a productivity value keeps its row.
type Keep = fn(&str) -> bool;

/// The columns a layout reads from one header.
struct Columns {
    seq: usize,
    count: usize,
    /// A productivity column and whether a value keeps the row.
    filter: Option<(usize, Keep)>,
}

impl Columns {
    fn find(tsv: &Tsv, layout: Layout, header: &[&str]) -> Result<Columns> {
        let ctx = format!("the {layout} layout");
        let optional = |name: &str| header.iter().position(|&h| h == name);
        let keep_in: Keep = |v| v == "In";
        let keep_true: Keep = |v| v.eq_ignore_ascii_case("t") || v.eq_ignore_ascii_case("true");
        let first_of = |names: [&str; 2]| -> Result<usize> {
            optional(names[0]).or_else(|| optional(names[1])).ok_or_else(|| {
                let what = format!(
                    "{ctx} needs the column `{}` or `{}`; {}",
                    names[0],
                    names[1],
                    columns(header)
                );
                tsv.record_error(1, what)
            })
        };
        Ok(match layout {
            Layout::ImmuneAccess => Columns {
                seq: tsv.column(header, "amino_acid", &ctx)?,
                count: tsv.column(header, "templates", &ctx)?,
                filter: optional("frame_type").map(|c| (c, keep_in)),
            },
            Layout::Airr => Columns {
                seq: tsv.column(header, "junction_aa", &ctx)?,
                count: tsv.column(header, "duplicate_count", &ctx)?,
                filter: optional("productive").map(|c| (c, keep_true)),
            },
            Layout::Immunarch => Columns {
                seq: tsv.column(header, "CDR3.aa", &ctx)?,
                count: tsv.column(header, "Clones", &ctx)?,
                filter: None,
            },
            Layout::AdaptiveV2 => Columns {
                seq: tsv.column(header, "aminoAcid", &ctx)?,
                count: tsv.column(header, "count (templates/reads)", &ctx)?,
                filter: Some((tsv.column(header, "sequenceStatus", &ctx)?, keep_in)),
            },
            Layout::DeepTcrAntigen => {
                if !matches!(header.first(), Some(&"beta") | Some(&"aminoAcid")) {
                    let what = format!("{ctx} needs `beta` or `aminoAcid` as the first column");
                    return Err(tsv.record_error(1, what));
                }
                Columns {
                    seq: 0,
                    count: first_of(["counts", "count (templates/reads)"])?,
                    filter: None,
                }
            }
        })
    }

    /// Fields a row must have to reach every column used.
    fn needed(&self) -> usize {
        1 + self.seq.max(self.count).max(self.filter.map_or(0, |(c, _)| c))
    }
}

/// Reads one repertoire file; its id is the file name without `.tsv`. The
/// layout is detected from the header unless `layout` forces one.
///
/// A row is dropped, and counted in the report, when it is unproductive (the
/// layout's productivity column says so), its sequence is empty, uses a
/// letter outside [`ALPHABET`] (lower case included) or is longer than
/// [`MAX_LEN`], checked in that order. The count is checked on every row,
/// dropped or not: a malformed count means a malformed file.
pub fn read_repertoire(path: &Path, layout: Option<Layout>) -> Result<(Repertoire, ReadReport)> {
    let tsv = Tsv::read(path)?;
    let (header, rows) = tsv.split()?;
    let layout = match layout.or_else(|| Layout::detect(&header)) {
        Some(l) => l,
        None => {
            let what = format!("no known repertoire layout; {}", columns(&header));
            return Err(tsv.record_error(1, what));
        }
    };
    let cols = Columns::find(&tsv, layout, &header)?;
    let id = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let id = id.strip_suffix(".tsv").unwrap_or(&id).to_string();

    let mut rep = Repertoire::new(id);
    let mut report = ReadReport {
        path: path.into(),
        layout,
        rows: 0,
        kept: 0,
        merged: 0,
        dropped_alphabet: 0,
        dropped_length: 0,
        dropped_empty: 0,
        dropped_unproductive: 0,
    };
    let mut row_of: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut seq = Vec::with_capacity(MAX_LEN);
    for (record, fields) in rows {
        report.rows += 1;
        if fields.len() < cols.needed() {
            return Err(too_few(&tsv, record, fields.len(), cols.needed()));
        }
        let count = parse_count(fields[cols.count]).map_err(|e| tsv.record_error(record, e))?;
        if let Some((c, keep)) = cols.filter
            && !keep(fields[c])
        {
            report.dropped_unproductive += 1;
            continue;
        }
        let letters = fields[cols.seq];
        seq.clear();
        seq.extend(letters.bytes().map(|b| INDEX[b as usize]));
        if seq.is_empty() {
            report.dropped_empty += 1;
        } else if seq.contains(&NOT_AA) {
            report.dropped_alphabet += 1;
        } else if seq.len() > MAX_LEN {
            report.dropped_length += 1;
        } else if let Some(&i) = row_of.get(&seq) {
            report.merged += 1;
            rep.counts[i] = rep.counts[i].checked_add(count).ok_or_else(|| {
                tsv.record_error(record, format!("the counts of {letters} overflow 64 bits"))
            })?;
        } else {
            row_of.insert(seq.clone(), rep.len());
            rep.push(&seq, count)?;
        }
    }
    report.kept = rep.len();
    Ok((rep, report))
}

/// Bags with their labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    pub repertoires: Vec<Repertoire>,
    pub labels: Vec<bool>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }
}

/// Reads the repertoires a metadata TSV lists. Column `id_column` names each
/// bag; its label is positive when column `label_column` holds exactly
/// `positive`. A bag's file is `dir/<path>` when the metadata has a `path` (or
/// else `file`) column with a value in that row, otherwise `dir/<id>`, then
/// `dir/<id>.tsv`. Each file's layout is detected from its header. Reports
/// come in metadata order, as do the bags.
///
/// A bag left with no sequence after the drops is an error: a bag DeepRC
/// cannot attend over.
pub fn read_dataset(
    dir: &Path,
    metadata: &Path,
    id_column: &str,
    label_column: &str,
    positive: &str,
) -> Result<(Dataset, Vec<ReadReport>)> {
    let tsv = Tsv::read(metadata)?;
    let (header, rows) = tsv.split()?;
    let id_col = tsv.column(&header, id_column, "the metadata")?;
    let label_col = tsv.column(&header, label_column, "the metadata")?;
    let path_col = ["path", "file"].iter().find_map(|n| header.iter().position(|h| h == n));
    let needed = 1 + id_col.max(label_col);

    let mut entries: Vec<(String, bool, PathBuf)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (record, fields) in rows {
        if fields.len() < needed {
            return Err(too_few(&tsv, record, fields.len(), needed));
        }
        let (id, label) = (fields[id_col], fields[label_col]);
        if id.is_empty() || label.is_empty() {
            let what = format!("empty `{id_column}` or `{label_column}`");
            return Err(tsv.record_error(record, what));
        }
        if let Some(first) = seen.insert(id.to_string(), record) {
            return Err(tsv.record_error(record, format!("id `{id}` already on line {first}")));
        }
        let listed = path_col.and_then(|c| fields.get(c)).filter(|p| !p.is_empty());
        let candidates = match listed {
            Some(p) => vec![dir.join(p)],
            None => vec![dir.join(id), dir.join(format!("{id}.tsv"))],
        };
        let Some(file) = candidates.iter().find(|p| p.is_file()) else {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            let what = format!("no file for id `{id}` (looked for {})", tried.join(" and "));
            return Err(tsv.record_error(record, what));
        };
        entries.push((id.to_string(), label == positive, file.clone()));
    }
    if entries.is_empty() {
        return Err(tsv.error("lists no repertoire".into()));
    }

    let read: Vec<(Repertoire, ReadReport)> = entries
        .par_iter()
        .map(|(id, _, file)| {
            let (mut rep, report) = read_repertoire(file, None)?;
            if rep.is_empty() {
                let what = format!("no sequence left ({report})");
                return Err(Error::Data { path: file.clone(), what });
            }
            rep.id = id.clone();
            Ok((rep, report))
        })
        .collect::<Result<_>>()?;
    let labels: Vec<bool> = entries.iter().map(|e| e.1).collect();
    let (repertoires, reports): (Vec<_>, Vec<_>) = read.into_iter().unzip();
    let dataset = Dataset { repertoires, labels };
    log::info!(
        "{}: {} repertoires ({} positive), {} sequences",
        metadata.display(),
        dataset.len(),
        dataset.positives(),
        dataset.repertoires.iter().map(Repertoire::len).sum::<usize>()
    );
    Ok((dataset, reports))
}

/// Every `*.tsv` file under `dir`, recursively, except ones named
/// `metadata.tsv`, read with detected layouts in sorted path order (so the
/// result does not depend on the file system's listing order). Each
/// repertoire's id is its path below `dir` without `.tsv`. For background and
/// signal pools; a file left empty by the drops is kept (an empty pool
/// member adds nothing).
pub fn read_dir_pool(dir: &Path) -> Result<(Vec<Repertoire>, Vec<ReadReport>)> {
    let mut files = Vec::new();
    collect_tsv(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::Data { path: dir.into(), what: "holds no .tsv repertoire file".into() });
    }
    let read: Vec<(Repertoire, ReadReport)> = files
        .par_iter()
        .map(|file| {
            let (mut rep, report) = read_repertoire(file, None)?;
            let rel = file.strip_prefix(dir).unwrap_or(file);
            let parts: Vec<String> =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let joined = parts.join("/");
            rep.id = joined.strip_suffix(".tsv").unwrap_or(&joined).to_string();
            Ok((rep, report))
        })
        .collect::<Result<_>>()?;
    let (reps, reports): (Vec<_>, Vec<_>) = read.into_iter().unzip();
    log::info!(
        "{}: {} files, {} sequences",
        dir.display(),
        reps.len(),
        reps.iter().map(Repertoire::len).sum::<usize>()
    );
    Ok((reps, reports))
}

/// Symbolic links to folders are not followed, so a link cycle cannot make
/// the walk endless; links to files are read.
fn collect_tsv(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            collect_tsv(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "tsv")
            && path.file_name().is_some_and(|n| n != "metadata.tsv")
            && path.is_file()
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Sizes of a generated "real background + implanted signal" data set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImplantConfig {
    /// Number of bags, at least 2 (one of each label).
    pub bags: usize,
    /// Sequences per bag, all distinct within the bag.
    pub bag_size: usize,
    /// Fraction of a positive bag's sequences that are signal, in (0, 1).
    pub witness_rate: f64,
    /// Fraction of bags that are positive, in (0, 1).
    pub positive_fraction: f64,
    pub seed: u64,
}

impl Default for ImplantConfig {
    /// The README's task: 400 balanced bags of 2,000 sequences at a 1%
    /// witness rate (enough bags that a 1% signal can be learned at all).
    fn default() -> Self {
        ImplantConfig {
            bags: 400,
            bag_size: 2_000,
            witness_rate: 0.01,
            positive_fraction: 0.5,
            seed: 0,
        }
    }
}

impl ImplantConfig {
    /// Signal sequences per positive bag: `max(1, round(witness_rate *
    /// bag_size))`.
    pub fn witnesses(&self) -> usize {
        ((self.witness_rate * self.bag_size as f64).round() as usize).max(1)
    }

    /// Positive bags: `round(bags * positive_fraction)`.
    pub fn positives(&self) -> usize {
        (self.bags as f64 * self.positive_fraction).round() as usize
    }

    /// Checks what the configuration alone decides; the pool sizes are
    /// checked by [`implant`].
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig { what });
        if self.bags < 2 {
            return bad(format!("{} bags: need at least 2, one of each label", self.bags));
        }
        if self.bag_size == 0 {
            return bad("bags must hold at least one sequence".into());
        }
        let open = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !open(self.witness_rate) {
            return bad(format!("witness rate {}: must lie in (0, 1)", self.witness_rate));
        }
        if !open(self.positive_fraction) {
            return bad(format!(
                "positive fraction {}: must lie in (0, 1)",
                self.positive_fraction
            ));
        }
        let p = self.positives();
        if p == 0 || p == self.bags {
            return bad(format!(
                "positive fraction {} of {} bags gives {p} positive bags: both labels are needed",
                self.positive_fraction, self.bags
            ));
        }
        Ok(())
    }
}

/// A generated data set with the truth about where its signal sits.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub config: ImplantConfig,
    /// Bags `bag000`, `bag001`, ...
    pub dataset: Dataset,
    /// Per bag, the rows (0-based, ascending) that hold signal; empty for
    /// negative bags.
    pub implanted: Vec<Vec<usize>>,
    /// Per bag, parallel to `implanted`: which signal repertoire (an index
    /// into `signal_ids`) each implanted sequence came from, the first one
    /// holding it when several do.
    pub implanted_source: Vec<Vec<usize>>,
    /// Ids of the signal repertoires (with [`read_dir_pool`], their path: the
    /// epitope and the study).
    pub signal_ids: Vec<String>,
    /// Distinct background sequences left to draw from after removing the
    /// signal ones.
    pub background_pool: usize,
    /// Distinct signal sequences.
    pub signal_pool: usize,
    /// Distinct background sequences removed because they are signal.
    pub removed_from_background: usize,
}

/// Builds bags of real background sequences and implants signal sequences
/// into the positive ones (MODELS.md 2.4).
///
/// The background pool is every distinct sequence of `background`, in order
/// of first appearance with the count of that first appearance, minus every
/// sequence of `signals`, so a negative bag holds no signal. Each bag draws
/// `bag_size` distinct pool sequences; `positives()` bags chosen at random
/// then get `witnesses()` random rows overwritten by distinct signal
/// sequences (the row keeps its count), drawn uniformly from the distinct signal sequences
/// (independently per bag, so bags share signal). All from one seed.
pub fn implant(
    background: &[Repertoire],
    signals: &[Repertoire],
    cfg: &ImplantConfig,
) -> Result<Generated> {
    cfg.validate()?;

    // The signal pool, and which repertoire each signal came from.
    let mut signal_source: HashMap<&[u8], usize> = HashMap::new();
    let mut signal_pool: Vec<&[u8]> = Vec::new();
    for (r, rep) in signals.iter().enumerate() {
        for (seq, _) in rep.iter() {
            if !signal_source.contains_key(seq) {
                signal_source.insert(seq, r);
                signal_pool.push(seq);
            }
        }
    }

    // The background pool, signal removed.
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut pool: Vec<(&[u8], u64)> = Vec::new();
    let mut removed = 0;
    for rep in background {
        for (seq, count) in rep.iter() {
            if seen.insert(seq) {
                if signal_source.contains_key(seq) {
                    removed += 1;
                } else {
                    pool.push((seq, count));
                }
            }
        }
    }
    if pool.len() < cfg.bag_size {
        return Err(Error::InvalidConfig {
            what: format!(
                "bags of {} distinct sequences from a background pool of {}",
                cfg.bag_size,
                pool.len()
            ),
        });
    }
    let w = cfg.witnesses();
    if signal_pool.len() < w {
        return Err(Error::InvalidConfig {
            what: format!(
                "{w} distinct signal sequences per positive bag from a signal pool of {}",
                signal_pool.len()
            ),
        });
    }

    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x1a7e_5eed);
    let mut labels = vec![false; cfg.bags];
    for b in index::sample(&mut rng, cfg.bags, cfg.positives()) {
        labels[b] = true;
    }
    let width = (cfg.bags - 1).to_string().len().max(3);
    let mut repertoires = Vec::with_capacity(cfg.bags);
    let mut implanted = Vec::with_capacity(cfg.bags);
    let mut implanted_source = Vec::with_capacity(cfg.bags);
    for (b, &positive) in labels.iter().enumerate() {
        let mut rows: Vec<(&[u8], u64)> =
            index::sample(&mut rng, pool.len(), cfg.bag_size).iter().map(|i| pool[i]).collect();
        let mut at = Vec::new();
        let mut from = Vec::new();
        if positive {
            at = index::sample(&mut rng, cfg.bag_size, w).into_vec();
            at.sort_unstable();
            for (&row, s) in at.iter().zip(index::sample(&mut rng, signal_pool.len(), w)) {
                let seq = signal_pool[s];
                // The replaced row's count stays: with log-count scaling a
                // count of 1 would zero the witness's amino-acid channels,
                // and counts would tell the classes apart on their own.
                rows[row].0 = seq;
                from.push(signal_source[seq]);
            }
        }
        let mut rep = Repertoire::new(format!("bag{b:0width$}"));
        for (seq, count) in rows {
            rep.push(seq, count)?;
        }
        repertoires.push(rep);
        implanted.push(at);
        implanted_source.push(from);
    }
    Ok(Generated {
        config: *cfg,
        dataset: Dataset { repertoires, labels },
        implanted,
        implanted_source,
        signal_ids: signals.iter().map(|r| r.id.clone()).collect(),
        background_pool: pool.len(),
        signal_pool: signal_pool.len(),
        removed_from_background: removed,
    })
}

/// What `generator.json` records.
#[derive(Serialize)]
struct GeneratorRecord<'a> {
    config: &'a ImplantConfig,
    positives: usize,
    witnesses_per_positive_bag: usize,
    background_pool: usize,
    signal_pool: usize,
    removed_from_background: usize,
    signal_ids: &'a [String],
}

/// Writes a generated set as DeepRC reads it: `repertoires/<id>.tsv`
/// (`amino_acid`, `templates`), `metadata.tsv` (`ID`, `label` 1/0,
/// `n_sequences`, `n_implanted`), `implanted.tsv` (`ID`, 0-based data `row`,
/// `amino_acid`, the `signal` repertoire it came from) and `generator.json`.
/// Every file is written atomically; files already in `out_dir` that this
/// set does not name are left alone.
pub fn write_generated(set: &Generated, out_dir: &Path) -> Result<()> {
    let reps_dir = out_dir.join("repertoires");
    fs::create_dir_all(&reps_dir).map_err(|e| Error::io(&reps_dir, e))?;
    let ds = &set.dataset;
    if ds.repertoires.len() != ds.len()
        || set.implanted.len() != ds.len()
        || set.implanted_source.len() != ds.len()
    {
        return Err(Error::InvalidConfig {
            what: "generated set with per-bag lists of different lengths".into(),
        });
    }

    let mut metadata = String::from("ID\tlabel\tn_sequences\tn_implanted\n");
    let mut truth = String::from("ID\trow\tamino_acid\tsignal\n");
    for (b, rep) in ds.repertoires.iter().enumerate() {
        let mut text = String::from("amino_acid\ttemplates\n");
        for (seq, count) in rep.iter() {
            text.push_str(&format!("{}\t{count}\n", to_string(seq)));
        }
        atomic_write(&reps_dir.join(format!("{}.tsv", rep.id)), text.as_bytes())?;

        let label = u8::from(ds.labels[b]);
        let n_implanted = set.implanted[b].len();
        metadata.push_str(&format!("{}\t{label}\t{}\t{n_implanted}\n", rep.id, rep.len()));
        for (&row, &src) in set.implanted[b].iter().zip(&set.implanted_source[b]) {
            if row >= rep.len() {
                return Err(Error::InvalidConfig {
                    what: format!("implanted row {row} of bag {} with {} rows", rep.id, rep.len()),
                });
            }
            let signal = set.signal_ids.get(src).map_or("?", String::as_str);
            truth.push_str(&format!("{}\t{row}\t{}\t{signal}\n", rep.id, to_string(rep.seq(row))));
        }
    }
    atomic_write(&out_dir.join("metadata.tsv"), metadata.as_bytes())?;
    atomic_write(&out_dir.join("implanted.tsv"), truth.as_bytes())?;

    let record = GeneratorRecord {
        config: &set.config,
        positives: set.config.positives(),
        witnesses_per_positive_bag: set.config.witnesses(),
        background_pool: set.background_pool,
        signal_pool: set.signal_pool,
        removed_from_background: set.removed_from_background,
        signal_ids: &set.signal_ids,
    };
    let json_path = out_dir.join("generator.json");
    let mut json = serde_json::to_string_pretty(&record)
        .map_err(|e| Error::Data { path: json_path.clone(), what: e.to_string() })?;
    json.push('\n');
    atomic_write(&json_path, json.as_bytes())
}

/// The implanted rows of `implanted.tsv` (as [`write_generated`] writes it),
/// per bag of `dataset` in its order, ascending. Every row must name a bag
/// of `dataset`, lie inside it and hold the sequence the file says.
pub fn read_implanted(path: &Path, dataset: &Dataset) -> Result<Vec<Vec<usize>>> {
    let tsv = Tsv::read(path)?;
    let (header, rows) = tsv.split()?;
    let id_col = tsv.column(&header, "ID", "the implanted-rows file")?;
    let row_col = tsv.column(&header, "row", "the implanted-rows file")?;
    let seq_col = tsv.column(&header, "amino_acid", "the implanted-rows file")?;
    let needed = 1 + id_col.max(row_col).max(seq_col);
    let bag_of: HashMap<&str, usize> =
        dataset.repertoires.iter().enumerate().map(|(b, r)| (r.id.as_str(), b)).collect();

    let mut out = vec![Vec::new(); dataset.repertoires.len()];
    for (record, fields) in rows {
        if fields.len() < needed {
            return Err(too_few(&tsv, record, fields.len(), needed));
        }
        let id = fields[id_col];
        let Some(&b) = bag_of.get(id) else {
            return Err(tsv.record_error(record, format!("no bag `{id}` in the data set")));
        };
        let rep = &dataset.repertoires[b];
        let row = match fields[row_col].parse::<usize>() {
            Ok(r) if r < rep.len() => r,
            _ => {
                let what =
                    format!("row `{}` is not a row of {id} ({} rows)", fields[row_col], rep.len());
                return Err(tsv.record_error(record, what));
            }
        };
        let held = to_string(rep.seq(row));
        if held != fields[seq_col] {
            let what = format!("row {row} of {id} holds {held}, not {}", fields[seq_col]);
            return Err(tsv.record_error(record, what));
        }
        out[b].push(row);
    }
    for (b, rows) in out.iter_mut().enumerate() {
        rows.sort_unstable();
        if let Some(w) = rows.windows(2).find(|w| w[0] == w[1]) {
            let what = format!("row {} of {} listed twice", w[0], dataset.repertoires[b].id);
            return Err(tsv.error(what));
        }
    }
    Ok(out)
}

/// The three position channels (20, 21, 22) of position `j` of a sequence of
/// length `len` (MODELS.md 2.1). With t running linearly from 1 at the first
/// position to 0 at the last, v = 2|0.5 - t| is 1 at both ends and 0 in the
/// middle; channel 20 carries v over the first ceil(len/2) positions, channel
/// 21 over the rest, channel 22 carries 1 - v. A single position has t = 1.
pub fn position_channels(len: usize, j: usize) -> [f32; 3] {
    let t = if len <= 1 { 1.0 } else { 1.0 - j as f64 / (len - 1) as f64 };
    let v = (2.0 * (0.5 - t).abs()) as f32;
    let first_half = j < len.div_ceil(2);
    [if first_half { v } else { 0.0 }, if first_half { 0.0 } else { v }, 1.0 - v]
}

/// The weight of the amino-acid channels for a sequence seen `count` times:
/// ln(max(count, 1)), so a sequence seen once has zero amino-acid channels
/// (DeepRC's choice for the CMV cohort).
pub fn count_weight(count: f32) -> f32 {
    count.max(1.0).ln()
}

/// Encodes sequences as a channels-last tensor `[S, l_max, 23]`, `l_max` the
/// longest of them, and returns it with each sequence's length and `l_max`.
/// Per real position: the one-hot of the amino acid (times
/// [`count_weight`] of the sequence's count when `counts` is given) and the
/// [`position_channels`]; padding positions are zero. Everything is
/// multiplied by `scale` ([`bag_scale`] of the bag the sequences come from).
pub fn encode(
    seqs: &[&[u8]],
    counts: Option<&[f32]>,
    scale: f32,
) -> Result<(Vec<f32>, Vec<usize>, usize)> {
    if let Some(c) = counts
        && c.len() != seqs.len()
    {
        return Err(Error::InvalidConfig {
            what: format!("{} sequences but {} counts", seqs.len(), c.len()),
        });
    }
    for (i, seq) in seqs.iter().enumerate() {
        if let Some(j) = seq.iter().position(|&a| a as usize >= ALPHABET.len()) {
            return Err(Error::InvalidOption {
                name: "sequence",
                value: format!("index {} at position {j} of sequence {i}", seq[j]),
                reason: "amino-acid indices lie in 0..20",
            });
        }
    }
    let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    let l_max = lengths.iter().copied().max().unwrap_or(0);
    let mut out = vec![0.0f32; seqs.len() * l_max * CHANNELS];
    if l_max == 0 {
        return Ok((out, lengths, l_max));
    }
    for (i, (seq, dst)) in seqs.iter().zip(out.chunks_exact_mut(l_max * CHANNELS)).enumerate() {
        let aa = counts.map_or(1.0, |c| count_weight(c[i])) * scale;
        for (j, (&a, cell)) in seq.iter().zip(dst.chunks_exact_mut(CHANNELS)).enumerate() {
            cell[a as usize] = aa;
            let pos = position_channels(seq.len(), j);
            for (c, p) in cell[20..].iter_mut().zip(pos) {
                *c = p * scale;
            }
        }
    }
    Ok((out, lengths, l_max))
}

/// 1 / the standard deviation (population, over the mean of the same values)
/// of every channel of every real position of every sequence of `rep`, as
/// [`encode`] would produce them with scale 1 (and counts when `log_counts`).
/// Taken over the whole bag so that subsampling it or keeping its top
/// sequences later does not change the scale.
///
/// Closed form per sequence, no tensor built: a position holds one non-zero
/// amino-acid channel (its weight w) and position channels summing to 1, so a
/// sequence of length L adds L (w + 1) to the sum of the values and
/// L w^2 + sum_j |p_j|^2 to the sum of their squares, over 23 L values.
pub fn bag_scale(rep: &Repertoire, log_counts: bool) -> Result<f32> {
    // Per length: the sum and the sum of squares of its position channels,
    // from the same f32 values `encode` writes, filled as lengths are met.
    let mut by_len: Vec<Option<(f64, f64)>> = Vec::new();
    let (mut n, mut sum, mut sum_sq) = (0.0f64, 0.0f64, 0.0f64);
    for (seq, count) in rep.iter() {
        let len = seq.len();
        if len == 0 {
            continue;
        }
        if by_len.len() <= len {
            by_len.resize(len + 1, None);
        }
        let (p1, p2) = *by_len[len].get_or_insert_with(|| {
            let values = (0..len).flat_map(|j| position_channels(len, j)).map(f64::from);
            values.fold((0.0, 0.0), |(s, q), p| (s + p, q + p * p))
        });
        let w = if log_counts { f64::from(count_weight(count as f32)) } else { 1.0 };
        let l = len as f64;
        n += (CHANNELS * len) as f64;
        sum += l * w + p1;
        sum_sq += l * w * w + p2;
    }
    if n == 0.0 {
        return Err(Error::InvalidConfig {
            what: format!("bag {} has no residue to scale", rep.id),
        });
    }
    let mean = sum / n;
    // Every position holds zeros and a non-zero position channel, so the
    // spread is positive; the guard only keeps round-off from a negative.
    let var = (sum_sq / n - mean * mean).max(f64::MIN_POSITIVE);
    Ok((1.0 / var.sqrt()) as f32)
}

/// DeepRC's training subsample: `k` draws with replacement from `0..n`,
/// duplicates removed, ascending. The draws are with replacement even when
/// `n <= k`, so a small bag does not come back whole: about a fraction
/// 1 - exp(-k / n) of its rows appear. `n == 0` gives no rows.
pub fn sample_rows<R: Rng + ?Sized>(n: usize, k: usize, rng: &mut R) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut rows: Vec<usize> = (0..k).map(|_| rng.random_range(0..n)).collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_as_whole_numbers_only() {
        assert_eq!(parse_count("539.0"), Ok(539));
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("-0.0"), Ok(0));
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_count("9007199254740992.0"), Ok(1 << 53));
        for bad in ["", "x", "-1", "1.5", "NaN", "inf", "1e16", " 3"] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_pick_their_layout() {
        let detect = |h: &str| Layout::detect(&h.split('\t').collect::<Vec<_>>());
        assert_eq!(detect("amino_acid\ttemplates\tframe_type"), Some(Layout::ImmuneAccess));
        assert_eq!(detect("sequence_id\tjunction_aa\tduplicate_count"), Some(Layout::Airr));
        assert_eq!(detect("Clones\tProportion\tCDR3.nt\tCDR3.aa"), Some(Layout::Immunarch));
        assert_eq!(detect("nucleotide\taminoAcid\tsequenceStatus"), Some(Layout::AdaptiveV2));
        assert_eq!(detect("aminoAcid\tcounts"), Some(Layout::DeepTcrAntigen));
        assert_eq!(detect("beta\tcounts\tv_beta"), Some(Layout::DeepTcrAntigen));
        assert_eq!(detect("counts\tbeta"), None);
    }
}
