//! The ops of DeepRC's sequence embedding: a 1-d convolution over ragged,
//! channels-last sequences, SELU, and the maximum over each sequence's
//! positions.
//!
//! Sequences come padded to a common length, `[S, L, C]`, with the true length
//! of each beside them. A convolution window is valid when it starts inside
//! its sequence and, for a sequence at least as long as the kernel, ends inside
//! it too; a sequence shorter than the kernel gets exactly one window, padded
//! with zeros. Positions at or past a sequence's length read as zero whatever
//! the tensor holds there, so padding never leaks into an embedding.

use std::ops::Range;

use rayon::prelude::*;

use super::{Contrib, Op, Tape, Tensor, Var, expect_rank, par};
use crate::error::{Error, Result};
use crate::gemm::{Par, Trans, sgemm};
use crate::op::fast::exp_f32;

/// SELU's `alpha` and `scale` (Klambauer et al. 2017), to f64 precision:
/// 1.6732632423543772848170429916717 and 1.0507009873554804934193349852946.
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
const SCALE: f32 = SELU_SCALE as f32;
/// The product rounded once, not as the product of two rounded factors.
const SCALE_ALPHA: f32 = (SELU_SCALE * SELU_ALPHA) as f32;

/// Windows gathered and multiplied together: enough rows that the product
/// runs at the matrix kernel's speed, few enough that the gathered block
/// (256 x k C_in floats, 207 KiB for DeepRC's 9 x 23) stays in cache.
const BLOCK_WINDOWS: usize = 256;

/// Most partial weight gradients the backward pass keeps: the blocks are
/// split into at most this many tasks, each summing its own blocks.
const MAX_TASKS: usize = 64;

/// The number of valid windows of a sequence of length `len` under a kernel of
/// width `k` (both at least 1): `len - k + 1`, or one for a sequence shorter
/// than the kernel.
pub fn conv_windows(len: usize, k: usize) -> usize {
    len.max(k) + 1 - k
}

/// The sizes of one `conv1d` call.
#[derive(Clone, Copy)]
struct ConvDims {
    /// Padded length L of the input.
    len: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    /// Window slots per sequence in the output, P.
    positions: usize,
}

impl ConvDims {
    /// Floats in one window: a row of the gathered matrix and of the weight.
    fn kc(&self) -> usize {
        self.k * self.c_in
    }
}

pub(super) struct Conv1dSaved {
    x: Var,
    w: Var,
    b: Option<Var>,
    dims: ConvDims,
    lengths: Vec<usize>,
    /// Valid windows per sequence.
    windows: Vec<usize>,
}

pub(super) struct MaxPositionsSaved {
    x: Var,
    /// Per (sequence, channel): the position that holds the maximum.
    argmax: Vec<usize>,
    positions: usize,
    channels: usize,
}

/// Consecutive runs of sequences holding about [`BLOCK_WINDOWS`] windows each
/// (a sequence is never split). A pure function of the window counts, so the
/// order in which partial sums are added does not depend on the thread count.
fn blocks(windows: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(windows.iter().sum::<usize>() / BLOCK_WINDOWS + 1);
    let (mut start, mut held) = (0, 0);
    for (s, &n) in windows.iter().enumerate() {
        held += n;
        if held >= BLOCK_WINDOWS {
            out.push(start..s + 1);
            (start, held) = (s + 1, 0);
        }
    }
    if start < windows.len() {
        out.push(start..windows.len());
    }
    out
}

/// Cuts `data` into consecutive pieces of `per_seq` floats per sequence of
/// each range, the ranges covering the sequences in order.
fn split_by_seqs<'a>(
    mut data: &'a mut [f32],
    ranges: &[Range<usize>],
    per_seq: usize,
) -> Vec<&'a mut [f32]> {
    ranges
        .iter()
        .map(|r| {
            let (head, tail) = std::mem::take(&mut data).split_at_mut(r.len() * per_seq);
            data = tail;
            head
        })
        .collect()
}

/// Writes the valid windows of sequences `seqs` of `x` `[S, L, C_in]` into
/// `cols` `[windows, k C_in]`, reusing its allocation. In channels-last
/// layout a window is one contiguous run of `x`; the part of it past the
/// sequence's length is written as zeros.
fn gather(
    x: &[f32],
    d: &ConvDims,
    lengths: &[usize],
    windows: &[usize],
    seqs: Range<usize>,
    cols: &mut Vec<f32>,
) {
    cols.clear();
    for s in seqs {
        let seq = &x[s * d.len * d.c_in..(s + 1) * d.len * d.c_in];
        for j in 0..windows[s] {
            let end = (j + d.k).min(lengths[s]);
            cols.extend_from_slice(&seq[j * d.c_in..end * d.c_in]);
            cols.resize(cols.len() + (j + d.k - end) * d.c_in, 0.0);
        }
    }
}

/// Copies the rows of valid windows of sequences `seqs` out of `g`
/// `[S, P, C_out]` into `rows` `[windows, C_out]`.
fn gather_valid(
    g: &[f32],
    d: &ConvDims,
    windows: &[usize],
    seqs: Range<usize>,
    rows: &mut Vec<f32>,
) {
    rows.clear();
    for s in seqs {
        let start = s * d.positions * d.c_out;
        rows.extend_from_slice(&g[start..start + windows[s] * d.c_out]);
    }
}

/// The sum of `n`-long partial sums, added in the order given.
fn sum_in_order<'a>(parts: impl Iterator<Item = &'a [f32]>, n: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; n];
    for p in parts {
        par::add_assign(&mut total, p);
    }
    total
}

/// SELU: `scale x` for `x > 0`, `scale alpha (e^x - 1)` below.
#[inline(always)]
fn selu(x: f32) -> f32 {
    // Both branches computed, then one chosen: a select the compiler vectorizes.
    let negative = SCALE_ALPHA * expm1_nonpositive(x.min(0.0));
    if x > 0.0 { SCALE * x } else { negative }
}

/// `d selu / dx`, taking the right-hand branch (`scale`) at 0.
#[inline(always)]
fn selu_grad(x: f32) -> f32 {
    let negative = SCALE_ALPHA * exp_f32(x.min(0.0));
    if x >= 0.0 { SCALE } else { negative }
}

/// `e^x - 1` for `x <= 0` to a few ulp, branch-free so that loops over it
/// vectorize. Near 0, `exp(x) - 1` would cancel most of its digits, so on
/// (-0.35, 0] a Taylor polynomial of degree 7 serves: the first dropped term,
/// `x^8 / 8!`, stays below 2e-8 of the result, which is at least `|x| / 1.2`
/// there. From -0.35 down `exp(x) - 1` is at least 0.29 in size, so the
/// subtraction loses at most two bits.
#[inline(always)]
fn expm1_nonpositive(x: f32) -> f32 {
    const C: [f32; 7] =
        [1.0, 1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let poly = C[0] + x * (C[1] + x * (C[2] + x * (C[3] + x * (C[4] + x * (C[5] + x * C[6])))));
    let taylor = x * poly;
    let direct = exp_f32(x) - 1.0;
    if x > -0.35 { taylor } else { direct }
}

impl Tape<'_> {
    /// A 1-d convolution without padding over ragged sequences, channels-last:
    /// x `[S, L, C_in]`, w `[C_out, k, C_in]`, b `[C_out]`, `lengths[s]` in
    /// `1..=L`. Output `[S, P, C_out]` with `P = max(L, k) - k + 1`:
    /// `y[s, j, o] = b[o] + sum_{t, c} w[o, t, c] x[s, j + t, c]`, where `x` reads
    /// as zero at positions `>= lengths[s]`, for the valid windows
    /// `j < conv_windows(lengths[s], k)`; the other windows are zero and pass
    /// no gradient. Also returns the valid window counts (the `counts` of
    /// [`Tape::max_positions`]).
    ///
    /// The valid windows are gathered (im2col) and multiplied by the kernel a
    /// block at a time, in parallel over blocks, so the op holds no copy of
    /// the whole gathered matrix; the backward pass gathers them again rather
    /// than saving them.
    pub fn conv1d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        lengths: &[usize],
    ) -> Result<(Var, Vec<usize>)> {
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        expect_rank("conv1d", &xs, 3)?;
        expect_rank("conv1d", &ws, 3)?;
        let (seqs, len, c_in) = (xs[0], xs[1], xs[2]);
        let (c_out, k) = (ws[0], ws[1]);
        if len == 0 || c_in == 0 || c_out == 0 || k == 0 || ws[2] != c_in {
            return Err(Error::OpShape {
                op: "conv1d",
                what: format!("input {xs:?} does not fit kernel {ws:?} ([C_out, k, C_in])"),
            });
        }
        if let Some(b) = b
            && self.shape(b) != [c_out]
        {
            return Err(Error::OpShape {
                op: "conv1d",
                what: format!("bias {:?} for {c_out} output channels", self.shape(b)),
            });
        }
        if lengths.len() != seqs {
            return Err(Error::OpShape {
                op: "conv1d",
                what: format!("{} lengths for {seqs} sequences", lengths.len()),
            });
        }
        if let Some((s, &n)) = lengths.iter().enumerate().find(|&(_, &n)| n == 0 || n > len) {
            return Err(Error::OpShape {
                op: "conv1d",
                what: format!("sequence {s} has length {n}, outside 1..={len}"),
            });
        }

        let d = ConvDims { len, c_in, c_out, k, positions: conv_windows(len, k) };
        let kc = d.kc();
        let windows: Vec<usize> = lengths.iter().map(|&n| conv_windows(n, k)).collect();
        let blocks = blocks(&windows);
        let (xd, wd) = (self.value(x).data(), self.value(w).data());
        let bias = b.map(|b| self.value(b).data());

        let mut y = vec![0.0f32; seqs * d.positions * c_out];
        let pieces = split_by_seqs(&mut y, &blocks, d.positions * c_out);
        pieces.into_par_iter().zip(&blocks).for_each_init(
            || (Vec::new(), Vec::new()),
            |(cols, rows), (piece, seq_range)| {
                gather(xd, &d, lengths, &windows, seq_range.clone(), cols);
                let n = cols.len() / kc;
                // rows [n, C_out] = bias, then += cols [n, kC] w^T [kC, C_out]
                rows.clear();
                match bias {
                    Some(bias) => (0..n).for_each(|_| rows.extend_from_slice(bias)),
                    None => rows.resize(n * c_out, 0.0),
                }
                sgemm(
                    Trans::No,
                    Trans::Yes,
                    n,
                    c_out,
                    kc,
                    1.0,
                    cols,
                    kc,
                    wd,
                    kc,
                    1.0,
                    rows,
                    c_out,
                    Par::Seq,
                );
                let mut r = 0;
                for (i, s) in seq_range.clone().enumerate() {
                    let (start, m) = (i * d.positions * c_out, windows[s] * c_out);
                    piece[start..start + m].copy_from_slice(&rows[r..r + m]);
                    r += m;
                }
            },
        );

        let value = Tensor::from_parts(vec![seqs, d.positions, c_out], y);
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        let saved =
            Conv1dSaved { x, w, b, dims: d, lengths: lengths.to_vec(), windows: windows.clone() };
        let out = self.push(value, Op::Conv1d(Box::new(saved)), &inputs);
        Ok((out, windows))
    }

    // dW [C_out, kC] = dY_valid^T cols, db = column sums of dY_valid, and
    // dX = dY_valid W [windows, kC] added back window by window (overlap-add)
    // onto the positions < length it read.
    pub(super) fn conv1d_backward(
        &self,
        s: &Conv1dSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let d = s.dims;
        let kc = d.kc();
        let need_x = self.requires(s.x);
        let need_w = self.requires(s.w);
        let need_b = s.b.is_some_and(|b| self.requires(b));
        let (xd, wd) = (self.value(s.x).data(), self.value(s.w).data());
        let seqs = s.lengths.len();

        let blocks = blocks(&s.windows);
        let per_task = blocks.len().div_ceil(MAX_TASKS).max(1);
        let tasks: Vec<&[Range<usize>]> = blocks.chunks(per_task).collect();
        let task_seqs: Vec<Range<usize>> = tasks
            .iter()
            .map(|t| t.first().map_or(0, |b| b.start)..t.last().map_or(0, |b| b.end))
            .collect();

        let mut dx = if need_x { vec![0.0f32; seqs * d.len * d.c_in] } else { Vec::new() };
        let dx_pieces: Vec<Option<&mut [f32]>> = if need_x {
            split_by_seqs(&mut dx, &task_seqs, d.len * d.c_in).into_iter().map(Some).collect()
        } else {
            tasks.iter().map(|_| None).collect()
        };

        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_pieces
            .into_par_iter()
            .zip(tasks.par_iter().zip(&task_seqs))
            .map(|(mut dx_piece, (task, seq_range))| {
                let mut dw = if need_w { vec![0.0f32; d.c_out * kc] } else { Vec::new() };
                let mut db = if need_b { vec![0.0f32; d.c_out] } else { Vec::new() };
                let (mut dy, mut cols, mut dcols) = (Vec::new(), Vec::new(), Vec::new());
                for block in task.iter() {
                    gather_valid(g, &d, &s.windows, block.clone(), &mut dy);
                    let n = dy.len() / d.c_out;
                    if need_w {
                        gather(xd, &d, &s.lengths, &s.windows, block.clone(), &mut cols);
                        // dw [C_out, kC] += dy^T [C_out, n] cols [n, kC]
                        sgemm(
                            Trans::Yes,
                            Trans::No,
                            d.c_out,
                            kc,
                            n,
                            1.0,
                            &dy,
                            d.c_out,
                            &cols,
                            kc,
                            1.0,
                            &mut dw,
                            kc,
                            Par::Seq,
                        );
                    }
                    if need_b {
                        for row in dy.chunks_exact(d.c_out) {
                            par::add_assign(&mut db, row);
                        }
                    }
                    if let Some(dx_piece) = dx_piece.as_deref_mut() {
                        // dcols [n, kC] = dy [n, C_out] w [C_out, kC]
                        dcols.clear();
                        dcols.resize(n * kc, 0.0);
                        sgemm(
                            Trans::No,
                            Trans::No,
                            n,
                            kc,
                            d.c_out,
                            1.0,
                            &dy,
                            d.c_out,
                            wd,
                            kc,
                            0.0,
                            &mut dcols,
                            kc,
                            Par::Seq,
                        );
                        let mut rows = dcols.chunks_exact(kc);
                        for q in block.clone() {
                            let local = (q - seq_range.start) * d.len * d.c_in;
                            let seq = &mut dx_piece[local..local + d.len * d.c_in];
                            for (j, row) in (0..s.windows[q]).zip(&mut rows) {
                                let end = (j + d.k).min(s.lengths[q]);
                                let span = &mut seq[j * d.c_in..end * d.c_in];
                                par::add_assign(span, &row[..span.len()]);
                            }
                        }
                    }
                }
                (dw, db)
            })
            .collect();

        if need_x {
            out.push((s.x, Contrib::Full(dx)));
        }
        if need_w {
            let dw = sum_in_order(partials.iter().map(|p| &p.0[..]), d.c_out * kc);
            out.push((s.w, Contrib::Full(dw)));
        }
        if let Some(b) = s.b
            && need_b
        {
            let db = sum_in_order(partials.iter().map(|p| &p.1[..]), d.c_out);
            out.push((b, Contrib::Full(db)));
        }
    }

    /// SELU, any shape: `scale x` for `x > 0`, `scale alpha (e^x - 1)` for
    /// `x <= 0`, with alpha = 1.6732632423543772848 and
    /// scale = 1.0507009873554804934 (the self-normalizing constants).
    pub fn selu(&mut self, x: Var) -> Result<Var> {
        let y = par::map(self.value(x).data(), selu);
        let value = Tensor::from_parts(self.shape(x).to_vec(), y);
        Ok(self.push(value, Op::Selu { x }, &[x]))
    }

    // d selu / dx = scale for x >= 0 (the right-hand branch at the kink 0),
    // scale alpha e^x below.
    pub(super) fn selu_backward(&self, x: Var, mut g: Vec<f32>, out: &mut Vec<(Var, Contrib)>) {
        let xd = self.value(x).data();
        par::zip_apply(&mut g, xd, |d, v| *d *= selu_grad(v));
        out.push((x, Contrib::Full(g)));
    }

    /// The maximum over the first `counts[s]` positions of each sequence, per
    /// channel: x `[S, P, C]`, `counts[s]` in `1..=P`, output `[S, C]`. Positions
    /// from `counts[s]` on are ignored whatever they hold. On ties the first
    /// position holding the maximum takes the whole gradient.
    pub fn max_positions(&mut self, x: Var, counts: &[usize]) -> Result<Var> {
        let xs = self.shape(x).to_vec();
        expect_rank("max_positions", &xs, 3)?;
        let (seqs, positions, channels) = (xs[0], xs[1], xs[2]);
        if counts.len() != seqs {
            return Err(Error::OpShape {
                op: "max_positions",
                what: format!("{} counts for input {xs:?}", counts.len()),
            });
        }
        if let Some((s, &n)) = counts.iter().enumerate().find(|&(_, &n)| n == 0 || n > positions) {
            return Err(Error::OpShape {
                op: "max_positions",
                what: format!("count {n} of sequence {s} is outside 1..={positions}"),
            });
        }
        let xd = self.value(x).data();
        let mut y = vec![0.0f32; seqs * channels];
        let mut argmax = vec![0usize; seqs * channels];
        let per_seq = |s: usize, ys: &mut [f32], args: &mut [usize]| {
            let seq = &xd[s * positions * channels..(s + 1) * positions * channels];
            ys.copy_from_slice(&seq[..channels]);
            for (j, row) in seq.chunks_exact(channels).enumerate().take(counts[s]).skip(1) {
                for ((m, a), &v) in ys.iter_mut().zip(args.iter_mut()).zip(row) {
                    // Strictly greater: the first of equal maxima stays.
                    if v > *m {
                        (*m, *a) = (v, j);
                    }
                }
            }
        };
        if channels > 0 {
            y.par_chunks_mut(channels)
                .zip(argmax.par_chunks_mut(channels))
                .with_min_len(par::rows_per_task(positions * channels))
                .enumerate()
                .for_each(|(s, (ys, args))| per_seq(s, ys, args));
        }
        let value = Tensor::from_parts(vec![seqs, channels], y);
        let saved = MaxPositionsSaved { x, argmax, positions, channels };
        Ok(self.push(value, Op::MaxPositions(saved), &[x]))
    }

    // d y[s, c] / d x[s, j, c] = 1 at j = argmax[s, c] (the first on ties), 0 elsewhere.
    pub(super) fn max_positions_backward(
        &self,
        s: &MaxPositionsSaved,
        g: &[f32],
        out: &mut Vec<(Var, Contrib)>,
    ) {
        let (p, c) = (s.positions, s.channels);
        let mut dx = vec![0.0f32; g.len() * p];
        par::for_rows(&mut dx, p * c, |q, seq| {
            for ch in 0..c {
                seq[s.argmax[q * c + ch] * c + ch] = g[q * c + ch];
            }
        });
        out.push((s.x, Contrib::Full(dx)));
    }
}
