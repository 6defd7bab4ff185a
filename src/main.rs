//! The `lwpf` command line: training the paper's models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use log::info;

use lwpf::op::{Forgetting, Pfu};
use lwpf::train::vit::{OptimizerKind, VitTrainConfig, train};

#[derive(Parser)]
#[command(name = "lwpf", version, about = "Partially forgetting attention (LwPF)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one of the paper's models.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Run one of the paper's experiments over all its settings and seeds.
    #[command(subcommand)]
    Grid(GridCommand),
    /// Redraw the figures of finished runs (bit-pattern grid, ViT or DeepRC runs).
    Plot(lwpf::train::bitpattern::PlotArgs),
    /// Make data sets.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Real background repertoires with real epitope-specific sequences
    /// implanted into the positive bags (DeepRC's real data + implanted signal).
    Implant(lwpf::train::deeprc::cli::ImplantArgs),
}

#[derive(Subcommand)]
enum GridCommand {
    /// The bit-pattern experiment: 6 networks x 3 variants x seeds, table and figure.
    Bitpattern(lwpf::train::bitpattern::GridArgs),
    /// DeepRC: kernel widths x kernel counts x variants, cross-validated, table and figure.
    Deeprc(lwpf::train::deeprc::cli::GridArgs),
}

#[derive(Subcommand)]
enum TrainCommand {
    /// A vision transformer on CIFAR-10 (32 x 32 images, patch 4).
    Vit(VitArgs),
    /// A Hopfield network on the bit-pattern data (paper section 4.1).
    Bitpattern(lwpf::train::bitpattern::TrainArgs),
    /// DeepRC on immune repertoires, cross-validated (paper section 4.2).
    Deeprc(lwpf::train::deeprc::cli::TrainArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ForgetArg {
    /// Plain attention.
    None,
    /// Threshold 0, bias 0.
    Relu,
    /// Partial forgetting unit, vision preset (center 0, noise std 1, bias 0).
    Pfu,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    CpuSmall,
    DeitTiny,
    DeitSmall,
    DeitBase,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    /// AdamW, linear warmup and cosine decay (default lr 2e-3, weight decay 0.05).
    Adamw,
    /// SGD with momentum 0.9, the paper's settings (lr 0.01, weight decay 1e-4).
    Sgd,
}

#[derive(Args)]
struct VitArgs {
    /// Forgetting function of every attention block.
    #[arg(long, value_enum)]
    forget: ForgetArg,
    #[arg(long, value_enum, default_value = "cpu-small")]
    model: ModelArg,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Training images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate [default: 2e-3 for adamw, 0.01 for sgd].
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimizerArg,
    /// Weight decay [default: 0.05 for adamw, 1e-4 for sgd].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Epochs of linear learning-rate warmup.
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f32,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_grad: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Dropout on the attention weights.
    #[arg(long, default_value_t = 0.0)]
    attn_drop: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CIFAR-10 binary directory [default: ../shared/data/cifar-10-batches-bin].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where metrics.jsonl, summary.json and the checkpoint go.
    #[arg(long, default_value = "runs/vit")]
    out: PathBuf,
    /// Worker threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Train on only the first N images (smoke runs).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on only the first N test images (smoke runs).
    #[arg(long)]
    test_limit: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl VitArgs {
    fn config(&self) -> VitTrainConfig {
        let forgetting = match self.forget {
            ForgetArg::None => Forgetting::None,
            ForgetArg::Relu => Forgetting::Relu,
            ForgetArg::Pfu => Forgetting::Pfu(Pfu::vision_preset()),
        };
        let model = match self.model {
            ModelArg::CpuSmall => "cpu-small",
            ModelArg::DeitTiny => "deit-tiny",
            ModelArg::DeitSmall => "deit-small",
            ModelArg::DeitBase => "deit-base",
        };
        let optimizer = match self.optimizer {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        };
        let mut cfg = VitTrainConfig::new(model, forgetting, optimizer);
        cfg.epochs = self.epochs;
        cfg.batch = self.batch;
        cfg.lr = self.lr.unwrap_or(cfg.lr);
        cfg.weight_decay = self.weight_decay.unwrap_or(cfg.weight_decay);
        cfg.warmup_epochs = self.warmup_epochs;
        cfg.clip_grad = self.clip_grad;
        cfg.label_smoothing = self.label_smoothing;
        cfg.attn_drop = self.attn_drop;
        cfg.seed = self.seed;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        cfg.out = self.out.clone();
        cfg.train_limit = self.train_limit;
        cfg.test_limit = self.test_limit;
        cfg.progress = !self.no_progress;
        cfg
    }
}

fn run(cli: Cli) -> lwpf::Result<()> {
    match cli.command {
        Command::Train(TrainCommand::Bitpattern(args)) => args.run().map(|_| ()),
        Command::Grid(GridCommand::Bitpattern(args)) => args.run().map(|_| ()),
        Command::Plot(args) => args.run().map(|_| ()),
        Command::Train(TrainCommand::Deeprc(args)) => args.run().map(|_| ()),
        Command::Grid(GridCommand::Deeprc(args)) => args.run().map(|_| ()),
        Command::Data(DataCommand::Implant(args)) => args.run(),
        Command::Train(TrainCommand::Vit(args)) => {
            lwpf::train::set_threads(args.threads)?;
            let cfg = args.config();
            let summary = train(&cfg)?;
            info!("summary written to {}", cfg.out.join("summary.json").display());
            println!(
                "final test accuracy: {:.2}% ({} images), {:.1} s",
                100.0 * summary.eval_accuracy,
                summary.test_images,
                summary.wall_time_s
            );
            Ok(())
        }
    }
}

/// Keeps freed memory in the process. A training step allocates and frees
/// activations of several MiB each; glibc would hand them back to the kernel
/// and fault fresh zeroed pages in on the next step, which costs a third of a
/// step on two cores. 32 MiB is glibc's largest mmap threshold; every
/// activation of the small model up to batch 128 and evaluation batch 250 stays
/// below it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two allocator parameters; it runs before any
    // other thread exists and before the allocations it governs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The crate's errors already carry their cause in their message.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
