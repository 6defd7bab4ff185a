//! The bit-pattern experiment end to end at a tiny scale: a run writes its
//! metrics and summary and is reproducible from its seed; the grid writes the
//! CSV, the table and the figure; the figure redraws from the runs on disk.

use indicatif::ProgressBar;
use lwpf::models::bitpattern::{NetKind, Setting};
use lwpf::train::bitpattern::figure;
use lwpf::train::bitpattern::grid::{GridConfig, load_curves, run_grid};
use lwpf::train::bitpattern::{ForgetKind, RunConfig, train_run};

#[test]
fn a_run_is_reproducible_and_logs_every_step() {
    let mut cfg = RunConfig::new(NetKind::Hopfield, Setting::Default, ForgetKind::Pfu, 3);
    cfg.steps = 30;
    cfg.eval_every = 10;
    let dir = tempfile::tempdir().unwrap();
    let a = train_run(&cfg, Some(dir.path()), &ProgressBar::hidden()).unwrap();
    let b = train_run(&cfg, None, &ProgressBar::hidden()).unwrap();
    assert_eq!(a.final_train_loss, b.final_train_loss);
    assert_eq!(a.final_eval_accuracy, b.final_eval_accuracy);
    assert_eq!(a.curve.len(), 3);
    // The median preset forgets about half the entries.
    let f = a.forgotten_fraction_per_layer[0];
    assert!((0.4..0.6).contains(&f), "forgotten fraction {f}");

    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "step").count(), 30);
    assert_eq!(kinds.iter().filter(|k| *k == "eval").count(), 3);
    assert_eq!(kinds[0], "config");
    assert!(dir.path().join("summary.json").is_file());

    let mut other = cfg.clone();
    other.seed = 4;
    let c = train_run(&other, None, &ProgressBar::hidden()).unwrap();
    assert_ne!(a.final_train_loss, c.final_train_loss);
}

#[test]
fn every_network_trains_a_few_steps() {
    for net in NetKind::ALL {
        for setting in Setting::ALL {
            let mut cfg = RunConfig::new(net, setting, ForgetKind::Relu, 0);
            cfg.steps = 4;
            let s = train_run(&cfg, None, &ProgressBar::hidden()).unwrap();
            assert!(s.final_train_loss.is_finite() && s.final_train_loss > 0.0, "{}", s.name);
            // Adapted Hopfield and pooling: up to 3 update steps (at least one:
            // xi_0 has no predecessor to compare with), then the retrieval.
            let calls = s.forgotten_fraction_per_call.len();
            if setting == Setting::Adapted && net != NetKind::Lookup {
                assert!((2..=4).contains(&calls), "{}: {calls} calls", s.name);
            } else {
                assert_eq!(calls, 1, "{}", s.name);
            }
        }
    }
}

#[test]
fn the_grid_writes_table_csv_and_figure_and_plot_redraws_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = GridConfig::paper(dir.path().to_path_buf(), 2);
    cfg.nets = vec![NetKind::Hopfield, NetKind::Pooling];
    cfg.settings = vec![Setting::Default];
    cfg.seeds = 2;
    cfg.steps = 20;
    cfg.progress = false;
    let report = run_grid(&cfg).unwrap();
    assert_eq!(report.summaries.len(), 2 * 3 * 2);
    assert_eq!(report.trained, 12);

    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12);
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(table.contains("| Hopfield | default |") && table.contains("relu beats none"));
    assert!(table.contains("The paper's claim"));
    for ext in ["png", "svg"] {
        let f = dir.path().join(format!("fig3.{ext}"));
        assert!(std::fs::metadata(&f).unwrap().len() > 1000, "{}", f.display());
    }
    let png = std::fs::read(dir.path().join("fig3.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // A second call finds every run finished and trains nothing.
    let again = run_grid(&cfg).unwrap();
    assert_eq!(again.trained, 0);
    assert_eq!(again.summaries.len(), 12);

    // The figure from the runs on disk: 2 networks x (loss, accuracy).
    let curves = load_curves(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(curves.len(), 12);
    let fig = figure::fig3(&curves).unwrap();
    assert_eq!((fig.cols, fig.panels.len()), (2, 4));
    assert!(
        fig.panels.iter().all(|p| p.series.len() == 3 && p.series.iter().all(|s| s.band.is_some()))
    );
    let files = figure::save_fig3(&curves, &dir.path().join("again"), "f").unwrap();
    assert!(files.iter().all(|f| f.is_file()));
}
