//! Which file names are images: torchvision's extension list, shared by the ImageFolder reader and the
//! tar shard format (an image member's extension).

/// torchvision's `IMG_EXTENSIONS`.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Whether `name` ends with an image extension, ignoring case (`filename.lower().endswith(...)`).
pub fn has_image_extension(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}
