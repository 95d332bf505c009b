//! Pillow's `Image.resize(size, BILINEAR)` (libImaging/Resample.c) re-implemented bit for bit.
//!
//! What has to match, and why it is written the way it is:
//! - the triangle filter with its support scaled by `filterscale = max(in/out, 1)`, which is the
//!   antialias when downscaling, and Pillow's exact double-precision arithmetic for bounds and weights;
//! - weights normalised to sum 1, then rounded to int32 with 22 fractional bits (`PRECISION_BITS`);
//! - two passes with the intermediate rounded and clipped to uint8: horizontal first over only the rows
//!   the vertical pass reads, except that Pillow 13 runs the vertical pass first when the height
//!   shrinks by more than twice as many pixels as the width (see [`vertical_first`]).
//!
//! Each output pixel depends only on its own coefficients, so computing only a sub-rectangle of the
//! output (the crop window) gives exactly the pixels of the full resize at those positions.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod sse2;

/// Resample.c: `PRECISION_BITS = 32 - 8 - 2`, leaving headroom for 8-bit samples times a weight sum.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding offset the accumulator starts from (`1 << (PRECISION_BITS - 1)`).
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// [`HALF`] in both 32-bit lanes of the packed red/blue accumulator of the horizontal pass.
const HALF_RB: u64 = (HALF as u64) << 32 | HALF as u64;
/// Pillow's bilinear filter support (in input pixels, before scaling).
const BILINEAR_SUPPORT: f64 = 1.0;
/// Samples per pixel; the pipeline is RGB-only after decoding.
const CHANNELS: usize = 3;

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Fixed-point filter taps for one axis: output index `i` reads input `start[i] .. start[i] + len[i]`.
#[derive(Debug, Clone)]
pub struct Coefficients {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Coefficients {
    /// Resample.c `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter over the
    /// whole input (`box = (0, in_size)`).
    pub fn bilinear(in_size: u32, out_size: u32) -> Self {
        assert!(in_size > 0 && out_size > 0, "resize of an empty axis");
        // Pillow passes the box as C floats and computes `(double)(in1 - in0) / outSize`.
        let in1 = in_size as f32;
        let scale = f64::from(in1 - 0.0) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = BILINEAR_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let out = out_size as usize;
        let mut start = Vec::with_capacity(out);
        let mut len = Vec::with_capacity(out);
        let mut weights = vec![0i32; out * ksize];
        let mut k = vec![0f64; ksize];
        let ss = 1.0 / filterscale;
        for xx in 0..out {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            // `(int)` in C truncates toward zero; the clamp handles the negative side.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bilinear_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..xx * ksize + n];
            for (dst, &w) in row.iter_mut().zip(&k) {
                let w = if ww != 0.0 { w / ww } else { w };
                // normalize_coeffs_8bpc: round half away from zero, then truncate to int.
                *dst = if w < 0.0 {
                    (-0.5 + w * f64::from(1u32 << PRECISION_BITS)) as i32
                } else {
                    (0.5 + w * f64::from(1u32 << PRECISION_BITS)) as i32
                };
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Self {
            start,
            len,
            ksize,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.ksize..i * self.ksize + self.len[i]];
        (self.start[i], w)
    }

    /// Input range read by the outputs in `outs`.
    fn input_span(&self, outs: &Range<usize>) -> Range<usize> {
        let first = outs.clone().map(|i| self.start[i]).min().unwrap_or(0);
        let last = outs
            .clone()
            .map(|i| self.start[i] + self.len[i])
            .max()
            .unwrap_or(first);
        first..last.max(first)
    }
}

/// Resample.c `clip8`: drop the fractional bits and saturate to 0..=255.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow 13's pass order (Resample.c, python-pillow/Pillow#9549): the vertical pass goes first when the
/// height shrinks by more than twice as many pixels as the width does. The order changes rounding (the
/// intermediate is uint8), so it must be copied exactly, not chosen for speed.
fn vertical_first((in_w, in_h): (u32, u32), (out_w, out_h): (u32, u32)) -> bool {
    let dh = i64::from(in_h) - i64::from(out_h);
    let dw = i64::from(in_w) - i64::from(out_w);
    dh > 0 && dh > dw * 2
}

/// Buffers the passes write into, kept between images: fresh multi-100-KB allocations each time cost
/// page faults (glibc maps and unmaps them), which was a quarter of the pipeline's time. The filter
/// taps of the last size seen are kept too, since a dataset's images mostly share a few sizes.
#[derive(Default)]
pub struct ResizeScratch {
    tmp: Vec<u8>,
    out: Vec<u8>,
    acc: Vec<i32>,
    horizontal: Option<((u32, u32), FixedTaps)>,
    vertical: Option<((u32, u32), Coefficients)>,
}

impl std::fmt::Debug for ResizeScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResizeScratch")
            .field("tmp", &self.tmp.len())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

/// Sets the length of `buf` to `len` without giving back its capacity, zero-filling only what grows:
/// every caller overwrites all of it, and clearing first made a memset of every buffer for every image
/// (about 3% of the pipeline).
fn reset<T: Copy + Default>(buf: &mut Vec<T>, len: usize) {
    buf.truncate(len);
    buf.resize(len, T::default());
}

/// The pixels at `rows × cols` of `src` (HWC RGB, `in_w × in_h`) resized to `out_w × out_h` with
/// Pillow's bilinear filter; returned as HWC RGB of `rows.len() × cols.len()`.
pub fn resize_region(
    src: &[u8],
    input: (u32, u32),
    output: (u32, u32),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    let n = cols.len();
    let mut scratch = ResizeScratch::default();
    let planar = resize_region_with(&mut scratch, src, input, output, cols, rows);
    let mut hwc = Vec::with_capacity(planar.len());
    for row in planar.chunks_exact(n * CHANNELS) {
        let (r, gb) = row.split_at(n);
        let (g, b) = gb.split_at(n);
        for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
            hwc.extend_from_slice(&[r, g, b]);
        }
    }
    hwc
}

/// [`resize_region`] into `scratch`'s buffers, returned *row-planar*: each of the `rows.len()` output
/// rows is its `cols.len()` red samples, then the green ones, then the blue ones. The last pass writes
/// that layout for free, and it turns the CHW crop into three copies per row instead of a per-pixel
/// scatter (which had cost 5% of the pipeline).
pub fn resize_region_with<'s>(
    scratch: &'s mut ResizeScratch,
    src: &[u8],
    (in_w, in_h): (u32, u32),
    (out_w, out_h): (u32, u32),
    cols: Range<usize>,
    rows: Range<usize>,
) -> &'s [u8] {
    assert_eq!(src.len(), in_w as usize * in_h as usize * CHANNELS);
    assert!(cols.end <= out_w as usize && rows.end <= out_h as usize);
    if cols.is_empty() || rows.is_empty() {
        return &[];
    }
    let ResizeScratch {
        tmp,
        out,
        acc,
        horizontal,
        vertical,
    } = scratch;
    let in_row = in_w as usize * CHANNELS;
    // Pillow skips a pass whose size is unchanged (the identity filter would give the same bytes).
    let horiz = (out_w != in_w).then(move || {
        if horizontal
            .as_ref()
            .is_none_or(|(key, _)| *key != (in_w, out_w))
        {
            let taps = FixedTaps::new(&Coefficients::bilinear(in_w, out_w), in_w as usize);
            *horizontal = Some(((in_w, out_w), taps));
        }
        &horizontal.as_ref().unwrap().1
    });
    let vert = (out_h != in_h).then(move || {
        if vertical
            .as_ref()
            .is_none_or(|(key, _)| *key != (in_h, out_h))
        {
            *vertical = Some(((in_h, out_h), Coefficients::bilinear(in_h, out_h)));
        }
        &vertical.as_ref().unwrap().1
    });

    if vertical_first((in_w, in_h), (out_w, out_h)) {
        // Vertical pass over only the input columns the horizontal pass will read.
        let src_cols = horiz.map_or(cols.clone(), |h| h.input_span(&cols));
        let Some(vert) = vert else {
            unreachable!("vertical-first implies the height changes")
        };
        let span = src_cols.start * CHANNELS..src_cols.end * CHANNELS;
        vertical_pass(src, in_row, 0, span, vert, rows.clone(), tmp, acc);
        match horiz {
            Some(h) => {
                horizontal_pass(tmp, src_cols.len() * CHANNELS, src_cols.start, h, cols, out)
            }
            None => to_row_planar(tmp, cols.len(), out),
        }
        out
    } else {
        // Horizontal pass over only the input rows the vertical pass will read.
        let src_rows = vert.map_or(rows.clone(), |v| v.input_span(&rows));
        let band = &src[src_rows.start * in_row..src_rows.end * in_row];
        match horiz {
            Some(h) => horizontal_pass(band, in_row, 0, h, cols.clone(), tmp),
            None => {
                out.clear();
                for r in band.chunks_exact(in_row) {
                    out.extend_from_slice(&r[cols.start * CHANNELS..cols.end * CHANNELS]);
                }
                to_row_planar(out, cols.len(), tmp);
            }
        }
        match vert {
            Some(v) => {
                let width = cols.len() * CHANNELS;
                // Row-planar rows are still `width` independent bytes for the vertical filter.
                vertical_pass(tmp, width, src_rows.start, 0..width, v, rows, out, acc);
                out
            }
            None => tmp,
        }
    }
}

/// HWC rows of `n` pixels → row-planar (see [`resize_region_with`]); only when no horizontal pass
/// runs, which writes that layout itself.
fn to_row_planar(hwc: &[u8], n: usize, out: &mut Vec<u8>) {
    reset(out, hwc.len());
    for (src, dst) in hwc
        .chunks_exact(n * CHANNELS)
        .zip(out.chunks_exact_mut(n * CHANNELS))
    {
        let (r, gb) = dst.split_at_mut(n);
        let (g, b) = gb.split_at_mut(n);
        for (((px, r), g), b) in src.chunks_exact(CHANNELS).zip(r).zip(g).zip(b) {
            (*r, *g, *b) = (px[0], px[1], px[2]);
        }
    }
}

/// Resample.c `ImagingResampleVertical_8bpc` for output `rows`, reading the byte range `span` of each
/// source row; source row `y` starts at `(y - first_row) * stride`.
// The output and accumulator come in separately so that callers can lend disjoint scratch fields.
#[allow(clippy::too_many_arguments)]
fn vertical_pass(
    src: &[u8],
    stride: usize,
    first_row: usize,
    span: Range<usize>,
    vert: &Coefficients,
    rows: Range<usize>,
    out: &mut Vec<u8>,
    acc: &mut Vec<i32>,
) {
    let width = span.len();
    reset(out, rows.len() * width);
    #[cfg(target_arch = "x86_64")]
    let mut pairs = Vec::new();
    for (o, yy) in out.chunks_exact_mut(width).zip(rows) {
        let (start, taps) = vert.taps(yy);
        let line = |j: usize| {
            let r = (start + j - first_row) * stride;
            &src[r + span.start..r + span.end]
        };
        #[cfg(target_arch = "x86_64")]
        let done = {
            pairs.clear();
            for (p, w) in taps.chunks(2).enumerate() {
                // An odd last tap pairs its row with itself at weight 0.
                let (b, wb) = if w.len() == 2 {
                    (2 * p + 1, w[1])
                } else {
                    (2 * p, 0)
                };
                pairs.push((line(2 * p), line(b), sse2::PairWeights::new(w[0], wb)));
            }
            sse2::vertical_row(&pairs, o)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        // The bytes the SIMD kernel left (all of them elsewhere), a row at a time: integer sums are
        // order-independent, so this form (which vectorises) gives Pillow's per-pixel result exactly.
        let rest = &mut o[done..];
        acc.clear();
        acc.resize(rest.len(), HALF);
        for (j, &w) in taps.iter().enumerate() {
            for (a, &p) in acc.iter_mut().zip(&line(j)[done..]) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in rest.iter_mut().zip(acc.iter()) {
            *d = clip8(a);
        }
    }
}

/// Horizontal taps padded with zero weights to one width `k` for every output, each window moved left
/// where needed to stay inside the input. Zero weights add nothing, so the sums are Pillow's; the fixed
/// trip count lets the compiler unroll the innermost loop, where the resampler spends most of its time.
struct FixedTaps {
    k: usize,
    start: Vec<usize>,
    weights: Vec<i32>,
    /// The same weights as pairs of taps for the SSE2 kernel, `k.div_ceil(2)` per output.
    #[cfg(target_arch = "x86_64")]
    pairs: Vec<sse2::PairWeights>,
}

impl FixedTaps {
    fn new(c: &Coefficients, in_size: usize) -> Self {
        // The widest real window (Pillow's `ksize` is an upper bound that is often one tap wider).
        let k = c.len.iter().copied().max().unwrap_or(1).clamp(1, in_size);
        let n = c.start.len();
        let mut start = Vec::with_capacity(n);
        let mut weights = vec![0i32; n * k];
        for i in 0..n {
            let (s, w) = c.taps(i);
            debug_assert!(
                w.iter().all(|&v| v >= 0),
                "the packed accumulator needs w >= 0"
            );
            let padded = s.min(in_size - k);
            weights[i * k + s - padded..i * k + s - padded + w.len()].copy_from_slice(w);
            start.push(padded);
        }
        #[cfg(target_arch = "x86_64")]
        let pairs = weights
            .chunks_exact(k)
            .flat_map(|w| {
                w.chunks(2)
                    .map(|p| sse2::PairWeights::new(p[0], p.get(1).copied().unwrap_or(0)))
            })
            .collect();
        Self {
            k,
            start,
            weights,
            #[cfg(target_arch = "x86_64")]
            pairs,
        }
    }

    /// Input columns read by the outputs in `outs`.
    fn input_span(&self, outs: &Range<usize>) -> Range<usize> {
        let first = self.start[outs.clone()].iter().copied().min().unwrap_or(0);
        let last = self.start[outs.clone()].iter().copied().max().unwrap_or(0) + self.k;
        first..last
    }
}

/// Resample.c `ImagingResampleHorizontal_8bpc` for output `cols` of every `stride`-byte row of `src`,
/// whose first pixel is input column `first_col`.
fn horizontal_pass(
    src: &[u8],
    stride: usize,
    first_col: usize,
    taps: &FixedTaps,
    cols: Range<usize>,
    out: &mut Vec<u8>,
) {
    reset(out, src.len() / stride * cols.len() * CHANNELS);
    let mut run = |k| horizontal_rows(src, stride, first_col, taps, cols.clone(), out, k);
    // Literal widths, so that each call is inlined with a constant trip count (bilinear windows are
    // about 2 * in / out + 1 taps wide: 2-3 when upscaling, 4-5 for the usual 1-2x reduction).
    match taps.k {
        2 => run(2),
        3 => run(3),
        4 => run(4),
        5 => run(5),
        6 => run(6),
        7 => run(7),
        k => run(k),
    }
}

#[inline(always)]
fn horizontal_rows(
    src: &[u8],
    stride: usize,
    first_col: usize,
    taps: &FixedTaps,
    cols: Range<usize>,
    out: &mut [u8],
    k: usize,
) {
    let n = cols.len();
    let starts = &taps.start[cols.clone()];
    let weights = &taps.weights[cols.start * k..cols.end * k];
    #[cfg(target_arch = "x86_64")]
    let np = k.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    let pairs = &taps.pairs[cols.start * np..cols.end * np];
    for (line, dst) in src
        .chunks_exact(stride)
        .zip(out.chunks_exact_mut(n * CHANNELS))
    {
        // Row-planar output (see `resize_region_with`).
        let (red, gb) = dst.split_at_mut(n);
        let (green, blue) = gb.split_at_mut(n);
        for (i, ((((r, g), b), &start), w)) in red
            .iter_mut()
            .zip(green.iter_mut())
            .zip(blue.iter_mut())
            .zip(starts)
            .zip(weights.chunks_exact(k))
            .enumerate()
        {
            let from = (start - first_col) * CHANNELS;
            #[cfg(target_arch = "x86_64")]
            if let Some(rgb) = sse2::horizontal_pixel(&line[from..], &pairs[i * np..(i + 1) * np]) {
                (*r, *g, *b) = (rgb[0], rgb[1], rgb[2]);
                continue;
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = i;
            let px = &line[from..from + k * CHANNELS];
            // Red and blue share one u64 (two 32-bit lanes), saving a third of the multiplies. Exact
            // because bilinear weights are never negative and a lane's sum stays below 2^31
            // (255 * 2^22 plus rounding), so no carry crosses into the other lane.
            let (mut rb, mut gs) = (HALF_RB, HALF as u32);
            for t in 0..k {
                let wt = w[t] as u32;
                let p = &px[t * CHANNELS..t * CHANNELS + CHANNELS];
                rb += (u64::from(p[0]) | u64::from(p[2]) << 32) * u64::from(wt);
                gs += u32::from(p[1]) * wt;
            }
            *r = clip8(rb as u32 as i32);
            *g = clip8(gs as i32);
            *b = clip8((rb >> 32) as i32);
        }
    }
}

/// The whole image resized (HWC RGB); used by tests and by callers that crop themselves.
pub fn resize(src: &[u8], input: (u32, u32), output: (u32, u32)) -> Vec<u8> {
    resize_region(
        src,
        input,
        output,
        0..output.0 as usize,
        0..output.1 as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [
            (500, 341),
            (375, 256),
            (17, 256),
            (1200, 3413),
            (7, 3),
            (256, 256),
        ] {
            let c = Coefficients::bilinear(i, o);
            for x in 0..o as usize {
                let (start, taps) = c.taps(x);
                let sum: i32 = taps.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= taps.len() as i32,
                    "{i}->{o} @{x}: {sum}"
                );
                assert!(start + taps.len() <= i as usize);
            }
        }
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize(&src, (5, 4), (5, 4)), src);
        let flat = vec![200u8; 37 * 11 * 3];
        assert!(resize(&flat, (37, 11), (13, 29)).iter().all(|&v| v == 200));
    }

    #[test]
    fn region_equals_the_matching_part_of_the_full_resize() {
        // Horizontal-first and (tall input) vertical-first pass orders.
        for (iw, ih, ow, oh) in [(53u32, 41u32, 31u32, 67u32), (23, 97, 40, 29)] {
            let src: Vec<u8> = (0..iw * ih * 3)
                .map(|v| (v.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let full = resize(&src, (iw, ih), (ow, oh));
            let (cols, rows) = (5..27usize, 9..(oh as usize - 3));
            let part = resize_region(&src, (iw, ih), (ow, oh), cols.clone(), rows.clone());
            for (r, y) in rows.enumerate() {
                let want =
                    &full[(y * ow as usize + cols.start) * 3..(y * ow as usize + cols.end) * 3];
                assert_eq!(
                    &part[r * cols.len() * 3..(r + 1) * cols.len() * 3],
                    want,
                    "row {y}"
                );
            }
        }
        assert!(vertical_first((23, 97), (40, 29)));
        assert!(!vertical_first((53, 41), (31, 67)));
        // Pillow 13: height shrinks by 60, width by 30 → not more than twice → horizontal first.
        assert!(!vertical_first((100, 100), (70, 40)));
        assert!(vertical_first((100, 100), (70, 39)));
    }

    /// Resample.c's loops, pixel by pixel, with neither the SIMD kernels nor the fixed-width taps.
    fn naive_resize(src: &[u8], (iw, ih): (u32, u32), (ow, oh): (u32, u32)) -> Vec<u8> {
        let horizontal = |img: &[u8], w: usize, h: usize| -> Vec<u8> {
            let c = Coefficients::bilinear(w as u32, ow);
            let mut out = Vec::with_capacity(h * ow as usize * 3);
            for y in 0..h {
                for x in 0..ow as usize {
                    let (start, taps) = c.taps(x);
                    for ch in 0..3 {
                        let acc = taps.iter().enumerate().fold(HALF, |a, (t, &wt)| {
                            a + i32::from(img[(y * w + start + t) * 3 + ch]) * wt
                        });
                        out.push(clip8(acc));
                    }
                }
            }
            out
        };
        let vertical = |img: &[u8], w: usize, h: usize| -> Vec<u8> {
            let c = Coefficients::bilinear(h as u32, oh);
            let mut out = Vec::with_capacity(oh as usize * w * 3);
            for y in 0..oh as usize {
                let (start, taps) = c.taps(y);
                for i in 0..w * 3 {
                    let acc = taps.iter().enumerate().fold(HALF, |a, (t, &wt)| {
                        a + i32::from(img[(start + t) * w * 3 + i]) * wt
                    });
                    out.push(clip8(acc));
                }
            }
            out
        };
        let (iw, ih, ow_, oh_) = (iw as usize, ih as usize, ow as usize, oh as usize);
        let (h_needed, v_needed) = (ow_ != iw, oh_ != ih);
        if vertical_first((iw as u32, ih as u32), (ow, oh)) {
            let tmp = vertical(src, iw, ih);
            if h_needed {
                horizontal(&tmp, iw, oh_)
            } else {
                tmp
            }
        } else {
            let tmp = if h_needed {
                horizontal(src, iw, ih)
            } else {
                src.to_vec()
            };
            if v_needed {
                vertical(&tmp, ow_, ih)
            } else {
                tmp
            }
        }
    }

    #[test]
    fn kernels_equal_the_naive_loops() {
        // Up- and downscales on both axes, both pass orders, odd and even tap counts, widths that are
        // and are not multiples of the 16-byte SIMD block, and the right-edge pixels the SIMD path
        // leaves to the scalar one.
        let sizes = [
            ((500, 375), (341, 256)),
            ((375, 500), (256, 341)),
            ((2000, 1333), (384, 256)),
            ((90, 1200), (256, 3413)),
            ((1200, 90), (3413, 256)),
            ((17, 23), (256, 346)),
            ((64, 64), (31, 17)),
            ((7, 300), (5, 40)),
            ((3, 2), (1, 1)),
            ((33, 48), (33, 20)),
            ((48, 33), (20, 33)),
        ];
        // One scratch across every size (and back), as a worker thread keeps it: the cached taps must
        // follow the size.
        let mut shared = ResizeScratch::default();
        for (i, &(input, output)) in sizes.iter().chain(sizes.iter().rev()).enumerate() {
            let i = i % sizes.len();
            let n = input.0 as usize * input.1 as usize * 3;
            let src: Vec<u8> = (0..n)
                .map(|v| ((v as u64 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
                .collect();
            assert_eq!(
                resize(&src, input, output),
                naive_resize(&src, input, output),
                "{input:?} -> {output:?}"
            );
            let (cols, rows) = (0..output.0 as usize, 0..output.1 as usize);
            assert_eq!(
                resize_region_with(&mut shared, &src, input, output, cols.clone(), rows.clone()),
                resize_region_with(
                    &mut ResizeScratch::default(),
                    &src,
                    input,
                    output,
                    cols,
                    rows
                ),
                "{input:?} -> {output:?} with a reused scratch"
            );
            // Saturation at both ends: all-black and all-white stay so.
            for v in [0u8, 255] {
                let flat = vec![v; n];
                assert!(resize(&flat, input, output).iter().all(|&p| p == v));
            }
        }
    }

    #[test]
    fn matches_pillow_on_a_small_gradient() {
        // Python: Image.frombytes("RGB", (4, 1), bytes([0,0,0, 255,0,0, 0,255,0, 0,0,255]))
        //   .resize((3, 1), Image.BILINEAR).tobytes()
        let src = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255];
        assert_eq!(
            resize(&src, (4, 1), (3, 1)),
            [76, 0, 0, 128, 128, 0, 0, 76, 179]
        );
    }
}
