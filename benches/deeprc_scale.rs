//! DeepRC training steps at growing bag sizes: steps per second and the
//! memory a step needs, on bags built from the real repertoires
//! (`../shared/data/repertoires`). Prints a table; run with
//! `cargo bench --bench deeprc_scale`.
//!
//! Two ways to draw a training bag: DeepRC's, 10,000 rows sampled with
//! replacement (unique kept), and all of it (20 N draws, so every row but a
//! share of e^-20). The drawn rows are ranked without gradient in chunks and
//! the top 10% go through the differentiable pass: work and memory follow
//! the rows drawn, never their square (one query per bag).
//!
//! Each case runs in a process of its own (the bench starts itself again).
//! Step memory is the resident-set high-water mark of the steps (restarted
//! through /proc/self/clear_refs once the data are loaded) minus the
//! resident set at that point; peak RSS is the whole process's, loading
//! included.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use lwpf::autograd::ParamStore;
use lwpf::data::repertoire::{self, ImplantConfig};
use lwpf::models::deeprc::DeepRc;
use lwpf::optim::AdamW;
use lwpf::train::bitpattern::ForgetKind;
use lwpf::train::deeprc::{DeepRcTrainConfig, RepertoireData, training_step};
use lwpf::train::peak_rss_mib;

/// A field of /proc/self/status in MiB (`VmRSS`: resident now, `VmHWM`: its
/// high-water mark); `None` off Linux.
fn status_mib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Restarts the high-water mark at the current resident set, so that the
/// mark read later is the steps' own, not the loading's.
fn reset_high_water_mark() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// (sequences per bag, rows drawn per training bag).
const CASES: [(usize, usize); 5] =
    [(1_000, 10_000), (10_000, 10_000), (10_000, 200_000), (50_000, 10_000), (50_000, 1_000_000)];

fn main() -> lwpf::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/repertoires");
    if !root.is_dir() {
        eprintln!("skipping: {} is missing", root.display());
        return Ok(());
    }
    if let Some(case) = std::env::var("LWPF_SCALE_CASE").ok().and_then(|c| c.parse().ok()) {
        return run_case(&root, case);
    }
    println!(
        "| sequences per bag | rows drawn per bag | in the differentiable pass (4 bags) | \
         steps/s | step memory (MiB) | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    let me = std::env::current_exe().map_err(|e| lwpf::Error::io("current_exe", e))?;
    for case in 0..CASES.len() {
        let status = std::process::Command::new(&me)
            .env("LWPF_SCALE_CASE", case.to_string())
            .status()
            .map_err(|e| lwpf::Error::io(&me, e))?;
        if !status.success() {
            eprintln!("case {case} failed: {status}");
        }
    }
    Ok(())
}

fn run_case(root: &Path, case: usize) -> lwpf::Result<()> {
    let Some(&(n, sample)) = CASES.get(case) else { return Ok(()) };
    let (background, _) = repertoire::read_dir_pool(&root.join("immunarch-immdata/repertoires"))?;
    let (signals, _) =
        repertoire::read_dir_pool(&root.join("deeptcr-antigens/Human_Antigens/A2-GILGFVFTL"))?;
    let steps: u32 =
        std::env::var("LWPF_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let implant =
        ImplantConfig { bags: 8, bag_size: n, witness_rate: 0.01, positive_fraction: 0.5, seed: 1 };
    let generated = repertoire::implant(&background, &signals, &implant)?;
    let data = RepertoireData::new(generated.dataset, false, None)?;
    drop(background);
    let mut cfg = DeepRcTrainConfig::new("unused".into(), ForgetKind::Pfu);
    cfg.sample = sample;
    let mut store = ParamStore::new();
    let model = DeepRc::new(&mut store, cfg.model(), 0)?;
    let mut adam = AdamW::new(&store, 0.0);
    let mut rng = SmallRng::seed_from_u64(0);
    let bags = [0, 1, 2, 3];

    // Read before the first step: memory a step frees may stay resident, so
    // a reading between steps would hide what the steps need. The first step
    // is not timed (it starts the thread pool).
    let reset = reset_high_water_mark();
    let before = status_mib("VmRSS:");
    training_step(&model, &mut store, &mut adam, &data, &cfg, &bags, &mut rng, (0, 0))?;
    let start = Instant::now();
    let mut kept = 0;
    for s in 1..=steps as u64 {
        let out =
            training_step(&model, &mut store, &mut adam, &data, &cfg, &bags, &mut rng, (s, s))?;
        kept = out.sequences;
    }
    let secs = start.elapsed().as_secs_f64();
    let step_memory = match (reset, before, status_mib("VmHWM:")) {
        (true, Some(before), Some(peak)) => format!("{:.0}", (peak - before).max(0.0)),
        _ => "n/a".into(),
    };
    let drawn = if sample >= 20 * n { "all".to_string() } else { format!("{sample} sampled") };
    println!(
        "| {n} | {drawn} | {kept} | {:.2} | {step_memory} | {:.0} |",
        steps as f64 / secs,
        peak_rss_mib()
    );
    Ok(())
}
