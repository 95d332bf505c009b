//! The TResNet stem's SpaceToDepth (block 4) with timm's channel order.

use tch::Tensor;

/// Block size; timm and the official code both assert 4.
pub const BLOCK: i64 = 4;

/// `out[n, (i*4 + j)*C + c, h, w] = in[n, c, 4h + i, 4w + j]`: block-position-major, channel-minor.
/// This is not `pixel_unshuffle`, whose order is `c*16 + i*4 + j`; using it would silently scramble
/// the stem conv's input channels.
pub fn space_to_depth(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().expect("space_to_depth takes NCHW input");
    x.view([n, c, h / BLOCK, BLOCK, w / BLOCK, BLOCK])
        .permute([0, 3, 5, 1, 2, 4])
        .reshape([n, c * BLOCK * BLOCK, h / BLOCK, w / BLOCK])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_order_is_block_major() {
        let (c, h, w) = (3i64, 8i64, 8i64);
        let x = Tensor::arange(c * h * w, (tch::Kind::Float, tch::Device::Cpu)).view([1, c, h, w]);
        let y = space_to_depth(&x);
        assert_eq!(y.size(), vec![1, 48, 2, 2]);
        for i in 0..4 {
            for j in 0..4 {
                for ch in 0..c {
                    for hh in 0..2 {
                        for ww in 0..2 {
                            let got = y.double_value(&[0, (i * 4 + j) * c + ch, hh, ww]);
                            let want = x.double_value(&[0, ch, 4 * hh + i, 4 * ww + j]);
                            assert_eq!(got, want, "i={i} j={j} c={ch}");
                        }
                    }
                }
            }
        }
    }
}
