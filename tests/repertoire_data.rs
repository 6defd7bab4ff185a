//! The repertoire data layer (MODELS.md 2.1, 2.4): readers on hand-made files
//! of every layout and on the real files in ../shared/data/repertoires, the
//! implant generator and its files, the encoding and the bag scale.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use lwpf::data::repertoire::{
    ALPHABET, CHANNELS, Dataset, ImplantConfig, Layout, MAX_LEN, ReadReport, Repertoire, bag_scale,
    count_weight, encode, implant, parse_sequence, position_channels, read_dataset, read_dir_pool,
    read_implanted, read_repertoire, sample_rows, to_string, write_generated,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, text).unwrap();
    path
}

fn letters(rep: &Repertoire) -> Vec<(String, u64)> {
    rep.iter().map(|(s, c)| (to_string(s), c)).collect()
}

fn owned(rows: &[(&str, u64)]) -> Vec<(String, u64)> {
    rows.iter().map(|&(s, c)| (s.to_string(), c)).collect()
}

/// The error of `result`, which must name `path` and line `record`.
fn assert_names<T: std::fmt::Debug>(result: lwpf::Result<T>, path: &Path, record: usize) -> String {
    let msg = result.unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg} should name {}", path.display());
    assert!(msg.contains(&format!("record {record}:")), "{msg} should name line {record}");
    msg
}

// ---- sequences -------------------------------------------------------------

#[test]
fn sequences_are_alphabet_indices() {
    assert_eq!(ALPHABET.len(), 20);
    assert_eq!(MAX_LEN, 30);
    assert_eq!(parse_sequence("ACY").unwrap(), vec![0, 1, 19]);
    assert_eq!(to_string(&parse_sequence("CASSLQAGGNTDTQYF").unwrap()), "CASSLQAGGNTDTQYF");
    assert!(parse_sequence("CAS*F").is_err());
    assert!(parse_sequence("cass").is_err());
    assert_eq!(to_string(&[0, 25]), "A?");

    let rep = Repertoire::from_strings("r", &[("CASS", 3), ("CAT", 1)]).unwrap();
    assert_eq!(rep.len(), 2);
    assert_eq!(rep.seq(1), &[1, 0, 16]);
    assert_eq!(rep.count(0), 3);
    assert_eq!(rep.residues(), 7);
    let mut bad = Repertoire::new("b");
    assert!(bad.push(&[20], 1).is_err());
    assert!(bad.is_empty());
}

// ---- readers ---------------------------------------------------------------

#[test]
fn immuneaccess_layout_keeps_in_frame_and_counts_every_drop() {
    let dir = tempfile::tempdir().unwrap();
    let long = "C".repeat(31);
    let edge = "C".repeat(30);
    let text = format!(
        "amino_acid\ttemplates\tframe_type\n\
         CASSF\t3\tIn\n\
         CASS*F\t2\tStop\n\
         CAS~F\t1\tIn\n\
         \t4\tIn\n\
         {long}\t1\tIn\n\
         {edge}\t2\tIn\n\
         CATF\t5\tOut\n\
         CAWF\t7\tIn\n\
         CASSF\t10\tIn\n\
         \n\
         casf\t1\tIn\n"
    );
    let path = write(dir.path(), "s1.tsv", &text);
    let (rep, report) = read_repertoire(&path, None).unwrap();
    assert_eq!(rep.id, "s1");
    assert_eq!(letters(&rep), owned(&[("CASSF", 13), (&edge, 2), ("CAWF", 7)]));
    assert_eq!(report.layout, Layout::ImmuneAccess);
    assert_eq!(report.rows, 10);
    assert_eq!(report.kept, 3);
    assert_eq!(report.merged, 1);
    assert_eq!(report.dropped_unproductive, 2);
    assert_eq!(report.dropped_alphabet, 2);
    assert_eq!(report.dropped_empty, 1);
    assert_eq!(report.dropped_length, 1);
    assert_eq!(report.kept + report.merged + report.dropped(), report.rows);
    let line = report.to_string();
    assert!(line.contains("10 rows") && line.contains("3 sequences kept"), "{line}");
    assert!(line.contains("1 duplicates merged") && line.contains("2 unproductive"), "{line}");
}

#[test]
fn every_layout_is_detected_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "deeprc.tsv",
            "amino_acid\ttemplates\r\nCASSF\t3\r\nCAWF\t1\r\n",
            Layout::ImmuneAccess,
            owned(&[("CASSF", 3), ("CAWF", 1)]),
            0,
        ),
        (
            "airr.tsv",
            "sequence_id\tjunction_aa\tproductive\tduplicate_count\n\
             a\tCASSF\tT\t4\nb\tCAWF\tF\t2\nc\tCAGF\ttrue\t1\nd\tCAKF\tfalse\t1\ne\tCAPF\t\t1\n",
            Layout::Airr,
            owned(&[("CASSF", 4), ("CAGF", 1)]),
            3,
        ),
        (
            "airr-no-productive.tsv",
            "junction_aa\tduplicate_count\nCASSF\t4\nCAWF\t2\n",
            Layout::Airr,
            owned(&[("CASSF", 4), ("CAWF", 2)]),
            0,
        ),
        (
            "immunarch.tsv",
            "Clones\tProportion\tCDR3.nt\tCDR3.aa\n539.0\t0.6\tTGT\tCASSF\n320.0\t0.3\tTGT\tCA*F\n\
             1\t0.1\tTGT\tCAWF\n",
            Layout::Immunarch,
            owned(&[("CASSF", 539), ("CAWF", 1)]),
            0,
        ),
        (
            "adaptive.tsv",
            "nucleotide\taminoAcid\tcount (templates/reads)\tsequenceStatus\n\
             ACG\tCASSF\t368\tIn\nACG\t\t200\tOut\nACG\tCA*F\t9\tStop\nACG\tCASSF\t2\tIn\n",
            Layout::AdaptiveV2,
            owned(&[("CASSF", 370)]),
            2,
        ),
        (
            "dash.tsv",
            "beta\tcounts\tv_beta\tj_beta\nCASSIRGSGEQYF\t1\tTCRBV19-01\tTCRBJ02-07\n\
             CASSIRGSGEQYF\t1\tTCRBV19-01\tTCRBJ02-07\n",
            Layout::DeepTcrAntigen,
            owned(&[("CASSIRGSGEQYF", 2)]),
            0,
        ),
        (
            "siy.tsv",
            "aminoAcid\tcount (templates/reads)\tvGeneName\tjGeneName\nCASSF\t12\tV\tJ\n",
            Layout::DeepTcrAntigen,
            owned(&[("CASSF", 12)]),
            0,
        ),
    ];
    for (name, text, layout, want, unproductive) in cases {
        let path = write(dir.path(), name, text);
        let (rep, report) = read_repertoire(&path, None).unwrap();
        assert_eq!(report.layout, layout, "{name}");
        assert_eq!(letters(&rep), want, "{name}");
        assert_eq!(report.dropped_unproductive, unproductive, "{name}");
        assert_eq!(report.kept + report.merged + report.dropped(), report.rows, "{name}");
    }
}

#[test]
fn a_forced_layout_overrides_detection() {
    let dir = tempfile::tempdir().unwrap();
    // Detected as Adaptive v2 (it has sequenceStatus), read as an antigen set
    // the status column is ignored.
    let path = write(
        dir.path(),
        "f.tsv",
        "aminoAcid\tcount (templates/reads)\tsequenceStatus\nCASSF\t2\tOut\nCAWF\t1\tIn\n",
    );
    let (rep, report) = read_repertoire(&path, None).unwrap();
    assert_eq!((report.layout, rep.len()), (Layout::AdaptiveV2, 1));
    let (rep, report) = read_repertoire(&path, Some(Layout::DeepTcrAntigen)).unwrap();
    assert_eq!((report.layout, rep.len()), (Layout::DeepTcrAntigen, 2));
    let err = read_repertoire(&path, Some(Layout::Immunarch));
    let msg = assert_names(err, &path, 1);
    assert!(msg.contains("CDR3.aa"), "{msg}");

    for l in Layout::ALL {
        assert_eq!(l.name().parse::<Layout>().unwrap(), l);
    }
    assert!("tsv".parse::<Layout>().is_err());
}

#[test]
fn counts_must_be_whole_non_negative_numbers() {
    let dir = tempfile::tempdir().unwrap();
    for good in ["0", "7", "539.0", "1e3", "+4"] {
        let path = write(dir.path(), "g.tsv", &format!("CDR3.aa\tClones\nCASF\t1\nCAWF\t{good}\n"));
        let (rep, _) = read_repertoire(&path, None).unwrap();
        assert_eq!(rep.count(1), good.parse::<f64>().unwrap() as u64, "{good}");
    }
    for bad in ["x", "-1", "1.5", "", "nan", "inf", "-2.0", "1e30"] {
        let path = write(dir.path(), "b.tsv", &format!("CDR3.aa\tClones\nCASF\t1\nCAWF\t{bad}\n"));
        let msg = assert_names(read_repertoire(&path, None), &path, 3);
        assert!(msg.contains(&format!("`{bad}`")), "{msg}");
    }
    // A bad count is an error on a row that would be dropped, too.
    let path = write(dir.path(), "d.tsv", "amino_acid\ttemplates\tframe_type\nCA*F\t-1\tOut\n");
    assert_names(read_repertoire(&path, None), &path, 2);
}

#[test]
fn malformed_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();

    let path = write(dir.path(), "nocount.tsv", "amino_acid\tcount\nCASF\t1\n");
    let msg = assert_names(read_repertoire(&path, None), &path, 1);
    assert!(msg.contains("`templates`"), "{msg}");

    let path = write(dir.path(), "nocounts.tsv", "beta\tv_beta\nCASF\tV\n");
    let msg = assert_names(read_repertoire(&path, None), &path, 1);
    assert!(msg.contains("`counts`"), "{msg}");

    let path = write(dir.path(), "nostatus.tsv", "aminoAcid\tcount (templates/reads)\nCASF\t1\n");
    assert_names(read_repertoire(&path, Some(Layout::AdaptiveV2)), &path, 1);

    let path = write(dir.path(), "unknown.tsv", "cdr3\tn\nCASF\t1\n");
    let msg = assert_names(read_repertoire(&path, None), &path, 1);
    assert!(msg.contains("no known repertoire layout"), "{msg}");

    let path = write(dir.path(), "short.tsv", "Clones\tCDR3.aa\n3\tCASF\n\n4\n");
    let msg = assert_names(read_repertoire(&path, None), &path, 4);
    assert!(msg.contains("1 fields, need at least 2"), "{msg}");

    let path = write(dir.path(), "empty.tsv", "");
    let msg = read_repertoire(&path, None).unwrap_err().to_string();
    assert!(msg.contains("empty.tsv") && msg.contains("no header"), "{msg}");

    let path = dir.path().join("latin1.tsv");
    fs::write(&path, b"CDR3.aa\tClones\nCASF\t1\nCA\xe9F\t1\n").unwrap();
    assert_names(read_repertoire(&path, None), &path, 3);

    let path = dir.path().join("absent.tsv");
    let msg = read_repertoire(&path, None).unwrap_err().to_string();
    assert!(msg.contains("absent.tsv"), "{msg}");
}

// ---- datasets --------------------------------------------------------------

#[test]
fn a_dataset_finds_files_by_id_by_id_tsv_and_by_a_path_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "reps/a", "amino_acid\ttemplates\nCASF\t1\n");
    write(d, "reps/b.tsv", "CDR3.aa\tClones\nCAWF\t2.0\nCAGF\t1.0\n");
    write(d, "reps/sub/c-file.tsv", "junction_aa\tduplicate_count\nCAKF\t5\n");
    let meta =
        write(d, "meta.tsv", "name\tstatus\tpath\na\tsick\t\nb\twell\t\nc\tsick\tsub/c-file.tsv\n");
    let (ds, reports) = read_dataset(&d.join("reps"), &meta, "name", "status", "sick").unwrap();
    assert_eq!(ds.labels, vec![true, false, true]);
    assert_eq!(ds.positives(), 2);
    let ids: Vec<&str> = ds.repertoires.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(letters(&ds.repertoires[1]), owned(&[("CAWF", 2), ("CAGF", 1)]));
    let layouts: Vec<Layout> = reports.iter().map(|r| r.layout).collect();
    assert_eq!(layouts, [Layout::ImmuneAccess, Layout::Immunarch, Layout::Airr]);
    assert!(reports[2].path.ends_with("sub/c-file.tsv"));

    // A `file` column serves the same way.
    let meta = write(d, "meta2.tsv", "Sample\tStatus\tfile\nx\tMS\tb.tsv\n");
    let (ds, _) = read_dataset(&d.join("reps"), &meta, "Sample", "Status", "MS").unwrap();
    assert_eq!((ds.repertoires[0].id.as_str(), ds.labels[0]), ("x", true));
}

#[test]
fn dataset_errors_name_the_metadata_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "reps/a.tsv", "amino_acid\ttemplates\nCASF\t1\n");
    write(d, "reps/dropped.tsv", "amino_acid\ttemplates\nCA*F\t1\n");
    let reps = d.join("reps");

    let meta = write(d, "m1.tsv", "ID\tlabel\na\t1\nnobody\t0\n");
    let msg = assert_names(read_dataset(&reps, &meta, "ID", "label", "1"), &meta, 3);
    assert!(msg.contains("`nobody`"), "{msg}");

    let meta = write(d, "m2.tsv", "ID\tlabel\na\t1\n");
    let msg = assert_names(read_dataset(&reps, &meta, "ID", "ctla4", "1"), &meta, 1);
    assert!(msg.contains("`ctla4`"), "{msg}");
    assert_names(read_dataset(&reps, &meta, "Sample", "label", "1"), &meta, 1);

    let meta = write(d, "m3.tsv", "ID\tlabel\na\n");
    assert_names(read_dataset(&reps, &meta, "ID", "label", "1"), &meta, 2);

    let meta = write(d, "m4.tsv", "ID\tlabel\na\t1\na\t0\n");
    let msg = assert_names(read_dataset(&reps, &meta, "ID", "label", "1"), &meta, 3);
    assert!(msg.contains("line 2"), "{msg}");

    let meta = write(d, "m5.tsv", "ID\tlabel\tpath\na\t1\tmissing.tsv\n");
    assert_names(read_dataset(&reps, &meta, "ID", "label", "1"), &meta, 2);

    let meta = write(d, "m6.tsv", "ID\tlabel\n");
    assert!(read_dataset(&reps, &meta, "ID", "label", "1").is_err());

    // A bag whose every row is dropped cannot be attended over.
    let meta = write(d, "m7.tsv", "ID\tlabel\ndropped\t1\n");
    let msg = read_dataset(&reps, &meta, "ID", "label", "1").unwrap_err().to_string();
    assert!(msg.contains("dropped.tsv") && msg.contains("no sequence left"), "{msg}");

    // A malformed repertoire file names itself.
    let bad = write(d, "reps/bad.tsv", "amino_acid\ttemplates\nCASF\t1.5\n");
    let meta = write(d, "m8.tsv", "ID\tlabel\na\t1\nbad\t0\n");
    assert_names(read_dataset(&reps, &meta, "ID", "label", "1"), &bad, 2);
}

#[test]
fn a_pool_reads_every_tsv_below_a_folder_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "z/b.tsv", "beta\tcounts\nCAWF\t1\n");
    write(d, "a.tsv", "beta\tcounts\nCASF\t1\n");
    write(d, "z/a/deep.tsv", "CDR3.aa\tClones\nCAGF\t1\n");
    write(d, "metadata.tsv", "ID\tlabel\nx\t1\n");
    write(d, "z/notes.txt", "not a repertoire");
    let (reps, reports) = read_dir_pool(d).unwrap();
    let ids: Vec<&str> = reps.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "z/a/deep", "z/b"]);
    assert_eq!(reports.len(), 3);
    assert_eq!(to_string(reps[1].seq(0)), "CAGF");

    let empty = tempfile::tempdir().unwrap();
    assert!(read_dir_pool(empty.path()).is_err());
}

// ---- implant generator -----------------------------------------------------

/// The count of every toy signal sequence: no background row has it, so a
/// bag row that carries it took its count from the signal, not from the
/// background row it replaced.
const SIGNAL_COUNT: u64 = 77_777;

/// A background of `n` distinct sequences over three repertoires (with some
/// repeated across them and a few that are also signal) and a signal set.
fn toy_pools(n: usize) -> (Vec<Repertoire>, Vec<Repertoire>) {
    let word = |i: usize| -> Vec<u8> {
        let mut s = vec![1u8, 0];
        let mut v = i;
        for _ in 0..4 {
            s.push((v % 20) as u8);
            v /= 20;
        }
        s.push(4);
        s
    };
    let mut background =
        vec![Repertoire::new("bg0"), Repertoire::new("bg1"), Repertoire::new("bg2")];
    for i in 0..n {
        background[i % 3].push(&word(i), 1 + i as u64).unwrap();
        if i % 7 == 0 {
            // Seen again in another repertoire with another count.
            background[(i + 1) % 3].push(&word(i), 1000).unwrap();
        }
    }
    let mut signal_a = Repertoire::new("epitope-A");
    let mut signal_b = Repertoire::new("epitope-B");
    for i in 0..12 {
        signal_a.push(&[8, 8, 8, i as u8, 8], SIGNAL_COUNT).unwrap();
        signal_b.push(&[9, 9, i as u8, 9], SIGNAL_COUNT).unwrap();
    }
    // Two background sequences are signal too, and one signal is in both sets.
    signal_a.push(&word(3), SIGNAL_COUNT).unwrap();
    signal_b.push(&word(5), SIGNAL_COUNT).unwrap();
    signal_b.push(&[8, 8, 8, 0, 8], SIGNAL_COUNT).unwrap();
    (background, vec![signal_a, signal_b])
}

fn small_config(seed: u64) -> ImplantConfig {
    ImplantConfig { bags: 10, bag_size: 50, witness_rate: 0.05, positive_fraction: 0.4, seed }
}

#[test]
fn implanted_bags_hold_signal_exactly_where_they_say() {
    let (background, signals) = toy_pools(400);
    let cfg = small_config(7);
    let set = implant(&background, &signals, &cfg).unwrap();
    assert_eq!(set.background_pool, 400 - 2);
    assert_eq!(set.removed_from_background, 2);
    assert_eq!(set.signal_pool, 26);
    assert_eq!(set.signal_ids, ["epitope-A", "epitope-B"]);
    assert_eq!(cfg.witnesses(), 3);
    assert_eq!(set.dataset.len(), 10);
    assert_eq!(set.dataset.positives(), 4);

    let signal: HashSet<Vec<u8>> =
        signals.iter().flat_map(|r| r.iter().map(|(s, _)| s.to_vec())).collect();
    let first_count: std::collections::HashMap<Vec<u8>, u64> = {
        let mut m = std::collections::HashMap::new();
        for rep in &background {
            for (s, c) in rep.iter() {
                m.entry(s.to_vec()).or_insert(c);
            }
        }
        m
    };
    assert!(
        background.iter().all(|r| r.iter().all(|(_, c)| c != SIGNAL_COUNT)),
        "the signal count must tell signal counts from background counts"
    );
    for (b, rep) in set.dataset.repertoires.iter().enumerate() {
        assert_eq!(rep.id, format!("bag{b:03}"));
        assert_eq!(rep.len(), 50);
        let distinct: HashSet<&[u8]> = rep.iter().map(|(s, _)| s).collect();
        assert_eq!(distinct.len(), 50, "bag {b}: rows distinct");
        let rows: Vec<usize> = (0..rep.len()).filter(|&i| signal.contains(rep.seq(i))).collect();
        assert_eq!(rows, set.implanted[b], "bag {b}");
        if set.dataset.labels[b] {
            assert_eq!(rows.len(), 3, "bag {b}");
            for (&row, &src) in rows.iter().zip(&set.implanted_source[b]) {
                // The count of the background row it replaced, not the signal's.
                assert_ne!(rep.count(row), SIGNAL_COUNT, "bag {b} row {row}");
                assert!(first_count.values().any(|&c| c == rep.count(row)), "bag {b} row {row}");
                let holder = signals.iter().position(|s| s.iter().any(|(q, _)| q == rep.seq(row)));
                assert_eq!(Some(src), holder, "first signal set holding it");
            }
        } else {
            assert!(rows.is_empty() && set.implanted_source[b].is_empty(), "bag {b}");
        }
        for (i, (s, c)) in rep.iter().enumerate() {
            if !set.implanted[b].contains(&i) {
                assert_eq!(Some(&c), first_count.get(s), "bag {b} row {i}: first seen count");
            }
        }
    }

    // Another seed, another set; the same seed, the same set.
    assert_eq!(implant(&background, &signals, &cfg).unwrap(), set);
    let other = implant(&background, &signals, &small_config(8)).unwrap();
    assert_ne!(other.dataset, set.dataset);
}

#[test]
fn impossible_configs_are_refused() {
    let (background, signals) = toy_pools(100);
    let base = small_config(0);
    let bad = [
        ImplantConfig { bags: 1, ..base },
        ImplantConfig { bag_size: 0, ..base },
        ImplantConfig { bag_size: 99, ..base },
        ImplantConfig { witness_rate: 0.0, ..base },
        ImplantConfig { witness_rate: 1.0, ..base },
        ImplantConfig { witness_rate: f64::NAN, ..base },
        ImplantConfig { positive_fraction: 0.0, ..base },
        ImplantConfig { positive_fraction: 1.0, ..base },
        ImplantConfig { bags: 2, positive_fraction: 0.2, ..base },
        // 27 signal sequences per bag from a pool of 26.
        ImplantConfig { bag_size: 90, witness_rate: 0.3, ..base },
    ];
    for cfg in bad {
        assert!(implant(&background, &signals, &cfg).is_err(), "{cfg:?}");
    }
    let ok = ImplantConfig { bag_size: 98, witness_rate: 0.001, ..base };
    let set = implant(&background, &signals, &ok).unwrap();
    assert_eq!(ok.witnesses(), 1, "at least one witness");
    assert!(set.implanted.iter().zip(&set.dataset.labels).all(|(r, &l)| r.len() == usize::from(l)));
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn written_sets_read_back_exactly_and_repeat_byte_for_byte() {
    let (background, signals) = toy_pools(400);
    let set = implant(&background, &signals, &small_config(3)).unwrap();
    let out = tempfile::tempdir().unwrap();
    write_generated(&set, out.path()).unwrap();

    let (ds, reports) = read_dataset(
        &out.path().join("repertoires"),
        &out.path().join("metadata.tsv"),
        "ID",
        "label",
        "1",
    )
    .unwrap();
    assert_eq!(ds, set.dataset);
    assert!(reports.iter().all(|r| r.rows == 50 && r.kept == 50 && r.dropped() + r.merged == 0));
    assert_eq!(read_implanted(&out.path().join("implanted.tsv"), &ds).unwrap(), set.implanted);

    let meta = fs::read_to_string(out.path().join("metadata.tsv")).unwrap();
    let mut lines = meta.lines();
    assert_eq!(lines.next(), Some("ID\tlabel\tn_sequences\tn_implanted"));
    let first = lines.next().unwrap();
    let label = u8::from(set.dataset.labels[0]);
    assert_eq!(first, format!("bag000\t{label}\t50\t{}", 3 * label));
    let truth = fs::read_to_string(out.path().join("implanted.tsv")).unwrap();
    assert_eq!(truth.lines().count(), 1 + 4 * 3);
    assert!(
        truth.lines().skip(1).all(|l| l.ends_with("\tepitope-A") || l.ends_with("\tepitope-B"))
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.path().join("generator.json")).unwrap())
            .unwrap();
    assert_eq!(json["config"]["seed"], 3);
    assert_eq!(json["config"]["bag_size"], 50);
    assert_eq!(json["background_pool"], 398);
    assert_eq!(json["witnesses_per_positive_bag"], 3);

    let again = tempfile::tempdir().unwrap();
    write_generated(&implant(&background, &signals, &small_config(3)).unwrap(), again.path())
        .unwrap();
    let (a, b) = (files_under(out.path()), files_under(again.path()));
    assert_eq!(a.len(), 10 + 3);
    assert_eq!(a, b, "same seed, same bytes");
}

#[test]
fn implanted_files_are_checked_against_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset {
        repertoires: vec![Repertoire::from_strings("b0", &[("CASF", 1), ("CAWF", 1)]).unwrap()],
        labels: vec![true],
    };
    let ok = write(dir.path(), "ok.tsv", "ID\trow\tamino_acid\nb0\t1\tCAWF\nb0\t0\tCASF\n");
    assert_eq!(read_implanted(&ok, &ds).unwrap(), vec![vec![0, 1]]);
    for (name, body, record) in [
        ("id.tsv", "b9\t0\tCASF\n", 2),
        ("range.tsv", "b0\t2\tCASF\n", 2),
        ("seq.tsv", "b0\t0\tCAWF\n", 2),
        ("short.tsv", "b0\t0\n", 2),
    ] {
        let path = write(dir.path(), name, &format!("ID\trow\tamino_acid\n{body}"));
        assert_names(read_implanted(&path, &ds), &path, record);
    }
}

// ---- encoding --------------------------------------------------------------

fn channels(len: usize) -> [Vec<f32>; 3] {
    let p: Vec<[f32; 3]> = (0..len).map(|j| position_channels(len, j)).collect();
    [0, 1, 2].map(|c| p.iter().map(|x| x[c]).collect())
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn position_channels_match_models_md() {
    let [c20, c21, c22] = channels(5);
    assert_close(&c20, &[1.0, 0.5, 0.0, 0.0, 0.0]);
    assert_close(&c21, &[0.0, 0.0, 0.0, 0.5, 1.0]);
    assert_close(&c22, &[0.0, 0.5, 1.0, 0.5, 0.0]);

    // L = 1: t = 1, so v = 1 in the first half.
    assert_eq!(channels(1), [vec![1.0], vec![0.0], vec![0.0]]);
    // L = 2: t = 1, 0; both ends.
    assert_eq!(channels(2), [vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 0.0]]);
    // Even L = 4: t = 1, 2/3, 1/3, 0; h = 2.
    let third = 1.0 / 3.0;
    let [c20, c21, c22] = channels(4);
    assert_close(&c20, &[1.0, third, 0.0, 0.0]);
    assert_close(&c21, &[0.0, 0.0, third, 1.0]);
    assert_close(&c22, &[0.0, 2.0 * third, 2.0 * third, 0.0]);
    // Odd L = 3: the middle position is all centre.
    assert_eq!(channels(3), [vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]);

    // For every length from 2 up: ch21 mirrors ch20, v + (1 - v) = 1, and
    // ch20 is zero from ceil(L/2) on.
    for len in 2..=MAX_LEN {
        let [c20, c21, c22] = channels(len);
        for j in 0..len {
            assert!((c20[j] - c21[len - 1 - j]).abs() <= 1e-6, "L {len} j {j}");
            assert!((c20[j] + c21[j] + c22[j] - 1.0).abs() <= 1e-6, "L {len} j {j}");
            if j >= len.div_ceil(2) {
                assert_eq!(c20[j], 0.0, "L {len} j {j}");
            } else {
                assert_eq!(c21[j], 0.0, "L {len} j {j}");
            }
        }
    }
}

#[test]
fn encode_writes_one_hot_positions_and_zero_padding() {
    let a = parse_sequence("CAS").unwrap();
    let b = parse_sequence("W").unwrap();
    let (data, lengths, l_max) = encode(&[&a, &b], None, 2.0).unwrap();
    assert_eq!((lengths.clone(), l_max), (vec![3, 1], 3));
    assert_eq!(data.len(), 2 * 3 * CHANNELS);
    let cell =
        |s: usize, j: usize| &data[(s * l_max + j) * CHANNELS..(s * l_max + j + 1) * CHANNELS];
    for (j, &aa) in a.iter().enumerate() {
        let mut want = vec![0.0; CHANNELS];
        want[aa as usize] = 2.0;
        for (c, p) in position_channels(3, j).into_iter().enumerate() {
            want[20 + c] = 2.0 * p;
        }
        assert_eq!(cell(0, j), want.as_slice(), "position {j}");
    }
    let mut want = vec![0.0; CHANNELS];
    want[18] = 2.0; // W
    want[20] = 2.0;
    assert_eq!(cell(1, 0), want.as_slice());
    assert!(cell(1, 1).iter().chain(cell(1, 2)).all(|&v| v == 0.0), "padding");

    // Counts scale the amino-acid channels only, by ln(max(count, 1)).
    let (data, _, _) = encode(&[&a, &b], Some(&[10.0, 0.5]), 1.0).unwrap();
    let at = |s: usize, j: usize, c: usize| data[(s * 3 + j) * CHANNELS + c];
    assert!((at(0, 1, 0) - 10f32.ln()).abs() <= 1e-6);
    assert_eq!(at(0, 1, 20 + 2), position_channels(3, 1)[2]);
    assert_eq!(at(1, 0, 18), 0.0, "count below 1 counts as 1, ln 1 = 0");
    assert_eq!(at(1, 0, 20), 1.0);
    assert_eq!(count_weight(0.0), 0.0);

    assert!(encode(&[&a], Some(&[1.0, 2.0]), 1.0).is_err());
    assert!(encode(&[&[3, 20]], None, 1.0).is_err());
    let (data, lengths, l_max) = encode(&[], None, 1.0).unwrap();
    assert!(data.is_empty() && lengths.is_empty() && l_max == 0);
}

/// The standard deviation of every channel of every real position, from the
/// encoded tensor itself.
fn direct_std(rep: &Repertoire, log_counts: bool) -> f64 {
    let seqs: Vec<&[u8]> = rep.iter().map(|(s, _)| s).collect();
    let counts: Vec<f32> = rep.counts().iter().map(|&c| c as f32).collect();
    let (data, lengths, l_max) =
        encode(&seqs, log_counts.then_some(counts.as_slice()), 1.0).unwrap();
    let mut values = Vec::new();
    for (s, &len) in lengths.iter().enumerate() {
        values.extend(
            data[s * l_max * CHANNELS..(s * l_max + len) * CHANNELS].iter().map(|&v| v as f64),
        );
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn bag_scale_is_one_over_the_std_of_the_real_positions() {
    let rep = Repertoire::from_strings(
        "bag",
        &[("CASSLQAGGNTDTQYF", 539), ("CAWF", 1), ("C", 3), ("CASSVYSTISEQYF", 20), ("GG", 0)],
    )
    .unwrap();
    for log_counts in [false, true] {
        let want = 1.0 / direct_std(&rep, log_counts);
        let got = bag_scale(&rep, log_counts).unwrap() as f64;
        assert!((got - want).abs() <= 1e-6 * want, "log {log_counts}: {got} vs {want}");
    }
    // The lengths differ enough that counting the padding `encode` lays down
    // (up to the longest sequence) would give another scale, so the check
    // above would catch a scale that took the padding in.
    let seqs: Vec<&[u8]> = rep.iter().map(|(q, _)| q).collect();
    let (padded, _, _) = encode(&seqs, None, 1.0).unwrap();
    let n = padded.len() as f64;
    let mean = padded.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let padded_std =
        (padded.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let real_std = direct_std(&rep, false);
    assert!((padded_std / real_std - 1.0).abs() > 0.1, "{padded_std} vs {real_std}");

    // Scaled by it, the bag's real values have unit spread.
    let s = bag_scale(&rep, true).unwrap();
    let seqs: Vec<&[u8]> = rep.iter().map(|(q, _)| q).collect();
    let counts: Vec<f32> = rep.counts().iter().map(|&c| c as f32).collect();
    let (data, lengths, l_max) = encode(&seqs, Some(&counts), s).unwrap();
    let real: Vec<f64> = lengths
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| data[i * l_max * CHANNELS..(i * l_max + len) * CHANNELS].to_vec())
        .map(f64::from)
        .collect();
    let mean = real.iter().sum::<f64>() / real.len() as f64;
    let var = real.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / real.len() as f64;
    assert!((var - 1.0).abs() <= 1e-5, "{var}");

    assert!(bag_scale(&Repertoire::new("empty"), false).is_err());
}

#[test]
fn sample_rows_draws_with_replacement_and_keeps_unique_rows() {
    let mut rng = SmallRng::seed_from_u64(1);
    let rows = sample_rows(1000, 500, &mut rng);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
    assert!(rows.iter().all(|&r| r < 1000));
    // 1000 (1 - e^-0.5) = 393 expected, sd about 10.
    assert!((330..460).contains(&rows.len()), "{}", rows.len());

    // A bag smaller than k is still drawn with replacement: not all of it comes back.
    let rows = sample_rows(100, 100, &mut rng);
    assert!(rows.len() < 100 && rows.len() > 40, "{}", rows.len());
    assert_eq!(sample_rows(1, 5, &mut rng), vec![0]);
    assert!(sample_rows(0, 5, &mut rng).is_empty());
    assert!(sample_rows(5, 0, &mut rng).is_empty());
}

// ---- real data -------------------------------------------------------------

#[test]
fn real_immunarch_repertoires_match_their_metadata() {
    let Some(root) = common::repertoires_dir() else { return };
    let dir = root.join("immunarch-immdata");
    let meta = dir.join("metadata.tsv");
    let (ds, reports) =
        read_dataset(&dir.join("repertoires"), &meta, "Sample", "Status", "MS").unwrap();
    assert_eq!(ds.len(), 12);
    assert_eq!(ds.positives(), 6);

    // n_clonotypes = rows; n_valid_aa = rows using only the 20 letters, so
    // after the merges of repeated amino-acid sequences (different
    // nucleotides) kept + merged = n_valid_aa. No CDR3 here exceeds 30.
    let text = fs::read_to_string(&meta).unwrap();
    let mut merged = 0;
    assert_eq!(text.lines().count(), 1 + 12);
    for (i, line) in text.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let (rep, report) = (&ds.repertoires[i], &reports[i]);
        assert_eq!(rep.id, f[0]);
        assert_eq!(ds.labels[i], f[4] == "MS");
        assert_eq!(report.rows, f[6].parse::<usize>().unwrap(), "{report}");
        assert_eq!(report.kept + report.merged, f[7].parse::<usize>().unwrap(), "{report}");
        assert_eq!(report.dropped_length + report.dropped_empty + report.dropped_unproductive, 0);
        assert_eq!(report.layout, Layout::Immunarch);
        merged += report.merged;
        eprintln!("{report}");
    }
    let kept: usize = reports.iter().map(|r| r.kept).sum();
    let alphabet: usize = reports.iter().map(|r| r.dropped_alphabet).sum();
    assert_eq!((kept, merged, alphabet), (74_786, 707, 1_327));
    // MS1's first row is CASSLQAGGNTDTQYF with 539 clones; line 2579 has it
    // again (another nucleotide sequence) with 1, merged into the first.
    let ms1 = ds.repertoires.iter().find(|r| r.id == "MS1").unwrap();
    assert_eq!((to_string(ms1.seq(0)).as_str(), ms1.count(0)), ("CASSLQAGGNTDTQYF", 540));
}

#[test]
fn real_rudqvist_repertoires_keep_the_productive_rows() {
    let Some(root) = common::repertoires_dir() else { return };
    let dir = root.join("deeptcr-rudqvist");
    let (ds, reports) = read_dataset(&dir, &dir.join("metadata.tsv"), "ID", "ctla4", "1").unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.positives(), 10);
    assert!(reports.iter().all(|r| r.layout == Layout::AdaptiveV2));
    let sum = |f: fn(&ReadReport) -> usize| -> usize { reports.iter().map(f).sum() };
    let (rows, kept, merged): (usize, usize, usize) =
        (sum(|r| r.rows), sum(|r| r.kept), sum(|r| r.merged));
    let unproductive: usize = sum(|r| r.dropped_unproductive);
    assert_eq!(rows, 36_502);
    assert_eq!(rows - unproductive, 25_117, "SOURCE.md's productive rows");
    // Every productive row is a pure 20-letter CDR3 of at most 30; the rest of
    // the difference is nucleotide variants of one amino-acid sequence.
    assert_eq!(sum(|r| r.dropped_alphabet + r.dropped_length + r.dropped_empty), 0);
    assert_eq!((kept, merged), (23_586, 1_531));
    let smallest = ds.repertoires.iter().map(Repertoire::len).min().unwrap();
    let largest = ds.repertoires.iter().map(Repertoire::len).max().unwrap();
    eprintln!("rudqvist: {kept} kept, {merged} merged, bags of {smallest} to {largest}");
}

#[test]
fn real_signal_folder_and_a_real_implanted_set() {
    let Some(root) = common::repertoires_dir() else { return };
    let signal_dir = root.join("deeptcr-antigens/Human_Antigens/A2-GILGFVFTL");
    let (signals, reports) = read_dir_pool(&signal_dir).unwrap();
    let ids: Vec<&str> = signals.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["A2-GILGFVFTL-Dash", "A2-GILGFVFTL_Glanville"]);
    let rows: Vec<(usize, usize, usize)> =
        reports.iter().map(|r| (r.rows, r.kept, r.merged)).collect();
    assert_eq!(rows, [(275, 150, 125), (586, 562, 24)]);
    assert!(reports.iter().all(|r| r.dropped() == 0));

    let (background, _) = read_dir_pool(&root.join("immunarch-immdata/repertoires")).unwrap();
    assert_eq!(background.len(), 12);
    let cfg = ImplantConfig {
        bags: 8,
        bag_size: 2_000,
        witness_rate: 0.01,
        positive_fraction: 0.5,
        seed: 1,
    };
    let set = implant(&background, &signals, &cfg).unwrap();
    eprintln!(
        "background pool {}, signal pool {}, {} background sequences were signal",
        set.background_pool, set.signal_pool, set.removed_from_background
    );
    assert_eq!(set.signal_pool, 693);
    assert_eq!(set.background_pool + set.removed_from_background, 72_882);
    assert_eq!(set.removed_from_background, 41);
    assert_eq!(set.dataset.positives(), 4);
    assert!(
        set.implanted.iter().zip(&set.dataset.labels).all(|(r, &l)| r.len() == 20 * usize::from(l))
    );
    let scale = bag_scale(&set.dataset.repertoires[0], false).unwrap();
    assert!(scale.is_finite() && scale > 1.0, "{scale}");
}
