//! Encoded bytes → 8-bit RGB exactly as PIL's `Image.open(f).convert("RGB")` produces them.
//!
//! JPEG goes through libjpeg-turbo (the decoder inside Pillow's wheels, with the same ISLOW IDCT and
//! fancy upsampling defaults), PNG through the `png` crate; the colour conversions below are Pillow's
//! (`Convert.c`, `Unpack.c`), including its oddities. No EXIF rotation: the reference applies none.
//! Dimensions are checked against the pixel limit from the header, before any pixel buffer exists.

use std::fmt;
use std::io::Cursor;

use crate::config::PreprocessConfig;
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use crate::PreprocessError;

/// The formats this pipeline decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
        })
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A decoded image and the size PIL would report for the file (they differ only after a DCT-scaled
/// decode).
#[derive(Debug)]
pub struct Decoded {
    pub image: RgbImage,
    pub original_size: (u32, u32),
}

#[derive(Debug, Clone)]
pub struct DecodeOptions<'a> {
    pub max_pixels: u64,
    /// When set, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as the result still covers the
    /// resize target this config asks for.
    pub dct_scaling_target: Option<&'a PreprocessConfig>,
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xff\xd8\xff";

/// Identify the format from the leading bytes (the way PIL's plugins `_accept` them).
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    if bytes.starts_with(JPEG_SIGNATURE) {
        return Ok(ImageFormat::Jpeg);
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        return Ok(ImageFormat::Png);
    }
    // A cut inside the signature itself is a truncation, not "some other file".
    for (sig, format) in [
        (JPEG_SIGNATURE, ImageFormat::Jpeg),
        (PNG_SIGNATURE, ImageFormat::Png),
    ] {
        if bytes.len() < sig.len() && sig.starts_with(bytes) {
            return Err(PreprocessError::Truncated {
                format,
                len: bytes.len(),
                detail: "the file ends inside the signature".into(),
            });
        }
    }
    if let Some(format) = other_format(bytes) {
        return Err(PreprocessError::UnsupportedFormat { format });
    }
    Err(PreprocessError::NotAnImage { len: bytes.len() })
}

/// Image formats PIL could open but this pipeline does not decode, recognised so that the error says
/// "unsupported" rather than "not an image".
fn other_format(b: &[u8]) -> Option<&'static str> {
    let at = |i: usize, s: &[u8]| b.get(i..i + s.len()) == Some(s);
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some("gif");
    }
    // "BM" alone is too weak (text files start with it); also require a known DIB header size.
    if at(0, b"BM")
        && b.get(14..18).is_some_and(|s| {
            matches!(
                u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                12 | 40 | 52 | 56 | 64 | 108 | 124
            )
        })
    {
        return Some("bmp");
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Some("webp");
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return Some("tiff");
    }
    if at(0, b"\0\0\0\x0cjP  \r\n\x87\n") || at(0, b"\xff\x4f\xff\x51") {
        return Some("jpeg2000");
    }
    if at(4, b"ftyp") && (at(8, b"avif") || at(8, b"avis")) {
        return Some("avif");
    }
    if at(4, b"ftyp") && (at(8, b"heic") || at(8, b"heix") || at(8, b"mif1")) {
        return Some("heif");
    }
    if at(0, b"\xff\x0a") || at(0, b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("jpeg-xl");
    }
    if at(0, b"8BPS") {
        return Some("psd");
    }
    if at(0, b"qoif") {
        return Some("qoi");
    }
    None
}

fn check_size(
    format: ImageFormat,
    width: u64,
    height: u64,
    limit: u64,
) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            format,
            width,
            height,
        });
    }
    let pixels = width * height;
    // Pillow raises DecompressionBombError only strictly above 2 * MAX_IMAGE_PIXELS.
    if pixels > limit {
        return Err(PreprocessError::TooManyPixels {
            format,
            width,
            height,
            pixels,
            limit,
        });
    }
    Ok(())
}

/// Holds the libjpeg-turbo handle (created on first use) and a pixel buffer between images.
#[derive(Debug, Default)]
pub struct Decoder {
    jpeg: Option<Decompressor>,
    /// Reused output buffer: see [`Decoder::recycle`].
    pixels: Vec<u8>,
}

impl Decoder {
    pub fn decode(
        &mut self,
        bytes: &[u8],
        opts: &DecodeOptions<'_>,
    ) -> Result<Decoded, PreprocessError> {
        match sniff(bytes)? {
            ImageFormat::Jpeg => {
                let reused = self.jpeg.is_some();
                let mut result = self.decode_jpeg(bytes, opts);
                if result.is_err() {
                    // TurboJPEG leaves libjpeg mid-state after an error (its header reader returns
                    // without jpeg_abort), and the next image then fails with a stale message; a
                    // fresh handle on the (rare) error path is the simple cure.
                    self.jpeg = None;
                    if reused {
                        // A used handle's history also changes what a bad file fails with (a
                        // header reader that saw earlier images reports a bogus size instead of
                        // "no image"). A sample's reason must depend on its bytes alone, whichever
                        // thread decoded what before, so errors are reported from a fresh handle.
                        result = self.decode_jpeg(bytes, opts);
                        if result.is_err() {
                            self.jpeg = None;
                        }
                    }
                }
                result
            }
            ImageFormat::Png => {
                decode_png(bytes, opts.max_pixels, std::mem::take(&mut self.pixels))
            }
        }
    }

    /// Hands a decoded image's buffer back for the next image: a fresh multi-100-KB allocation per
    /// image costs page faults that add up to a noticeable share of the pipeline.
    pub fn recycle(&mut self, data: Vec<u8>) {
        if data.capacity() > self.pixels.capacity() {
            self.pixels = data;
        }
    }

    fn decode_jpeg(
        &mut self,
        bytes: &[u8],
        opts: &DecodeOptions<'_>,
    ) -> Result<Decoded, PreprocessError> {
        let d = match &mut self.jpeg {
            Some(d) => d,
            slot @ None => slot.insert(
                Decompressor::new().map_err(|e| PreprocessError::DecoderInit(e.to_string()))?,
            ),
        };
        let header = d.read_header(bytes).map_err(|e| jpeg_error(bytes, e))?;
        let (w, h) = (header.width as u64, header.height as u64);
        check_size(ImageFormat::Jpeg, w, h, opts.max_pixels)?;
        let original_size = (w as u32, h as u32);

        let factor = match opts.dct_scaling_target {
            Some(cfg) if !header.is_lossless => dct_factor(
                original_size,
                cfg.resize_target(original_size.0, original_size.1),
            ),
            _ => ScalingFactor::ONE,
        };
        d.set_scaling_factor(factor)
            .map_err(|e| PreprocessError::DecoderInit(e.to_string()))?;
        let scaled = header.scaled(factor);
        let (sw, sh) = (scaled.width, scaled.height);

        // Pillow opens 4-component JPEGs as CMYK, stored inverted ("CMYK;I", Adobe's polarity), and
        // libjpeg turns YCCK into CMYK; everything else (grey, YCbCr, RGB) comes out of libjpeg as RGB
        // the same way PIL's L→RGB replication or direct RGB decoding does.
        let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
        let format = if cmyk {
            PixelFormat::CMYK
        } else {
            PixelFormat::RGB
        };
        let mut pixels = std::mem::take(&mut self.pixels);
        // libjpeg writes every byte of a successful decode (a failed one is an error), so the recycled
        // buffer is not cleared: zeroing half a megabyte per image showed up in profiles.
        pixels.truncate(sw * sh * format.size());
        pixels.resize(sw * sh * format.size(), 0);
        let image = turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width: sw,
            pitch: sw * format.size(),
            height: sh,
            format,
        };
        if let Err(e) = d.decompress(bytes, image) {
            // TurboJPEG reports libjpeg warnings as failures although the image is complete; Pillow
            // ignores them (corrupt-data warnings) except when the data ran out before EOI.
            let warning =
                matches!(&e, turbojpeg::Error::TurboJpegError(m) if is_libjpeg_warning(m));
            if !warning || jpeg_structure(bytes) != JpegEnd::Eoi {
                return Err(jpeg_error(bytes, e));
            }
        }
        let data = if cmyk {
            let rgb = adobe_cmyk_to_rgb(&pixels);
            self.pixels = pixels;
            rgb
        } else {
            pixels
        };
        Ok(Decoded {
            image: RgbImage {
                width: sw as u32,
                height: sh as u32,
                data,
            },
            original_size,
        })
    }
}

/// The largest DCT reduction (1/2, 1/4, 1/8) whose output still covers `target` on both axes, so
/// the resampler downsizes from it like it would from the full image.
fn dct_factor((w, h): (u32, u32), (tw, th): (u32, u32)) -> ScalingFactor {
    [
        ScalingFactor::ONE_EIGHTH,
        ScalingFactor::ONE_QUARTER,
        ScalingFactor::ONE_HALF,
    ]
    .into_iter()
    .find(|f| f.scale(w as usize) >= tw as usize && f.scale(h as usize) >= th as usize)
    .unwrap_or(ScalingFactor::ONE)
}

/// Pillow: "CMYK;I" unpacking (`255 - v`) followed by `cmyk2rgb` in Convert.c:
/// `nk = 255 - k; out = clip8(nk - nk * c / 255)` with Pillow's rounded MULDIV255.
fn adobe_cmyk_to_rgb(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for px in raw.chunks_exact(4) {
        // Inverted storage: PIL's k is 255 - raw_k, so nk = raw_k; its c is 255 - raw_c.
        let nk = i32::from(px[3]);
        for &raw_c in &px[..3] {
            let c = 255 - i32::from(raw_c);
            let tmp = c * nk + 128;
            let muldiv = ((tmp >> 8) + tmp) >> 8;
            out.push((nk - muldiv).clamp(0, 255) as u8);
        }
    }
    out
}

/// Message prefixes of libjpeg-turbo's JWRN_* codes (jerror.h): non-fatal, the image is complete.
const LIBJPEG_WARNINGS: &[&str] = &[
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Unknown Adobe color transform code",
    "Inconsistent progression sequence",
    "Warning: unknown JFIF revision number",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
];

fn is_libjpeg_warning(msg: &str) -> bool {
    LIBJPEG_WARNINGS.iter().any(|w| msg.starts_with(w))
}

fn jpeg_error(bytes: &[u8], e: turbojpeg::Error) -> PreprocessError {
    let detail = e.to_string();
    match jpeg_structure(bytes) {
        JpegEnd::RunsOut => PreprocessError::Truncated {
            format: ImageFormat::Jpeg,
            len: bytes.len(),
            detail: format!("no end-of-image marker ({detail})"),
        },
        _ if detail.contains("Unsupported JPEG data precision")
            || detail.contains("Unsupported color conversion") =>
        {
            PreprocessError::UnsupportedVariant {
                format: ImageFormat::Jpeg,
                detail,
            }
        }
        _ => PreprocessError::Corrupt {
            format: ImageFormat::Jpeg,
            detail,
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum JpegEnd {
    /// The marker structure reaches EOI.
    Eoi,
    /// The bytes end before EOI: what Pillow reports as "image file is truncated".
    RunsOut,
    Malformed,
}

/// Walks the marker segments (skipping entropy-coded data) to tell a truncated file from a corrupt
/// one. Only run after libjpeg complained, so its cost is off the hot path.
fn jpeg_structure(b: &[u8]) -> JpegEnd {
    if !b.starts_with(&[0xff, 0xd8]) {
        return JpegEnd::Malformed;
    }
    let mut i = 2;
    loop {
        // libjpeg skips garbage before a marker (with a warning) and any number of 0xff fill bytes.
        while i < b.len() && b[i] != 0xff {
            i += 1;
        }
        while i < b.len() && b[i] == 0xff {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return JpegEnd::RunsOut;
        };
        i += 1;
        match marker {
            0xd9 => return JpegEnd::Eoi,
            0x00 | 0x01 | 0xd0..=0xd8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2) else {
            return JpegEnd::RunsOut;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return JpegEnd::Malformed;
        }
        i += len;
        if i > b.len() {
            return JpegEnd::RunsOut;
        }
        if marker == 0xda {
            // Entropy-coded data ends at the first 0xff that is not stuffing (00) or a restart marker.
            loop {
                let Some(p) = b[i..].iter().position(|&v| v == 0xff) else {
                    return JpegEnd::RunsOut;
                };
                let j = i + p;
                match b.get(j + 1) {
                    None => return JpegEnd::RunsOut,
                    Some(0x00 | 0xd0..=0xd7) => i = j + 2,
                    Some(0xff) => i = j + 1,
                    Some(_) => {
                        i = j;
                        break;
                    }
                }
            }
        }
    }
}

/// IHDR fields read straight from the bytes, so that the size check happens before the `png` crate
/// sets anything up.
fn png_header(bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    let ihdr = bytes.get(8..24).ok_or_else(|| PreprocessError::Truncated {
        format: ImageFormat::Png,
        len: bytes.len(),
        detail: "the file ends inside the IHDR chunk".into(),
    })?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(PreprocessError::Corrupt {
            format: ImageFormat::Png,
            detail: "the first chunk is not IHDR".into(),
        });
    }
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    Ok((be(&ihdr[8..12]), be(&ihdr[12..16])))
}

fn png_error(bytes: &[u8], e: png::DecodingError) -> PreprocessError {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            PreprocessError::Truncated {
                format: ImageFormat::Png,
                len: bytes.len(),
                detail: io.to_string(),
            }
        }
        png::DecodingError::Format(f) => PreprocessError::Corrupt {
            format: ImageFormat::Png,
            detail: f.to_string(),
        },
        other => PreprocessError::Corrupt {
            format: ImageFormat::Png,
            detail: other.to_string(),
        },
    }
}

/// Bytes the `png` crate may allocate internally (rows, inflate window, text chunks). Its 64 MiB
/// default would refuse very wide images that Pillow opens, so add room for a few 16-bit RGBA rows.
fn png_limits(width: u32) -> png::Limits {
    png::Limits {
        bytes: (64 << 20) + 4 * 8 * width as usize,
    }
}

/// Decodes into `rgb` (a recycled buffer; its contents are overwritten).
fn decode_png(bytes: &[u8], max_pixels: u64, mut rgb: Vec<u8>) -> Result<Decoded, PreprocessError> {
    let (w, h) = png_header(bytes)?;
    check_size(ImageFormat::Png, u64::from(w), u64::from(h), max_pixels)?;
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png_limits(w));
    // EXPAND: palette → RGB(A), grey below 8 bits → 8 bits scaled (as Pillow's "L;2"/"L;4"/"1"),
    // tRNS → alpha. 16-bit samples are kept, because Pillow reduces them in two different ways.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| png_error(bytes, e))?;
    let source_type = reader.info().color_type;
    let interlaced = reader.info().interlaced;
    let (color, depth) = reader.output_color_type();
    let conv = RowConversion {
        channels: color.samples(),
        sixteen: depth == png::BitDepth::Sixteen,
        // Pillow opens 16-bit greyscale as mode "I;16", whose conversion to RGB *clips* at 255
        // (Convert.c I16_RGB); every other 16-bit PNG is unpacked by keeping the high byte.
        clip_16: source_type == png::ColorType::Grayscale,
    };
    let (wu, hu) = (w as usize, h as usize);
    rgb.clear();
    rgb.resize(wu * hu * 3, 0);
    if interlaced {
        // Adam7 rows arrive per pass, so let the crate assemble the whole frame first.
        let size = reader
            .output_buffer_size()
            .ok_or(PreprocessError::TooManyPixels {
                format: ImageFormat::Png,
                width: u64::from(w),
                height: u64::from(h),
                pixels: u64::from(w) * u64::from(h),
                limit: max_pixels,
            })?;
        let mut buf = vec![0u8; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| png_error(bytes, e))?;
        for (src, dst) in buf
            .chunks_exact(info.line_size)
            .zip(rgb.chunks_exact_mut(wu * 3))
        {
            conv.apply(src, dst);
        }
    } else {
        for dst in rgb.chunks_exact_mut(wu * 3) {
            let row = reader
                .next_row()
                .map_err(|e| png_error(bytes, e))?
                .ok_or_else(|| PreprocessError::Truncated {
                    format: ImageFormat::Png,
                    len: bytes.len(),
                    detail: "image data ends before the last row".into(),
                })?;
            conv.apply(row.data(), dst);
        }
    }
    Ok(Decoded {
        image: RgbImage {
            width: w,
            height: h,
            data: rgb,
        },
        original_size: (w, h),
    })
}

/// One decoded PNG row (after EXPAND) → RGB the way Pillow's `convert("RGB")` sees it.
struct RowConversion {
    channels: usize,
    sixteen: bool,
    clip_16: bool,
}

impl RowConversion {
    fn apply(&self, src: &[u8], dst: &mut [u8]) {
        let bytes_per_sample = if self.sixteen { 2 } else { 1 };
        let stride = self.channels * bytes_per_sample;
        for (px, out) in src.chunks_exact(stride).zip(dst.chunks_exact_mut(3)) {
            let sample = |i: usize| -> u8 {
                if !self.sixteen {
                    px[i]
                } else if self.clip_16 {
                    u16::from_be_bytes([px[2 * i], px[2 * i + 1]]).min(255) as u8
                } else {
                    px[2 * i]
                }
            };
            // Grey (with or without alpha) replicates; RGB(A) drops alpha without premultiplying.
            if self.channels <= 2 {
                out.fill(sample(0));
            } else {
                out[0] = sample(0);
                out[1] = sample(1);
                out[2] = sample(2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_names_what_it_sees() {
        assert!(matches!(sniff(b""), Err(PreprocessError::Empty)));
        assert!(matches!(
            sniff(b"\xff\xd8"),
            Err(PreprocessError::Truncated { .. })
        ));
        assert!(matches!(
            sniff(b"GIF89a\x01\x00"),
            Err(PreprocessError::UnsupportedFormat { format: "gif" })
        ));
        let e = sniff(b"hello world").unwrap_err().to_string();
        assert_eq!(
            e,
            "not an image: its 11 bytes start with no known image signature (jpeg, png)"
        );
        // "BM" text is not a bitmap.
        assert!(matches!(
            sniff(b"BMW owners club"),
            Err(PreprocessError::NotAnImage { .. })
        ));
    }

    #[test]
    fn cmyk_conversion_matches_pillow_corners() {
        // raw libjpeg CMYK (Adobe-inverted): raw 255 = no ink.
        assert_eq!(adobe_cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(adobe_cmyk_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(adobe_cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        // PIL: Image.frombytes("CMYK", (1,1), bytes([155, 55, 0, 55])).convert("RGB") == (78, 157, 200)
        assert_eq!(adobe_cmyk_to_rgb(&[100, 200, 255, 200]), [78, 157, 200]);
    }

    fn opts() -> DecodeOptions<'static> {
        DecodeOptions {
            max_pixels: 1 << 20,
            dct_scaling_target: None,
        }
    }

    #[test]
    fn warnings_are_tolerated_and_truncation_is_not() {
        let img = turbojpeg::Image::mandelbrot(48, 32, PixelFormat::RGB);
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(90).unwrap();
        let clean = c.compress_to_vec(img.as_deref()).unwrap();
        let mut dec = Decoder::default();
        let want = dec.decode(&clean, &opts()).unwrap().image;
        // Junk between the scan and EOI: libjpeg warns, Pillow decodes, and so must we.
        let mut junk = clean[..clean.len() - 2].to_vec();
        junk.extend_from_slice(&[0; 7]);
        junk.extend_from_slice(&[0xff, 0xd9]);
        assert!(
            turbojpeg::decompress(&junk, PixelFormat::RGB).is_err(),
            "the junk must make libjpeg warn, or this test proves nothing"
        );
        assert_eq!(dec.decode(&junk, &opts()).unwrap().image, want);
        let cut = &clean[..clean.len() - 2];
        assert!(matches!(
            dec.decode(cut, &opts()),
            Err(PreprocessError::Truncated { .. })
        ));
        // And the decoder is still good afterwards.
        assert_eq!(dec.decode(&clean, &opts()).unwrap().image, want);
    }

    #[test]
    fn a_bad_file_fails_the_same_way_whatever_the_decoder_saw_before() {
        let img = turbojpeg::Image::mandelbrot(48, 32, PixelFormat::RGB);
        let good = turbojpeg::compress(img.as_deref(), 90, turbojpeg::Subsamp::Sub2x2).unwrap();
        let bad: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg";
        let fresh = Decoder::default()
            .decode(bad, &opts())
            .unwrap_err()
            .to_string();
        let mut used = Decoder::default();
        used.decode(&good, &opts()).unwrap();
        let after_good = used.decode(bad, &opts()).unwrap_err().to_string();
        assert_eq!(after_good, fresh);
        assert!(fresh.contains("no end-of-image marker"), "{fresh}");
        // Still decodes good files afterwards.
        used.decode(&good, &opts()).unwrap();
    }

    #[test]
    fn libjpeg_warnings_are_recognised_by_their_text() {
        assert!(is_libjpeg_warning(
            "Corrupt JPEG data: 7 extraneous bytes before marker 0xd9"
        ));
        assert!(is_libjpeg_warning("Premature end of JPEG file"));
        assert!(!is_libjpeg_warning("Unsupported marker type 0x12"));
    }

    #[test]
    fn structure_walk_tells_truncated_from_complete() {
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 1, 2, 0xff, 0xda, 0x00, 0x02, 5, 0xff, 0x00, 6,
            0xff, 0xd0, 7, 0xff, 0xd9,
        ];
        assert_eq!(jpeg_structure(&jpeg), JpegEnd::Eoi);
        for cut in 1..jpeg.len() - 2 {
            assert_eq!(
                jpeg_structure(&jpeg[..cut]),
                if cut < 2 {
                    JpegEnd::Malformed
                } else {
                    JpegEnd::RunsOut
                },
                "{cut}"
            );
        }
    }
}
