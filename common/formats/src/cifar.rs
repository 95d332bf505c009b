//! The CIFAR-10/100 binary record format (`cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`): a data
//! file is a run of fixed-size records, each label byte(s) then the 3072 pixel bytes, and a names file
//! holds one class name per line. Finding the files in a store is `tresnet_common::dataset::cifar`.
//!
//! - CIFAR-10: records of 3073 bytes: the label byte, then 1024 red, 1024 green and 1024 blue bytes
//!   (32×32, row-major).
//! - CIFAR-100: records of 3074 bytes: coarse label, fine label, then the 3072 pixel bytes. The **fine**
//!   label (100 classes) is used.
//!
//! A file whose length is not a whole number of records is an error; a record whose label byte is out
//! of range is a bad record (the other records are fine).

/// Bytes of one raw CIFAR image: 32×32 pixels, the red plane, then green, then blue (row-major).
pub const CIFAR_PIXEL_BYTES: u64 = 3072;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarVariant {
    Cifar10,
    Cifar100,
}

impl CifarVariant {
    /// Bytes before the pixels: the label (CIFAR-10) or coarse + fine labels (CIFAR-100).
    pub fn label_bytes(self) -> u64 {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    pub fn record_size(self) -> u64 {
        self.label_bytes() + CIFAR_PIXEL_BYTES
    }

    /// Offset of the label used, within a record.
    pub fn label_offset(self) -> usize {
        match self {
            Self::Cifar10 => 0,
            Self::Cifar100 => 1,
        }
    }

    pub fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    pub fn names_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta.txt",
            Self::Cifar100 => "fine_label_names.txt",
        }
    }

    /// The release's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "CIFAR-10",
            Self::Cifar100 => "CIFAR-100",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CifarError {
    #[error(
        "{len} bytes is not a whole number of {record}-byte {variant} records ({whole} whole, {left_over} bytes left over)"
    )]
    Length {
        len: usize,
        record: usize,
        variant: &'static str,
        whole: usize,
        left_over: usize,
    },
    #[error("class names are not UTF-8: {0}")]
    NamesNotUtf8(std::str::Utf8Error),
    #[error("{found} class names, expected {expected}")]
    NameCount { found: usize, expected: usize },
}

/// One record of a data file whose label is in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarRecord {
    /// Position of the record in its file, from 0.
    pub index: usize,
    pub label: u32,
    /// Offset of the record's pixel bytes in the file.
    pub offset: u64,
}

/// A record whose label byte is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub index: usize,
    pub reason: String,
}

/// A record's sample key: `<file name>:<record index, 5 digits>` (`test_batch.bin:00042`).
pub fn record_key(file_name: &str, index: usize) -> String {
    format!("{file_name}:{index:05}")
}

/// Splits one data file into records. Errors only when the file is not a whole number of records.
pub fn parse_records(
    bytes: &[u8],
    variant: CifarVariant,
) -> Result<(Vec<CifarRecord>, Vec<BadRecord>), CifarError> {
    let record = variant.record_size() as usize;
    if !bytes.len().is_multiple_of(record) {
        return Err(CifarError::Length {
            len: bytes.len(),
            record,
            variant: variant.name(),
            whole: bytes.len() / record,
            left_over: bytes.len() % record,
        });
    }
    let mut records = Vec::with_capacity(bytes.len() / record);
    let mut bad = Vec::new();
    for (index, chunk) in bytes.chunks_exact(record).enumerate() {
        let label = chunk[variant.label_offset()];
        if usize::from(label) >= variant.classes() {
            bad.push(BadRecord {
                index,
                reason: format!(
                    "label byte {label} out of range for {} classes",
                    variant.classes()
                ),
            });
            continue;
        }
        records.push(CifarRecord {
            index,
            label: u32::from(label),
            offset: (index * record) as u64 + variant.label_bytes(),
        });
    }
    Ok((records, bad))
}

/// One class name per non-empty line; exactly `classes` of them.
pub fn parse_names(bytes: &[u8], classes: usize) -> Result<Vec<String>, CifarError> {
    let text = std::str::from_utf8(bytes).map_err(CifarError::NamesNotUtf8)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != classes {
        return Err(CifarError::NameCount {
            found: names.len(),
            expected: classes,
        });
    }
    Ok(names)
}
