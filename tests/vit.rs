//! The vision transformer: timm's parameter names and shapes, its gradients
//! against finite differences, learning on real CIFAR images, the training
//! run's outputs, and the command line's handling of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use lwpf::autograd::gradcheck::{self, check_coordinate, project};
use lwpf::autograd::{ParamStore, Tape, Tensor};
use lwpf::data::{self, Transform, cifar};
use lwpf::models::vit::{Vit, VitConfig, timm_no_weight_decay};
use lwpf::op::{Forgetting, Pfu};
use lwpf::optim::{AdamW, CosineSchedule, Optimizer, Sgd};
use lwpf::train::checkpoint;
use lwpf::train::vit::{OptimizerKind, VitTrainConfig, train};

fn cifar10_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin")
}

fn tiny(img: usize, embed: usize, heads: usize, depth: usize) -> VitConfig {
    VitConfig {
        name: "tiny".into(),
        img_size: img,
        patch: 4,
        num_classes: 3,
        embed,
        heads,
        depth,
        ..VitConfig::cpu_small()
    }
}

#[test]
fn parameter_names_and_shapes_are_timms() {
    let mut store = ParamStore::new();
    Vit::new(tiny(8, 8, 2, 1), &mut store, 0).unwrap();
    let got: Vec<(String, Vec<usize>)> =
        store.iter().map(|(_, p)| (p.name.clone(), p.value.shape().to_vec())).collect();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("cls_token", vec![1, 1, 8]),
        ("pos_embed", vec![1, 5, 8]),
        ("patch_embed.proj.weight", vec![8, 3, 4, 4]),
        ("patch_embed.proj.bias", vec![8]),
        ("blocks.0.norm1.weight", vec![8]),
        ("blocks.0.norm1.bias", vec![8]),
        ("blocks.0.attn.qkv.weight", vec![24, 8]),
        ("blocks.0.attn.qkv.bias", vec![24]),
        ("blocks.0.attn.proj.weight", vec![8, 8]),
        ("blocks.0.attn.proj.bias", vec![8]),
        ("blocks.0.norm2.weight", vec![8]),
        ("blocks.0.norm2.bias", vec![8]),
        ("blocks.0.mlp.fc1.weight", vec![32, 8]),
        ("blocks.0.mlp.fc1.bias", vec![32]),
        ("blocks.0.mlp.fc2.weight", vec![8, 32]),
        ("blocks.0.mlp.fc2.bias", vec![8]),
        ("norm.weight", vec![8]),
        ("norm.bias", vec![8]),
        ("head.weight", vec![3, 8]),
        ("head.bias", vec![3]),
    ];
    let want: Vec<(String, Vec<usize>)> =
        want.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
    assert_eq!(got, want);
    for (_, p) in store.iter() {
        assert_eq!(p.weight_decay, !timm_no_weight_decay(&p.name, p.value.shape()), "{}", p.name);
    }
}

#[test]
fn deit_sizes_match_timm_parameter_counts() {
    // timm's deit_tiny_patch16_224 and deit_small_patch16_224.
    for (cfg, count) in [(VitConfig::deit_tiny(), 5_717_416), (VitConfig::deit_small(), 22_050_664)]
    {
        let mut store = ParamStore::new();
        Vit::new(cfg.clone(), &mut store, 0).unwrap();
        assert_eq!(store.num_elements(), count, "{}", cfg.name);
        assert_eq!(store.len(), 8 + 12 * cfg.depth);
    }
    let base = VitConfig::deit_base();
    assert_eq!((base.embed, base.heads, base.depth, base.head_dim()), (768, 12, 12, 64));
    assert!(VitConfig::by_name("deit-huge").is_err());
    let bad = VitConfig { heads: 5, ..VitConfig::cpu_small() };
    assert!(Vit::new(bad, &mut ParamStore::new(), 0).is_err());
}

#[test]
fn initialization_follows_timm() {
    let mut store = ParamStore::new();
    Vit::new(VitConfig::cpu_small(), &mut store, 7).unwrap();
    let get = |name: &str| store.value(store.find(name).unwrap()).to_vec();
    let std = |v: &[f32]| {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    // 27,648 draws: the sample std is within 1% of 0.02 with near certainty.
    let qkv = get("blocks.2.attn.qkv.weight");
    assert!((std(&qkv) - 0.02).abs() < 2e-4, "{}", std(&qkv));
    assert!((std(&get("pos_embed")) - 0.02).abs() < 1e-3);
    assert!(get("blocks.2.attn.qkv.bias").iter().all(|&b| b == 0.0));
    assert!(get("blocks.0.norm1.weight").iter().all(|&w| w == 1.0));
    assert!(get("norm.bias").iter().all(|&b| b == 0.0));
    // The patch conv keeps PyTorch's default: uniform on +-1/sqrt(48).
    let patch = get("patch_embed.proj.weight");
    let bound = 1.0 / 48f32.sqrt();
    assert!(patch.iter().all(|w| w.abs() <= bound));
    assert!(patch.iter().any(|w| w.abs() > 0.9 * bound));
}

#[test]
fn vit_gradients_match_finite_differences() {
    // Parameters moved off their initialization, so that scores are of order
    // one and every op works in its generic regime; training mode, so the
    // noisy threshold and both dropouts are in the function (fixed seed).
    let mut cfg = tiny(8, 8, 2, 2);
    cfg.forgetting = Forgetting::Pfu(Pfu::vision_preset());
    cfg.attn_drop = 0.1;
    cfg.drop = 0.1;
    let mut store = ParamStore::new();
    let vit = Vit::new(cfg, &mut store, 3).unwrap();
    let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
    for (k, id) in ids.iter().enumerate() {
        let p = store.get_mut(*id);
        let noise = gradcheck::direction(p.value.numel(), 100 + k as u64);
        for (v, n) in p.value.data_mut().iter_mut().zip(noise) {
            *v += 0.4 * n;
        }
    }
    let images = Tensor::new(&[2, 3, 8, 8], gradcheck::direction(2 * 192, 9)).unwrap();
    let labels = [2, 0];
    let seed = 12345;
    let loss_of = |store: &ParamStore| -> lwpf::Result<(f64, f64)> {
        let mut tape = Tape::new(store);
        let x = tape.input(images.clone());
        let logits = vit.forward(&mut tape, x, true, seed)?;
        let loss = tape.cross_entropy(logits, &labels, 0.0)?;
        Ok(project(tape.value(loss).data(), &[1.0]))
    };

    let mut tape = Tape::new(&store);
    let x = tape.input(images.clone());
    let logits = vit.forward(&mut tape, x, true, seed).unwrap();
    let loss = tape.cross_entropy(logits, &labels, 0.0).unwrap();
    assert!(tape.attention_stats().iter().all(|s| s.forgotten > 0 && s.forgotten < s.entries));
    let grads = tape.backward(loss).unwrap();

    let names = [
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.1.attn.proj.weight",
        "norm.bias",
        "head.weight",
    ];
    let (mut checked, mut skipped) = (0, 0);
    for name in names {
        let id = store.find(name).unwrap();
        let n = store.value(id).numel();
        let g = grads.param(id).unwrap().to_vec();
        // Six coordinates spread over the tensor (for qkv: Q, K and V rows).
        for j in 0..6 {
            let index = (j * n) / 6 + (3 * j) % (n / 6).max(1);
            let x0 = store.value(id).data()[index];
            let mut probe = store.clone();
            let c = check_coordinate(x0, g[index], 1.0 / 1024.0, |x| {
                probe.get_mut(id).value.data_mut()[index] = x;
                loss_of(&probe)
            })
            .unwrap();
            if !c.smooth() {
                // An entry crossed the threshold within the step: no derivative.
                eprintln!("skip {name}[{index}]: {c:?}");
                skipped += 1;
                continue;
            }
            assert!(
                c.passes(),
                "{name}[{index}]: analytic {:.6e}, numeric {:.6e}, tolerance {:.2e}",
                c.analytic,
                c.numeric,
                c.tolerance()
            );
            checked += 1;
        }
    }
    assert!(checked >= 50, "checked {checked}, skipped {skipped} as not smooth");
}

#[test]
fn training_on_real_images_lowers_the_loss() {
    let set =
        cifar::read_file(&cifar10_dir().join("data_batch_1.bin"), cifar::Variant::Cifar10).unwrap();
    let indices: Vec<usize> = (0..32).collect();
    let images = data::batch(&set, &indices, &vec![Transform::NONE; 32]).unwrap();
    let labels: Vec<usize> = indices.iter().map(|&i| set.label(i)).collect();

    let mut cfg = tiny(32, 32, 2, 2);
    cfg.num_classes = 10;
    cfg.forgetting = Forgetting::Pfu(Pfu::vision_preset());
    let mut store = ParamStore::new();
    let vit = Vit::new(cfg, &mut store, 1).unwrap();
    let mut opt = AdamW::new(&store, 0.05);
    let steps = 80;
    let schedule =
        CosineSchedule { base_lr: 3e-3, min_lr: 1e-4, warmup_steps: 5, total_steps: steps };
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut tape = Tape::new(&store);
        let x = tape.input(images.clone());
        let logits = vit.forward(&mut tape, x, true, step).unwrap();
        let loss = tape.cross_entropy(logits, &labels, 0.0).unwrap();
        losses.push(tape.value(loss).item().unwrap());
        let grads = tape.backward(loss).unwrap();
        opt.step(&mut store, &grads, schedule.lr(step)).unwrap();
    }
    let first = losses[0];
    // The mean of the last ten steps: single steps jump when the noisy
    // threshold forgets a whole layer's attention.
    let last = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    // Ten classes start near ln 10 = 2.30; 32 images are memorized quickly.
    assert!((first - 10f32.ln()).abs() < 0.3, "initial loss {first}");
    assert!(last < 0.75 * first, "loss went from {first} to {last}: {losses:?}");
}

#[test]
fn sgd_and_the_schedule_follow_pytorch() {
    // One parameter p = 1 with gradient 0.5, momentum 0.9, weight decay 0.1:
    // g = 0.5 + 0.1 = 0.6, buf = 0.6, p = 1 - 0.1 * 0.6 = 0.94; then
    // g = 0.5 + 0.094 = 0.594, buf = 0.54 + 0.594 = 1.134, p = 0.94 - 0.1134.
    let mut store = ParamStore::new();
    let w = store.add("w", Tensor::full(&[1, 1], 1.0), true).unwrap();
    let mut sgd = Sgd::new(&store, 0.9, 0.1);
    for want in [0.94f32, 0.8266] {
        let mut tape = Tape::new(&store);
        let x = tape.input(Tensor::full(&[1, 1], 0.5));
        let wv = tape.param(w);
        let y = tape.linear(x, wv, None).unwrap();
        let grads = tape.backward(y).unwrap();
        sgd.step(&mut store, &grads, 0.1).unwrap();
        assert!((store.value(w).data()[0] - want).abs() < 1e-6);
    }

    // AdamW's first step moves each parameter by lr (times the sign of its
    // gradient) after shrinking it by lr * wd; exempt parameters do not shrink.
    let mut store = ParamStore::new();
    let a = store.add("a", Tensor::full(&[1, 1], 1.0), true).unwrap();
    let b = store.add("a.bias", Tensor::full(&[1], 1.0), false).unwrap();
    let mut adam = AdamW::new(&store, 0.5);
    let mut tape = Tape::new(&store);
    let x = tape.input(Tensor::full(&[1, 1], 2.0));
    let (av, bv) = (tape.param(a), tape.param(b));
    let y = tape.linear(x, av, Some(bv)).unwrap();
    let grads = tape.backward(y).unwrap();
    adam.step(&mut store, &grads, 0.01).unwrap();
    assert!((store.value(a).data()[0] - (1.0 * (1.0 - 0.005) - 0.01)).abs() < 1e-6);
    assert!((store.value(b).data()[0] - (1.0 - 0.01)).abs() < 1e-6);

    let s = CosineSchedule { base_lr: 1.0, min_lr: 0.0, warmup_steps: 4, total_steps: 14 };
    assert_eq!(s.lr(0), 0.25);
    assert_eq!(s.lr(3), 1.0);
    assert_eq!(s.lr(4), 1.0);
    assert!((s.lr(9) - 0.5).abs() < 1e-6);
    assert!(s.lr(14).abs() < 1e-6 && s.lr(100).abs() < 1e-6);
}

#[test]
fn checkpoints_round_trip_and_reject_a_wrong_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut a = ParamStore::new();
    Vit::new(tiny(8, 8, 2, 1), &mut a, 1).unwrap();
    let mut meta = std::collections::HashMap::new();
    meta.insert("epoch".to_string(), "3".to_string());
    checkpoint::save(&path, &a, meta).unwrap();

    let mut b = ParamStore::new();
    Vit::new(tiny(8, 8, 2, 1), &mut b, 2).unwrap();
    let meta = checkpoint::load(&path, &mut b).unwrap();
    assert_eq!(meta.get("epoch").map(String::as_str), Some("3"));
    for ((_, pa), (_, pb)) in a.iter().zip(b.iter()) {
        assert_eq!(pa.value.data(), pb.value.data(), "{}", pa.name);
    }

    // A wider model does not load, and keeps its own values.
    let mut c = ParamStore::new();
    Vit::new(tiny(8, 16, 2, 1), &mut c, 2).unwrap();
    let before = c.clone();
    let err = checkpoint::load(&path, &mut c).unwrap_err();
    assert!(err.to_string().contains("cls_token"), "{err}");
    for ((_, p), (_, q)) in before.iter().zip(c.iter()) {
        assert_eq!(p.value.data(), q.value.data());
    }
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(checkpoint::load(&path, &mut c).is_err());
}

#[test]
fn a_short_run_writes_metrics_summary_and_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = VitTrainConfig::new(
        "cpu-small",
        Forgetting::Pfu(Pfu::vision_preset()),
        OptimizerKind::AdamW,
    );
    cfg.epochs = 2;
    cfg.batch = 64;
    cfg.log_every = 1;
    cfg.train_limit = Some(128);
    cfg.test_limit = Some(100);
    cfg.data_dir = cifar10_dir();
    cfg.out = out.path().to_path_buf();
    cfg.progress = false;
    let summary = train(&cfg).unwrap();
    assert_eq!((summary.train_images, summary.test_images), (128, 100));
    assert_eq!(summary.epochs.len(), 2);
    assert_eq!(summary.forgotten_fraction_per_layer.len(), 4);
    // Early scores are near 0: the noisy threshold (center 0, std 1) forgets
    // nearly all or nearly none of a call's entries, the deterministic one
    // (z = 0) about half.
    assert!(summary.forgotten_fraction_per_layer.iter().all(|&f| (0.0..=1.0).contains(&f)));
    let eval = &summary.eval_forgotten_fraction_per_layer;
    assert!(eval.len() == 4 && eval.iter().all(|&f| f > 0.1 && f < 0.9), "{eval:?}");

    let lines = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["step", "step", "eval", "step", "step", "eval"]);
    assert_eq!(records[2]["images"], 100);
    assert_eq!(records[0]["forgotten_fraction"].as_array().unwrap().len(), 4);

    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["eval_accuracy"].as_f64().unwrap(), summary.eval_accuracy);
    assert!(s["goal_reached"].is_boolean() && s["wall_time_s"].as_f64().unwrap() > 0.0);
    assert_eq!(s["config"]["model"], "cpu-small");

    // The curves are drawn from metrics.jsonl at the end of the run, and
    // `lwpf plot` recognises the directory as a ViT run.
    assert!(lwpf::train::vit_plot::is_vit_run(out.path()));
    for ext in ["png", "svg"] {
        let len = std::fs::metadata(out.path().join(format!("curves.{ext}"))).unwrap().len();
        assert!(len > 1000, "curves.{ext} has {len} bytes");
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("summary.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "outputs are ordinary files, not private temporaries");
    }

    let mut store = ParamStore::new();
    Vit::new(cfg.model_config().unwrap(), &mut store, 99).unwrap();
    let meta = checkpoint::load(&out.path().join("checkpoint.safetensors"), &mut store).unwrap();
    assert_eq!(meta.get("epoch").map(String::as_str), Some("2"));
}

fn lwpf_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lwpf"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_command_lines_fail_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    for (args, expect) in [
        (vec!["train", "vit", "--forget", "sometimes"], "invalid value"),
        (vec!["train", "vit", "--forget", "pfu", "--epochs", "three"], "invalid value"),
        (vec!["train", "vit", "--forget", "pfu", "--batch", "-3"], "-3"),
        (vec!["train", "vit", "--forget", "pfu", "--model", "gpt"], "invalid value"),
        (vec!["train", "vit"], "--forget"),
        (
            vec!["train", "vit", "--forget", "pfu", "--data-dir", "/nonexistent", "--out", out_dir],
            "no such data directory",
        ),
        (vec!["train", "vit", "--forget", "none", "--epochs", "0", "--out", out_dir], "epochs"),
        (vec!["train", "vit", "--forget", "relu", "--lr", "nan", "--out", out_dir], "lr"),
        (vec!["train", "vit", "--forget", "relu", "--threads", "0", "--out", out_dir], "threads"),
    ] {
        let (code, stderr) = lwpf_cli(&args);
        assert!(code == 1 || code == 2, "{args:?}: exit {code}, {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
