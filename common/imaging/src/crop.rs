//! torchvision `CenterCrop` (zero padding when the image is smaller) fused with the resize, into CHW.
//!
//! Only the output pixels inside the crop window are resampled (see [`crate::resize`] for why that is
//! exact); the squish mode is the same call with a window that covers the whole resized image.

use crate::PreprocessedImage;
use crate::config::CropWindow;
use crate::decode::RgbImage;
use crate::resize::{self, ResizeScratch};

/// Resize `image` to `target` (width, height) and cut `window` out of the result, padding with 0
/// where the window leaves the image, as `CenterCrop` does.
pub fn resize_and_crop(
    image: &RgbImage,
    target: (u32, u32),
    window: CropWindow,
) -> PreprocessedImage {
    resize_and_crop_with(&mut ResizeScratch::default(), image, target, window)
}

/// [`resize_and_crop`] reusing the resampler's buffers.
pub fn resize_and_crop_with(
    scratch: &mut ResizeScratch,
    image: &RgbImage,
    target: (u32, u32),
    window: CropWindow,
) -> PreprocessedImage {
    let (w, h) = (window.width as usize, window.height as usize);
    let plane = w * h;
    let mut data = vec![0u8; 3 * plane];
    let cols = overlap(window.left, w, target.0);
    let rows = overlap(window.top, h, target.1);
    if !cols.is_empty() && !rows.is_empty() {
        let region = resize::resize_region_with(
            scratch,
            &image.data,
            (image.width, image.height),
            target,
            cols.clone(),
            rows.clone(),
        );
        // Window coordinates of the region's first pixel (non-zero only when padding).
        let x0 = (cols.start as i64 - window.left) as usize;
        let y0 = (rows.start as i64 - window.top) as usize;
        let ncols = cols.len();
        let (red, rest) = data.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        // The region comes row-planar (R, G, B runs per row): three copies per row make it CHW.
        for (row, line) in region.chunks_exact(ncols * 3).enumerate() {
            let base = (y0 + row) * w + x0;
            let (r, gb) = line.split_at(ncols);
            let (g, b) = gb.split_at(ncols);
            red[base..base + ncols].copy_from_slice(r);
            green[base..base + ncols].copy_from_slice(g);
            blue[base..base + ncols].copy_from_slice(b);
        }
    }
    PreprocessedImage {
        width: window.width,
        height: window.height,
        data,
    }
}

/// Indices of the resized axis `0..size` that fall inside the window `offset .. offset + len`.
fn overlap(offset: i64, len: usize, size: u32) -> std::ops::Range<usize> {
    let start = offset.max(0);
    let end = (offset + len as i64).min(i64::from(size));
    if end <= start {
        0..0
    } else {
        start as usize..end as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32) -> RgbImage {
        let data = (0..w * h)
            .flat_map(|i| [(i % 251) as u8, (i / 7 % 253) as u8, 9])
            .collect();
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn crop_without_resize_copies_the_center_as_chw() {
        let img = image(6, 5);
        let window = CropWindow {
            left: 1,
            top: 2,
            width: 4,
            height: 2,
        };
        let out = resize_and_crop(&img, (6, 5), window);
        let px = |x: usize, y: usize, c: usize| img.data[(y * 6 + x) * 3 + c];
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..4 {
                    assert_eq!(out.data[c * 8 + y * 4 + x], px(x + 1, y + 2, c));
                }
            }
        }
    }

    #[test]
    fn window_larger_than_image_pads_with_zero() {
        // torchvision: CenterCrop(5) of a 3x2 image pads left 1, top 1, right 1, bottom 2.
        let img = image(3, 2);
        let window = CropWindow {
            left: -1,
            top: -1,
            width: 5,
            height: 5,
        };
        let out = resize_and_crop(&img, (3, 2), window);
        let blue: Vec<u8> = out.data[50..75].to_vec();
        #[rustfmt::skip]
        assert_eq!(blue, [
            0, 0, 0, 0, 0,
            0, 9, 9, 9, 0,
            0, 9, 9, 9, 0,
            0, 0, 0, 0, 0,
            0, 0, 0, 0, 0,
        ]);
    }
}
