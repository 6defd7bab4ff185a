//! One call of the op held on the device for timing: its inputs uploaded
//! once, its buffers allocated once, and its passes enqueued as often as a
//! benchmark asks, with nothing copied and nothing waited for in between.
//! `benches/attention.rs` times the fused kernels against the unfused
//! baseline through it.

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys;

use super::super::backward::{BackwardTiles, DqMode, backward_limits};
use super::super::check_limits;
use super::unfused::{UnfusedBackward, UnfusedBuffers, blas};
use super::{BackwardBuffers, ForwardBuffers, Runtime, device_error, runtime};
use crate::error::{Error, Result};
use crate::op::{AttentionConfig, AttentionInput, Forward, RoundedInput};

/// Which implementation a [`BenchCall`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The fused kernels, dQ summed as the mode says.
    Fused(DqMode),
    /// The unfused baseline (cuBLAS and its elementwise kernels).
    Unfused,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Fused(DqMode::Deterministic) => "fused",
            Path::Fused(DqMode::Atomic) => "fused-atomic",
            Path::Unfused => "unfused",
        }
    }
}

/// What one iteration of a [`BenchCall`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The forward, the median's passes included.
    Forward,
    /// The backward, from the forward's O and lse.
    Backward,
    /// The forward, then the backward.
    Both,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::Backward, Pass::Both];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::Backward => "bwd",
            Pass::Both => "fwd+bwd",
        }
    }

    /// The FLOPs a benchmark credits to the pass: 4 B H Nq Nk D for the
    /// forward (two products; `D = Dv` assumed) and 2.5 times that for the
    /// backward, as for plain attention. The median's score passes and the
    /// backward's recomputation of the scores are work the figure does not
    /// count.
    pub fn flops(self, shape: crate::op::Shape) -> f64 {
        let s = shape;
        let forward = 4.0 * (s.batch * s.heads) as f64 * s.n_q as f64 * s.n_k as f64 * s.d as f64;
        match self {
            Pass::Forward => forward,
            Pass::Backward => 2.5 * forward,
            Pass::Both => 3.5 * forward,
        }
    }
}

enum Kind {
    Fused { f: Box<ForwardBuffers>, b: Box<BackwardBuffers>, mode: DqMode, tiles: BackwardTiles },
    Unfused { blas: &'static CudaBlas, u: Box<UnfusedBuffers>, b: Box<UnfusedBackward> },
}

/// A call resident on the device. The backward's gradient is `dO = O`
/// (any finite gradient costs the same). The inputs are not rotated between
/// iterations, so small calls may run from L2.
pub struct BenchCall<'a> {
    rt: &'static Runtime,
    input: AttentionInput<'a>,
    cfg: AttentionConfig,
    /// The first forward's results on the host: the backward's launches
    /// depend on its statistics (the center gradient's tie count).
    fwd: Forward,
    kind: Kind,
    device_bytes: usize,
}

impl<'a> BenchCall<'a> {
    /// Uploads the call, runs it once (forward and backward) and keeps its
    /// buffers. Calls without scores have nothing to time and are refused.
    pub fn new(input: AttentionInput<'a>, cfg: &AttentionConfig, path: Path) -> Result<Self> {
        crate::op::check_forward_input(&input, cfg)?;
        let s = input.shape;
        if s.n_q == 0 || s.n_k == 0 {
            return Err(Error::InvalidConfig {
                what: format!("a call of shape {s} has no scores to time"),
            });
        }
        let rt = runtime()?;
        let _one_call = rt.lock.lock().unwrap_or_else(|e| e.into_inner());
        let st = &rt.stream;
        let (fwd, kind, device_bytes) = match path {
            Path::Fused(mode) => {
                // Checked before the first launch: the kernels' limits.
                let tiles = backward_limits(&input, "cuda")?;
                let mut f = ForwardBuffers::upload(st, &input, cfg, None)?;
                f.enqueue(rt, &input, cfg)?;
                let fwd = f.download(st, cfg)?;
                let b = BackwardBuffers::upload(st, s, &fwd.o)?;
                let device_bytes = f.bytes() + b.bytes();
                (fwd, Kind::Fused { f: Box::new(f), b: Box::new(b), mode, tiles }, device_bytes)
            }
            Path::Unfused => {
                check_limits(&input, "cuda unfused")?;
                let blas = blas(rt)?;
                let rounded = RoundedInput::new(&input, cfg.precision);
                let rounded_input = rounded.as_ref().map_or(input, |r| r.input(&input));
                let mut u = UnfusedBuffers::upload(st, &rounded_input, cfg, None)?;
                u.enqueue_forward(rt, blas, &input, cfg)?;
                let fwd = u.forward_results(st, cfg)?;
                let b = UnfusedBackward::upload(st, &input, &fwd, &fwd.o)?;
                let device_bytes = u.bytes() + b.bytes();
                (fwd, Kind::Unfused { blas, u: Box::new(u), b: Box::new(b) }, device_bytes)
            }
        };
        let mut call = BenchCall { rt, input, cfg: *cfg, fwd, kind, device_bytes };
        // One backward, so that whatever fails there fails here.
        call.enqueue_unlocked(Pass::Backward)?;
        call.synchronize()?;
        Ok(call)
    }

    /// The first forward's results.
    pub fn forward_results(&self) -> &Forward {
        &self.fwd
    }

    /// Device memory the call's buffers hold: inputs, outputs, gradients and
    /// every scratch buffer, summed from their sizes (the cuBLAS handle's
    /// own workspace, shared by every call, is not counted).
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    /// Enqueues one iteration of `pass` on the stream and returns without
    /// waiting for it.
    pub fn enqueue(&mut self, pass: Pass) -> Result<()> {
        let _one_call = self.rt.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.enqueue_unlocked(pass)
    }

    fn enqueue_unlocked(&mut self, pass: Pass) -> Result<()> {
        let (rt, input, cfg, fwd) = (self.rt, &self.input, &self.cfg, &self.fwd);
        let forward = pass != Pass::Backward;
        let backward = pass != Pass::Forward;
        match &mut self.kind {
            Kind::Fused { f, b, mode, tiles } => {
                if forward {
                    f.enqueue(rt, input, cfg)?;
                }
                if backward {
                    b.enqueue(rt, (input, cfg), fwd, f, *mode, *tiles)?;
                }
            }
            Kind::Unfused { blas, u, b } => {
                if forward {
                    u.enqueue_forward(rt, blas, input, cfg)?;
                }
                if backward {
                    b.enqueue(rt, blas, (input, cfg), fwd, u)?;
                }
            }
        }
        Ok(())
    }

    /// Waits until everything enqueued has run.
    pub fn synchronize(&self) -> Result<()> {
        self.rt.stream.synchronize().map_err(device_error("running the call"))
    }

    /// `warmup` untimed iterations of `pass`, then the median over `runs`
    /// iterations of the time between device events around each, in ms.
    pub fn time_ms(&mut self, pass: Pass, warmup: usize, runs: usize) -> Result<f32> {
        let ctx = self.rt.stream.context().clone();
        let event = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(device_error("creating events"))
        };
        for _ in 0..warmup {
            self.enqueue(pass)?;
        }
        let mut marks = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (start, end) = (event()?, event()?);
            start.record(&self.rt.stream).map_err(device_error("recording an event"))?;
            self.enqueue(pass)?;
            end.record(&self.rt.stream).map_err(device_error("recording an event"))?;
            marks.push((start, end));
        }
        self.synchronize()?;
        let mut ms = marks
            .iter()
            .map(|(a, b)| a.elapsed_ms(b).map_err(device_error("timing")))
            .collect::<Result<Vec<f32>>>()?;
        if ms.is_empty() {
            return Ok(0.0);
        }
        ms.sort_by(f32::total_cmp);
        Ok(ms[ms.len() / 2])
    }
}
