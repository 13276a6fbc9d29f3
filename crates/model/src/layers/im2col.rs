//! The column maps of `conv_gemm`'s convolutions: which input position each im2col column reads
//! (worked out once per call, per kernel tap and axis), im2col itself and its adjoint col2im.

use std::ops::Range;

use burn::tensor::{bf16, f16};
use rayon::prelude::*;

use super::conv_gemm::ConvGeometry;
use crate::cpu_kernels::HostFloat;

/// One clip's values (`[c_in, t, h, w]`) as im2col reads them: in the columns' own type, or half
/// values that the f32 route widens as it writes each column. A half clip read by f32 products
/// was first converted whole into an f32 buffer: at micro-batch 1 a clip is the whole
/// activation, and the seed model's bf16 step on a CPU without a bf16 product held more than its
/// fp32 step (341 MiB against 276 MiB peak RSS, stop 56).
#[derive(Clone, Copy)]
pub(super) enum ClipValues<'a, T> {
    Same(&'a [T]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// The input position read by output index `out` at kernel offset `tap` along one axis, if it
/// is inside the input (not padding).
pub(super) fn source(
    out: usize,
    tap: usize,
    stride: usize,
    padding: usize,
    size: usize,
) -> Option<usize> {
    (out * stride + tap)
        .checked_sub(padding)
        .filter(|&index| index < size)
}

/// Where one kernel tap reads, axis by axis: the input frame of each output frame and the
/// input row of each output row (`None` in the padding), and along a row the span of output
/// columns inside the input. Worked out once per convolution call ([`ColumnMap`]), not once
/// per value.
struct TapSources {
    frames: Vec<Option<usize>>,
    rows: Vec<Option<usize>>,
    columns: ColumnSpan,
}

impl TapSources {
    /// The input frame and row read by output line `line` (`t'·h'` order), if neither is
    /// padding.
    #[inline(always)]
    fn line(&self, line: usize) -> Option<(usize, usize)> {
        let h_out = self.rows.len();
        Some((self.frames[line / h_out]?, self.rows[line % h_out]?))
    }
}

/// Along a row, output columns `first..end` read input columns `source`, `source + stride`, …;
/// the others read padding.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ColumnSpan {
    first: usize,
    end: usize,
    source: usize,
    stride: usize,
}

impl ColumnSpan {
    /// The span of `outputs` output columns at kernel offset `tap` (as [`source`] maps them).
    fn new(outputs: usize, tap: usize, stride: usize, padding: usize, size: usize) -> Self {
        // out · stride + tap − padding ∈ [0, size)
        let end = (size + padding)
            .checked_sub(tap)
            .map_or(0, |limit| limit.div_ceil(stride))
            .min(outputs);
        let first = padding.saturating_sub(tap).div_ceil(stride).min(end);
        // An empty span reads nothing; its source stays inside the row.
        let source = if first < end {
            first * stride + tap - padding
        } else {
            0
        };
        Self {
            first,
            end,
            source,
            stride,
        }
    }
}

impl ConvGeometry {
    fn tap_sources(&self, tap: usize) -> TapSources {
        let [_, _, t, h, w] = self.input;
        let [_, kh, kw] = self.kernel;
        let offsets = [tap / (kh * kw), (tap / kw) % kh, tap % kw];
        let axis = |index: usize, size: usize| {
            (0..self.output[index])
                .map(|out| {
                    source(
                        out,
                        offsets[index],
                        self.stride[index],
                        self.padding[index],
                        size,
                    )
                })
                .collect()
        };
        TapSources {
            frames: axis(0, t),
            rows: axis(1, h),
            columns: ColumnSpan::new(
                self.output[2],
                offsets[2],
                self.stride[2],
                self.padding[2],
                w,
            ),
        }
    }
}

/// The tap sources of every kernel tap of one convolution, worked out once per call and read by
/// [`im2col`] and [`col2im`] for every group, and how many output lines a group takes.
pub(super) struct ColumnMap {
    pub(super) geometry: ConvGeometry,
    /// Output lines per group (per im2col buffer).
    group: usize,
    taps: Vec<TapSources>,
}

impl ColumnMap {
    pub(super) fn new(geometry: ConvGeometry, group: usize) -> Self {
        let taps = (0..geometry.taps())
            .map(|tap| geometry.tap_sources(tap))
            .collect();
        Self {
            geometry,
            group,
            taps,
        }
    }

    /// Groups of output lines of one clip: `(first line, lines)`.
    pub(super) fn groups(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        self.geometry.groups(self.group)
    }
}

/// Writes the im2col columns of output lines `first..first + lines` of one clip
/// (`clip: [c_in, t, h, w]`) into `columns: [c_in·taps, lines·w']`; padding reads 0
/// (`T::default()`).
pub(super) fn im2col<T: HostFloat + Default>(
    clip: ClipValues<'_, T>,
    map: &ColumnMap,
    first: usize,
    lines: usize,
    columns: &mut [T],
) {
    let w_out = map.geometry.output[2];
    columns
        .par_chunks_mut(lines * w_out)
        .enumerate()
        .for_each(|(row, out)| im2col_row(clip, map, row, first * w_out, out));
}

/// Writes `out.len()` values of im2col row `row` (input channel `row / taps`, kernel tap
/// `row % taps`) of one clip, from output position `from` (`t'·h'·w'` order) on: line by
/// line, padding 0, half values widened as they are written. Whole rows make [`im2col`]; runs
/// of a row are what a product packs straight from the clip (`conv_columns`).
pub(super) fn im2col_row<T: HostFloat + Default>(
    clip: ClipValues<'_, T>,
    map: &ColumnMap,
    row: usize,
    from: usize,
    out: &mut [T],
) {
    match clip {
        ClipValues::Same(values) => crate::cpu_kernels::vectorized(
            #[inline(always)]
            || im2col_row_as_built(values, map, row, from, out, |value| value),
        ),
        ClipValues::Bf16(values) => im2col_row_widened(values, map, row, from, out),
        ClipValues::F16(values) => im2col_row_widened(values, map, row, from, out),
    }
}

/// [`im2col_row`] of half values, each widened as it is written.
fn im2col_row_widened<S: HostFloat, T: HostFloat + Default>(
    clip: &[S],
    map: &ColumnMap,
    row: usize,
    from: usize,
    out: &mut [T],
) {
    crate::cpu_kernels::vectorized(
        #[inline(always)]
        || {
            im2col_row_as_built(clip, map, row, from, out, |value| {
                T::from_f32(value.to_f32())
            })
        },
    )
}

/// [`im2col_row`] of values stored as `S`, each made a `T` by `convert`, as the compiler builds
/// it for the caller's instructions.
#[inline(always)]
fn im2col_row_as_built<S: Copy, T: Copy + Default>(
    clip: &[S],
    map: &ColumnMap,
    row: usize,
    from: usize,
    out: &mut [T],
    convert: impl Fn(S) -> T + Copy,
) {
    let [_, _, t, h, w] = map.geometry.input;
    let (taps, w_out) = (map.taps.len(), map.geometry.output[2]);
    let (channel, sources) = (row / taps, &map.taps[row % taps]);
    let volume = &clip[channel * t * h * w..][..t * h * w];
    let line_run = LineRun {
        sources,
        volume,
        h,
        w,
    };
    // The rest of the first line, then whole lines (the last one perhaps cut short).
    let (line, column) = (from / w_out, from % w_out);
    let head = if column == 0 {
        0
    } else {
        (w_out - column).min(out.len())
    };
    let (head_out, lines) = out.split_at_mut(head);
    if head > 0 {
        line_run.write(line, column, head_out, convert);
    }
    let first_whole = line + usize::from(head > 0);
    for (line, target) in (first_whole..).zip(lines.chunks_mut(w_out)) {
        line_run.write(line, 0, target, convert);
    }
}

/// One kernel tap's reads of one channel's `[t, h, w]` volume, output line by output line.
struct LineRun<'a, S> {
    sources: &'a TapSources,
    volume: &'a [S],
    h: usize,
    w: usize,
}

impl<S: Copy> LineRun<'_, S> {
    /// Output columns `column..column + target.len()` of output line `line`. Always inlined:
    /// as a closure it was a function of its own, built for the baseline CPU (3 % of the seed
    /// model's bf16 step at micro-batch 1).
    #[inline(always)]
    fn write<T: Copy + Default>(
        &self,
        line: usize,
        column: usize,
        target: &mut [T],
        convert: impl Fn(S) -> T,
    ) {
        let (span, w) = (self.sources.columns, self.w);
        let Some((frame, input_row)) = self.sources.line(line) else {
            target.fill(T::default());
            return;
        };
        let end = column + target.len();
        // Output columns `inside` read the input row; the others are padding.
        let inside = span.first.clamp(column, end)..span.end.clamp(column, end);
        target[..inside.start - column].fill(T::default());
        target[inside.end - column..].fill(T::default());
        if inside.start < inside.end {
            let start = (frame * self.h + input_row) * w + span.source;
            let input = &self.volume[start + (inside.start - span.first) * span.stride..];
            let target = &mut target[inside.start - column..inside.end - column];
            gather(target, input, span.stride, convert);
        }
    }
}

/// `out[k] = convert(input[k · stride])`. Strides 1 and 2 (the stems' convolutions) get loops
/// the compiler vectorises: a copy (or a widening), and every second value of pairs. Always inlined, as is
/// [`scatter_add`]: called inside [`crate::cpu_kernels::vectorized`], a copy of its own was
/// built for the baseline CPU (SSE2: 7 % of the seed model's bf16 step at micro-batch 1).
#[inline(always)]
fn gather<S: Copy, T>(out: &mut [T], input: &[S], stride: usize, convert: impl Fn(S) -> T) {
    match stride {
        1 => {
            let input = &input[..out.len()];
            for (value, &input) in out.iter_mut().zip(input) {
                *value = convert(input);
            }
        }
        2 => {
            let (pairs, last) = input[..(2 * out.len()).saturating_sub(1)].as_chunks::<2>();
            for (value, pair) in out.iter_mut().zip(pairs) {
                *value = convert(pair[0]);
            }
            if let (Some(value), [single]) = (out.get_mut(pairs.len()), last) {
                *value = convert(*single);
            }
        }
        _ => {
            for (value, &input) in out.iter_mut().zip(input.iter().step_by(stride)) {
                *value = convert(input);
            }
        }
    }
}

/// `input[k · stride] += values[k]`, [`gather`]'s adjoint. Strides 1 and 2 get loops the
/// compiler vectorises: through `step_by` every stride added one value at a time (col2im was 15 %
/// of the 3-D ResNet's bf16 step at stop 42).
#[inline(always)]
fn scatter_add(input: &mut [f32], values: &[f32], stride: usize) {
    match stride {
        1 => {
            for (input, value) in input[..values.len()].iter_mut().zip(values) {
                *input += value;
            }
        }
        2 => {
            let reach = (2 * values.len()).saturating_sub(1);
            let (pairs, last) = input[..reach].as_chunks_mut::<2>();
            for (pair, value) in pairs.iter_mut().zip(values) {
                pair[0] += value;
            }
            if let ([single], Some(value)) = (last, values.get(pairs.len())) {
                *single += value;
            }
        }
        _ => {
            for (input, value) in input.iter_mut().step_by(stride).zip(values) {
                *input += value;
            }
        }
    }
}

/// Adds the column gradients `columns: [c_in·taps, lines·w']` of output lines
/// `first..first + lines` back onto the input positions they were read from. `window` holds
/// input lines (`t·h` order) `origin..` of every channel, `capacity` lines a channel: the
/// whole clip (`[c_in, t, h, w]`, origin 0, capacity `t·h`) or a window over the lines the
/// group reads ([`ColumnMap::input_lines`]). In parallel over input channels (each owns its
/// lines).
pub(super) fn col2im(
    columns: &[f32],
    map: &ColumnMap,
    (first, lines): (usize, usize),
    window: &mut [f32],
    (origin, capacity): (usize, usize),
) {
    let [_, _, _, h, w] = map.geometry.input;
    let (taps, w_out) = (map.taps.len(), map.geometry.output[2]);
    let row_len = lines * w_out;
    window
        .par_chunks_mut(capacity * w)
        .enumerate()
        .for_each(|(channel, volume)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for (tap, sources) in map.taps.iter().enumerate() {
                        let span = sources.columns;
                        let row = &columns[(channel * taps + tap) * row_len..][..row_len];
                        for (values, line) in row.chunks(w_out).zip(first..) {
                            let Some((frame, row)) = sources.line(line) else {
                                continue;
                            };
                            let start = (frame * h + row - origin) * w;
                            let input = &mut volume[start + span.source..start + w];
                            scatter_add(input, &values[span.first..span.end], span.stride);
                        }
                    }
                },
            )
        });
}

/// One group of output lines as [`SlidingSums`] walks it.
#[derive(Clone, Copy)]
struct WindowedGroup {
    first: usize,
    lines: usize,
    /// Input lines below this are read by no group from this one on: final before it.
    settled: usize,
    /// Input lines the sums must hold up to (exclusive) once this group is added.
    reach: usize,
}

/// A half-precision input gradient summed in f32 over a window of input lines that slides with
/// the groups of output lines: each line is rounded into the stored gradient once no later
/// group reads it. The window is as many lines as the groups' reads overlap (a few dozen for the
/// seed stem's second convolution) where a whole clip of f32 sums was the bf16 step's largest
/// buffer at micro-batch 1 (51 MB of the seed model's 224 px stem: its bf16 step held more than
/// its fp32 step, stop 56).
pub(super) struct SlidingSums {
    groups: Vec<WindowedGroup>,
    /// Lines a channel's window holds.
    capacity: usize,
    sums: Vec<f32>,
    /// The window holds input lines `low..high` (each channel's, `capacity` lines apart).
    low: usize,
    high: usize,
}

impl SlidingSums {
    pub(super) fn new(map: &ColumnMap) -> Self {
        let [_, _, t, h, _] = map.geometry.input;
        let total = t * h;
        // Each group's reads; then, from the last group back, the lowest line read from it on.
        let mut groups: Vec<_> = map
            .groups()
            .map(|(first, lines)| {
                let read = map.input_lines(first, lines);
                WindowedGroup {
                    first,
                    lines,
                    settled: read.as_ref().map_or(total, |read| read.start),
                    reach: read.map_or(0, |read| read.end),
                }
            })
            .collect();
        let mut settled = total;
        for group in groups.iter_mut().rev() {
            settled = settled.min(group.settled);
            group.settled = settled;
        }
        // The window's lines at each group: from its settled line to the furthest read so far.
        let (mut reach, mut capacity) = (0, 0);
        for group in &mut groups {
            reach = reach.max(group.reach);
            group.reach = reach;
            capacity = capacity.max(reach.saturating_sub(group.settled));
        }
        // At least a line, so that a channel's window is never an empty chunk.
        let capacity = capacity.max(1);
        Self {
            groups,
            capacity,
            sums: Vec::new(),
            low: 0,
            high: 0,
        }
    }

    /// Groups of output lines, added in order by index.
    pub(super) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Group `index`'s output lines: `(first, lines)`.
    pub(super) fn group(&self, index: usize) -> (usize, usize) {
        let group = self.groups[index];
        (group.first, group.lines)
    }

    /// Adds group `index`'s column gradients (`[c_in·taps, lines·w']`), first rounding into
    /// `target` (one clip's input gradient `[c_in, t, h, w]`, zero where no group reads) the
    /// lines no group from this one on reads. Groups are added in order, from 0 for each clip.
    pub(super) fn add<O: HostFloat>(
        &mut self,
        index: usize,
        columns: &[f32],
        map: &ColumnMap,
        target: &mut [O],
    ) {
        let group = self.groups[index];
        if index == 0 {
            (self.low, self.high) = (0, 0);
            let [_, c_in, _, _, w] = map.geometry.input;
            // Every line is zeroed as the window reaches it: growing the buffer needs no fill.
            let more = (c_in * self.capacity * w).saturating_sub(self.sums.len());
            crate::cpu_kernels::extend_filled(&mut self.sums, more, 0.0);
        }
        self.slide(group.settled, group.reach, map, target);
        let window = (self.low, self.capacity);
        col2im(
            columns,
            map,
            (group.first, group.lines),
            &mut self.sums,
            window,
        );
    }

    /// Rounds the lines still held into `target`, after the last group of a clip.
    pub(super) fn finish<O: HostFloat>(&mut self, map: &ColumnMap, target: &mut [O]) {
        self.slide(self.high, self.high, map, target);
    }

    /// Rounds lines `low..settled` into `target`, moves the lines kept to the window's start and
    /// zeroes the lines up to `reach` that it now takes in.
    fn slide<O: HostFloat>(
        &mut self,
        settled: usize,
        reach: usize,
        map: &ColumnMap,
        target: &mut [O],
    ) {
        let [_, _, t, h, w] = map.geometry.input;
        let (low, high) = (self.low, self.high);
        let new_low = settled.max(low);
        let new_high = reach.max(high).max(new_low);
        let rounded = low..new_low.min(high);
        let kept = new_low.min(high)..high;
        let (capacity, taken_in) = (self.capacity, kept.len()..new_high - new_low);
        (self.low, self.high) = (new_low, new_high);
        if rounded.is_empty() && kept.start == low && taken_in.is_empty() {
            return;
        }
        target
            .par_chunks_mut(t * h * w)
            .zip(self.sums.par_chunks_mut(capacity * w))
            .for_each(|(target, sums)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let target = &mut target[rounded.start * w..rounded.end * w];
                        for (target, &sum) in target.iter_mut().zip(sums.iter()) {
                            *target = O::from_f32(sum);
                        }
                        sums.copy_within((kept.start - low) * w..(kept.end - low) * w, 0);
                        sums[taken_in.start * w..taken_in.end * w].fill(0.0);
                    },
                )
            });
    }
}

impl ColumnMap {
    /// The input lines (`t·h` order) that output lines `first..first + lines` read, padding
    /// aside: `None` when they read padding only.
    pub(super) fn input_lines(&self, first: usize, lines: usize) -> Option<Range<usize>> {
        let h = self.geometry.input[3];
        let flat = |(frame, row): (usize, usize)| frame * h + row;
        let read = self.taps.iter().flat_map(|sources| {
            (first..first + lines).filter_map(|line| sources.line(line).map(flat))
        });
        let (low, high) = read.fold((usize::MAX, 0), |(low, high), line| {
            (low.min(line), high.max(line + 1))
        });
        (low < high).then_some(low..high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column spans map every output column as [`source`] does.
    #[test]
    fn column_spans_agree_with_the_source_map() {
        for size in 1..12 {
            for stride in 1..4 {
                for padding in 0..4 {
                    for tap in 0..7 {
                        if size + 2 * padding < tap + 1 {
                            continue;
                        }
                        let outputs = (size + 2 * padding - tap - 1) / stride + 1 + tap / 2;
                        let span = ColumnSpan::new(outputs, tap, stride, padding, size);
                        assert!(span.source < size, "{span:?}");
                        for out in 0..outputs {
                            let inside = (span.first..span.end).contains(&out);
                            let mapped = inside.then(|| span.source + (out - span.first) * stride);
                            assert_eq!(
                                mapped,
                                source(out, tap, stride, padding, size),
                                "{span:?} out {out}"
                            );
                        }
                    }
                }
            }
        }
    }
}
