//! The column maps of `conv_gemm`'s convolutions: which input position each im2col column reads
//! (worked out once per call, per kernel tap and axis), im2col itself and its adjoint col2im.

use rayon::prelude::*;

use super::conv_gemm::ConvGeometry;

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
pub(super) fn im2col<T: Copy + Default + Send + Sync>(
    clip: &[T],
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
/// line, padding 0. Whole rows make [`im2col`]; runs of a row are what a product packs
/// straight from the clip (`conv_columns`).
pub(super) fn im2col_row<T: Copy + Default>(
    clip: &[T],
    map: &ColumnMap,
    row: usize,
    from: usize,
    out: &mut [T],
) {
    crate::cpu_kernels::vectorized(
        #[inline(always)]
        || im2col_row_as_built(clip, map, row, from, out),
    );
}

/// [`im2col_row`] as the compiler builds it for the caller's instructions.
#[inline(always)]
fn im2col_row_as_built<T: Copy + Default>(
    clip: &[T],
    map: &ColumnMap,
    row: usize,
    from: usize,
    out: &mut [T],
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
        line_run.write(line, column, head_out);
    }
    let first_whole = line + usize::from(head > 0);
    for (line, target) in (first_whole..).zip(lines.chunks_mut(w_out)) {
        line_run.write(line, 0, target);
    }
}

/// One kernel tap's reads of one channel's `[t, h, w]` volume, output line by output line.
struct LineRun<'a, T> {
    sources: &'a TapSources,
    volume: &'a [T],
    h: usize,
    w: usize,
}

impl<T: Copy + Default> LineRun<'_, T> {
    /// Output columns `column..column + target.len()` of output line `line`. Always inlined:
    /// as a closure it was a function of its own, built for the baseline CPU (3 % of the seed
    /// model's bf16 step at micro-batch 1).
    #[inline(always)]
    fn write(&self, line: usize, column: usize, target: &mut [T]) {
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
            gather(target, input, span.stride);
        }
    }
}

/// `out[k] = input[k · stride]`. Strides 1 and 2 (the stems' convolutions) get loops the
/// compiler vectorises: a copy, and every second value of pairs. Always inlined, as is
/// [`scatter_add`]: called inside [`crate::cpu_kernels::vectorized`], a copy of its own was
/// built for the baseline CPU (SSE2: 7 % of the seed model's bf16 step at micro-batch 1).
#[inline(always)]
fn gather<T: Copy>(out: &mut [T], input: &[T], stride: usize) {
    match stride {
        1 => out.copy_from_slice(&input[..out.len()]),
        2 => {
            let (pairs, last) = input[..(2 * out.len()).saturating_sub(1)].as_chunks::<2>();
            for (value, pair) in out.iter_mut().zip(pairs) {
                *value = pair[0];
            }
            if let (Some(value), [single]) = (out.get_mut(pairs.len()), last) {
                *value = *single;
            }
        }
        _ => {
            for (value, &input) in out.iter_mut().zip(input.iter().step_by(stride)) {
                *value = input;
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
/// `first..first + lines` back onto the input positions they were read from
/// (`clip: [c_in, t, h, w]`), in parallel over input channels (each owns its volume).
pub(super) fn col2im(
    columns: &[f32],
    map: &ColumnMap,
    first: usize,
    lines: usize,
    clip: &mut [f32],
) {
    let [_, _, t, h, w] = map.geometry.input;
    let (taps, w_out) = (map.taps.len(), map.geometry.output[2]);
    let row_len = lines * w_out;
    clip.par_chunks_mut(t * h * w)
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
                            let input = &mut volume
                                [(frame * h + row) * w + span.source..(frame * h + row + 1) * w];
                            scatter_add(input, &values[span.first..span.end], span.stride);
                        }
                    }
                },
            )
        });
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
