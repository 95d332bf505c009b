//! SSE2 kernels of the two resampling passes, exact to the integer: the same sums as the scalar code.
//!
//! SSE2 has no 32-bit multiply (`pmulld` is SSE4.1), so the compiler's vectorised `u8 × i32` products
//! are slow emulations. `pmaddwd` multiplies 16-bit lanes and adds adjacent pairs into 32 bits, but
//! Pillow's weights have 22 fractional bits. Splitting each weight as `w = hi · 2^11 + lo`
//! (`lo < 2^11`, `hi ≤ 2^11`, both fit i16) gives `Σ p·w = 2^11 · Σ p·hi + Σ p·lo`, every partial sum
//! far inside i32, so two `pmaddwd` per pair of taps compute Pillow's accumulator exactly. SSE2 is part
//! of the x86-64 baseline; `safe_arch` exposes its intrinsics as safe functions (selected by
//! `#[cfg(target_feature)]`), which keeps `unsafe` out of this crate.

use safe_arch::{
    add_i32_m128i, get_i32_from_m128i_s, load_unaligned_m128i, m128i, mul_i16_horizontal_add_m128i,
    pack_i16_to_u8_m128i, pack_i32_to_i16_m128i, set_i64_m128i_s, set_splat_i32_m128i,
    shl_imm_u32_m128i, shr_imm_i32_m128i, shr_imm_u64_m128i, store_unaligned_m128i,
    unpack_high_i8_m128i, unpack_low_i8_m128i, zeroed_m128i,
};

use super::{CHANNELS, HALF, PRECISION_BITS};

/// Bits of a weight that go into its `lo` half.
const LO_BITS: i32 = 11;
const LO_MASK: i32 = (1 << LO_BITS) - 1;

/// Both halves of the weights of one pair of taps `(a, b)`, as `pmaddwd` operands `[a, b, a, b, …]`.
#[derive(Clone, Copy)]
pub(super) struct PairWeights {
    hi: m128i,
    lo: m128i,
}

impl PairWeights {
    pub(super) fn new(a: i32, b: i32) -> Self {
        debug_assert!(
            (0..=1 << PRECISION_BITS).contains(&a) && (0..=1 << PRECISION_BITS).contains(&b)
        );
        let lanes = |x: i32, y: i32| -> m128i {
            // Little-endian: a in the low i16 of each i32 lane, b in the high one.
            let pair = (x as u32 & 0xffff) | (y as u32) << 16;
            set_splat_i32_m128i(pair as i32)
        };
        Self {
            hi: lanes(a >> LO_BITS, b >> LO_BITS),
            lo: lanes(a & LO_MASK, b & LO_MASK),
        }
    }
}

/// `(2^11 · hi + lo + HALF) >> 22` saturated to 0..=255 in every i32 lane: Resample.c's `clip8` of the
/// recombined accumulator (`packs` then `packus` saturate exactly like the clamp).
#[inline(always)]
fn finish(hi: m128i, lo: m128i) -> m128i {
    let acc = add_i32_m128i(
        add_i32_m128i(shl_imm_u32_m128i::<LO_BITS>(hi), lo),
        set_splat_i32_m128i(HALF),
    );
    shr_imm_i32_m128i::<{ PRECISION_BITS as i32 }>(acc)
}

#[inline(always)]
fn load8(bytes: &[u8]) -> m128i {
    let word: [u8; 8] = bytes[..8].try_into().unwrap();
    set_i64_m128i_s(i64::from_le_bytes(word))
}

#[inline(always)]
fn load16(bytes: &[u8]) -> m128i {
    load_unaligned_m128i(bytes[..16].try_into().unwrap())
}

/// One output pixel of the horizontal pass from the RGB bytes `px` (its first tap at `px[0]`), or
/// `None` when the 8-byte loads would read past `px` (the right edge: the scalar code does those).
#[inline(always)]
pub(super) fn horizontal_pixel(px: &[u8], pairs: &[PairWeights]) -> Option<[u8; 3]> {
    if px.len() < 2 * CHANNELS * pairs.len() + 2 {
        return None;
    }
    let zero = zeroed_m128i();
    let (mut hi, mut lo) = (zero, zero);
    for (p, w) in pairs.iter().enumerate() {
        // R0 G0 B0 R1 G1 B1 · · → R0 R1 G0 G1 B0 B1 · · (16-bit lanes); the fourth pair has weight
        // pairs of real taps only in lanes 0-2, so whatever lands in lane 3 is ignored below.
        let a = load8(&px[2 * CHANNELS * p..]);
        let b = shr_imm_u64_m128i::<{ 8 * CHANNELS as i32 }>(a);
        let x = unpack_low_i8_m128i(unpack_low_i8_m128i(a, b), zero);
        hi = add_i32_m128i(hi, mul_i16_horizontal_add_m128i(x, w.hi));
        lo = add_i32_m128i(lo, mul_i16_horizontal_add_m128i(x, w.lo));
    }
    let v = finish(hi, lo);
    let v = pack_i16_to_u8_m128i(pack_i32_to_i16_m128i(v, v), zero);
    let rgbx = (get_i32_from_m128i_s(v) as u32).to_le_bytes();
    Some([rgbx[0], rgbx[1], rgbx[2]])
}

/// One output row of the vertical pass: `out[i] = clip8(Σ_j rows[j][i] · w_j)`, with the taps given as
/// pairs of rows and their weights (an odd tap count pairs its last row with itself at weight 0).
/// Returns how many leading bytes it wrote (a multiple of 16); the caller finishes the tail.
pub(super) fn vertical_row(rows: &[(&[u8], &[u8], PairWeights)], out: &mut [u8]) -> usize {
    let zero = zeroed_m128i();
    let body = out.len() / 16 * 16;
    for (i, dst) in out[..body].chunks_exact_mut(16).enumerate() {
        let at = i * 16;
        let mut hi = [zero; 4];
        let mut lo = [zero; 4];
        for (a, b, w) in rows {
            let (a, b) = (load16(&a[at..]), load16(&b[at..]));
            let (ab0, ab1) = (unpack_low_i8_m128i(a, b), unpack_high_i8_m128i(a, b));
            let x = [
                unpack_low_i8_m128i(ab0, zero),
                unpack_high_i8_m128i(ab0, zero),
                unpack_low_i8_m128i(ab1, zero),
                unpack_high_i8_m128i(ab1, zero),
            ];
            for q in 0..4 {
                hi[q] = add_i32_m128i(hi[q], mul_i16_horizontal_add_m128i(x[q], w.hi));
                lo[q] = add_i32_m128i(lo[q], mul_i16_horizontal_add_m128i(x[q], w.lo));
            }
        }
        let v: [m128i; 4] = std::array::from_fn(|q| finish(hi[q], lo[q]));
        let bytes = pack_i16_to_u8_m128i(
            pack_i32_to_i16_m128i(v[0], v[1]),
            pack_i32_to_i16_m128i(v[2], v[3]),
        );
        store_unaligned_m128i(dst.try_into().unwrap(), bytes);
    }
    body
}
