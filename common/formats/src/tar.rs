//! WebDataset-style tar shards: `shard-000000.tar`, … each holding samples as members that share a key
//! (`n01440764/ILSVRC2012_val_00000293.jpg` + `n01440764/ILSVRC2012_val_00000293.cls`), with a JSON
//! index next to each shard (`shard-000000.tar.index.json`) giving every sample's image offset, size
//! and label, so a worker reads a sample with one ranged GET instead of streaming the shard.
//!
//! Member grouping follows WebDataset: the key is the member path up to the first `.` of its file name,
//! the extension is the rest. A sample has exactly one image member — an extension of torchvision's
//! [`IMG_EXTENSIONS`], or `img` (what `pack_dataset` (coordinator) writes for a
//! source without a recognised extension), or `cifar` (a raw 3072-byte CIFAR record, which
//! `pack_dataset` (coordinator) writes for CIFAR sources instead of re-encoding them: no decode, no loss) — and
//! one `.cls` member holding its label in ASCII decimal. Extensions are compared whole and without
//! case, as WebDataset's field names are: `x.seg.png` is field `seg.png` of sample `x`, not its image.
//! Keys with neither are not samples (metadata members); a key with only one of the two, two images,
//! or an unreadable `.cls` is a bad sample.
//!
//! Class index convention: the `.cls` value as written. Class names come from `dataset.json` at the
//! root (written by `pack_dataset` (coordinator), carrying the source dataset's names); without it they are the
//! labels' decimal form up to the largest label.
//!
//! Keys are `<shard path relative to the root>:<member key>` (`shard-000003.tar:n01440764/x`).
//! A shard without an index is indexed by streaming it once during listing (`ensure_indexes` (tresnet-common) writes
//! the missing indexes back); an index whose recorded shard size differs from the shard's is stale and
//! an error. The index is the authority on samples the packer could not read (its `bad` list): they
//! have no members, so rebuilding an index from its shard forgets them.
//!
//! Tar parsing accepts ustar, GNU (`L` long names, base-256 sizes) and pax (`path`, `size`) headers;
//! every header's checksum is verified. Malformed input is a [`TarError`] with the byte offset.
//!
//! This module holds the byte formats only (scanner, index, builder); listing a store's shards is
//! `tresnet_common::dataset::tar` and packing a dataset into shards is the coordinator's `pack`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cifar::CIFAR_PIXEL_BYTES;
use crate::image_files::IMG_EXTENSIONS;

/// A tar block: headers and the padding of every member's data are whole blocks.
pub const BLOCK: u64 = 512;
/// Largest `.cls`, GNU long-name or pax member kept in memory while scanning; labels are a few bytes
/// and names a few hundred, so anything bigger is not what it claims to be.
pub const MAX_SMALL_MEMBER: u64 = 64 * 1024;
/// Suffix of a shard's index object.
pub const INDEX_SUFFIX: &str = ".index.json";
/// Dataset-level metadata written by `pack_dataset` (coordinator).
pub const DATASET_FILE: &str = "dataset.json";
/// The index format this build writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// Extension of a decoded pack's members: `3 x R x R` uint8 bytes in CHW order (written by the
/// coordinator's `pack --decoded`, see `tresnet_common::dataset::decoded`).
pub const DECODED_EXTENSION: &str = "rgb8";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("header at byte {offset}: checksum {stored} does not match the computed {computed}")]
    Checksum {
        offset: u64,
        stored: u64,
        computed: u64,
    },
    #[error("header at byte {offset}: {reason}")]
    Header { offset: u64, reason: String },
    #[error("truncated in the member starting at byte {offset} ({missing} bytes missing)")]
    Truncated { offset: u64, missing: u64 },
    #[error("truncated header at byte {offset}")]
    TruncatedHeader { offset: u64 },
    #[error(
        "member at byte {offset} is {size} bytes, more than the {MAX_SMALL_MEMBER} allowed for its kind"
    )]
    TooLarge { offset: u64, size: u64 },
    #[error("index: {0}")]
    Index(String),
    #[error("member name {0:?} cannot be written (longer than 64 KiB or contains NUL)")]
    Name(String),
}

/// One regular-file member of a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    pub name: String,
    /// Offset of the member's data in the tar (just past its header).
    pub offset: u64,
    pub size: u64,
    /// The data, for members kept while scanning (`.cls`).
    pub data: Option<Vec<u8>>,
}

/// Incremental tar parser: feed it the shard in chunks of any size (a download stream) and it yields
/// the members, holding at most one header and the small members it keeps.
#[derive(Debug)]
pub struct TarScanner {
    keep: fn(&str) -> bool,
    position: u64,
    state: ScanState,
    header: Vec<u8>,
    long_name: Option<String>,
    pax_path: Option<String>,
    pax_size: Option<u64>,
    zero_blocks: u32,
    members: Vec<TarMember>,
}

#[derive(Debug)]
enum ScanState {
    Header,
    Data {
        kind: DataKind,
        header_offset: u64,
        remaining: u64,
        padding: u64,
        buffer: Vec<u8>,
    },
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    /// A regular member; the index into `members`, and whether its data is kept.
    File(usize, bool),
    LongName,
    Pax,
    Skip,
}

impl TarScanner {
    /// `keep(name)` says which regular members' data to keep.
    pub fn new(keep: fn(&str) -> bool) -> Self {
        Self {
            keep,
            position: 0,
            state: ScanState::Header,
            header: Vec::with_capacity(BLOCK as usize),
            long_name: None,
            pax_path: None,
            pax_size: None,
            zero_blocks: 0,
            members: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), TarError> {
        while !chunk.is_empty() {
            match &mut self.state {
                ScanState::End => return Ok(()),
                ScanState::Header => {
                    let take = (BLOCK as usize - self.header.len()).min(chunk.len());
                    self.header.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    self.position += take as u64;
                    if self.header.len() == BLOCK as usize {
                        let block = std::mem::take(&mut self.header);
                        self.header.reserve(BLOCK as usize);
                        self.on_header(&block, self.position - BLOCK)?;
                    }
                }
                ScanState::Data {
                    kind,
                    header_offset: _,
                    remaining,
                    padding,
                    buffer,
                } => {
                    if *remaining > 0 {
                        let take = (*remaining).min(chunk.len() as u64) as usize;
                        if matches!(
                            kind,
                            DataKind::File(_, true) | DataKind::LongName | DataKind::Pax
                        ) {
                            buffer.extend_from_slice(&chunk[..take]);
                        }
                        *remaining -= take as u64;
                        chunk = &chunk[take..];
                        self.position += take as u64;
                    } else {
                        let take = (*padding).min(chunk.len() as u64) as usize;
                        *padding -= take as u64;
                        chunk = &chunk[take..];
                        self.position += take as u64;
                    }
                    if *remaining == 0 && *padding == 0 {
                        self.end_data()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the input: the members, or an error if it stopped inside a member or header.
    pub fn finish(mut self) -> Result<Vec<TarMember>, TarError> {
        match &self.state {
            ScanState::End => {}
            ScanState::Header if self.header.is_empty() => {}
            ScanState::Header => {
                return Err(TarError::TruncatedHeader {
                    offset: self.position - self.header.len() as u64,
                });
            }
            ScanState::Data {
                header_offset,
                remaining,
                ..
            } => {
                // A missing final padding is harmless (the data is complete); missing data is not.
                if *remaining > 0 {
                    return Err(TarError::Truncated {
                        offset: *header_offset,
                        missing: *remaining,
                    });
                }
                self.end_data()?;
            }
        }
        Ok(self.members)
    }

    fn on_header(&mut self, block: &[u8], offset: u64) -> Result<(), TarError> {
        if block.iter().all(|&b| b == 0) {
            // Two zero blocks end the archive; anything after them is ignored, as tar does.
            self.zero_blocks += 1;
            if self.zero_blocks >= 2 {
                self.state = ScanState::End;
            }
            return Ok(());
        }
        self.zero_blocks = 0;
        let header = parse_header(block, offset)?;
        let size = match header.kind {
            b'0' | 0 | b'7' => self.pax_size.take().unwrap_or(header.size),
            _ => header.size,
        };
        let kind = match header.kind {
            b'0' | 0 | b'7' => {
                let name = self
                    .pax_path
                    .take()
                    .or_else(|| self.long_name.take())
                    .unwrap_or(header.name);
                let keep = (self.keep)(&name);
                if keep && size > MAX_SMALL_MEMBER {
                    return Err(TarError::TooLarge { offset, size });
                }
                self.members.push(TarMember {
                    name,
                    offset: offset + BLOCK,
                    size,
                    data: None,
                });
                DataKind::File(self.members.len() - 1, keep)
            }
            b'L' => DataKind::LongName,
            b'x' => DataKind::Pax,
            _ => {
                // Directories, links, global pax headers: no sample data. Pending names apply to the
                // next entry only, so they are dropped.
                self.long_name = None;
                self.pax_path = None;
                self.pax_size = None;
                DataKind::Skip
            }
        };
        if matches!(kind, DataKind::LongName | DataKind::Pax) && size > MAX_SMALL_MEMBER {
            return Err(TarError::TooLarge { offset, size });
        }
        let padding = size.next_multiple_of(BLOCK) - size;
        self.state = ScanState::Data {
            kind,
            header_offset: offset,
            remaining: size,
            padding,
            buffer: Vec::new(),
        };
        if size == 0 {
            self.end_data()?;
        }
        Ok(())
    }

    fn end_data(&mut self) -> Result<(), TarError> {
        let state = std::mem::replace(&mut self.state, ScanState::Header);
        let ScanState::Data {
            kind,
            header_offset,
            buffer,
            ..
        } = state
        else {
            return Ok(());
        };
        match kind {
            DataKind::File(index, true) => self.members[index].data = Some(buffer),
            DataKind::LongName => {
                let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                self.long_name = Some(String::from_utf8_lossy(&buffer[..end]).into_owned());
            }
            DataKind::Pax => {
                for (key, value) in parse_pax(&buffer, header_offset)? {
                    match key.as_str() {
                        "path" => self.pax_path = Some(value),
                        "size" => {
                            self.pax_size = Some(value.parse().map_err(|_| TarError::Header {
                                offset: header_offset,
                                reason: format!("pax size {value:?} is not a number"),
                            })?)
                        }
                        _ => {}
                    }
                }
            }
            DataKind::File(_, false) | DataKind::Skip => {}
        }
        Ok(())
    }
}

struct Header {
    name: String,
    size: u64,
    kind: u8,
}

fn parse_header(block: &[u8], offset: u64) -> Result<Header, TarError> {
    let stored = parse_octal(&block[148..156]).ok_or_else(|| TarError::Header {
        offset,
        reason: "unreadable checksum field (not a tar header)".into(),
    })?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    // Some historic tars summed signed bytes; accept either, as GNU tar does.
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                i64::from(b' ')
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(TarError::Checksum {
            offset,
            stored,
            computed: unsigned,
        });
    }
    let size_field = &block[124..136];
    let size = if size_field[0] & 0x80 != 0 {
        // GNU base-256: the remaining bits are a big-endian number.
        let mut value: u64 = u64::from(size_field[0] & 0x7f);
        for &b in &size_field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| TarError::Header {
                    offset,
                    reason: "size overflows".into(),
                })?;
        }
        value
    } else {
        parse_octal(size_field).ok_or_else(|| TarError::Header {
            offset,
            reason: "unreadable size field".into(),
        })?
    };
    let field = |range: std::ops::Range<usize>| {
        let raw = &block[range];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let mut name = field(0..100);
    // Only POSIX ustar has a prefix field; GNU's "ustar  " uses those bytes for other things.
    if &block[257..263] == b"ustar\0" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    Ok(Header {
        name,
        size,
        kind: block[156],
    })
}

/// An octal field: optional leading spaces, digits, then NUL or space terminators. Empty is 0.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end]);
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// pax extended header records: `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8], offset: u64) -> Result<Vec<(String, String)>, TarError> {
    let bad = |reason: &str| TarError::Header {
        offset,
        reason: format!("pax record: {reason}"),
    };
    let mut records = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("unreadable length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("length does not match"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no `=`"))?;
        records.push((
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
        ));
        data = &data[len..];
    }
    Ok(records)
}

/// All members of an in-memory tar.
pub fn scan_tar(bytes: &[u8], keep: fn(&str) -> bool) -> Result<Vec<TarMember>, TarError> {
    let mut scanner = TarScanner::new(keep);
    scanner.feed(bytes)?;
    scanner.finish()
}

/// WebDataset's split of a member name into (key, extension): the extension starts at the first `.`
/// of the file name. `None` when the file name has no `.`.
pub fn split_member_name(name: &str) -> Option<(&str, &str)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')? + file_start;
    Some((&name[..dot], &name[dot + 1..]))
}

/// Whether a member is a `.cls` label (the members `index_shard` keeps while scanning).
pub fn is_cls(name: &str) -> bool {
    split_member_name(name).is_some_and(|(_, ext)| ext.eq_ignore_ascii_case("cls"))
}

fn image_extension(ext: &str) -> bool {
    let lower = ext.to_ascii_lowercase();
    lower == "img" || lower == DECODED_EXTENSION || IMG_EXTENSIONS.iter().any(|e| e[1..] == lower)
}

/// The offset index of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub version: u32,
    /// Size of the shard the index describes; a different size means the index is stale.
    pub shard_size: u64,
    pub samples: Vec<ShardSample>,
    /// Samples that exist only as a reason (see the module doc).
    #[serde(default)]
    pub bad: Vec<ShardBad>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSample {
    /// WebDataset key (member name without extension).
    pub key: String,
    /// The image member's full name.
    pub member: String,
    /// Offset of the image member's data in the shard.
    pub offset: u64,
    pub size: u64,
    pub label: u32,
    /// Decoded packs: the sample's key in the source dataset, which listing reports instead of
    /// `shard:key`, so a run over the pack names samples as the run over the source does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBad {
    pub key: String,
    pub reason: String,
    /// As [`ShardSample::source_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
}

impl ShardIndex {
    /// Groups a shard's members into samples (see the module doc for the rules).
    pub fn from_members(shard_size: u64, members: &[TarMember]) -> Self {
        #[derive(Default)]
        struct Group<'a> {
            images: Vec<&'a TarMember>,
            cls: Vec<&'a TarMember>,
        }
        let mut order = Vec::new();
        let mut groups: HashMap<&str, Group<'_>> = HashMap::new();
        for member in members {
            let Some((key, ext)) = split_member_name(&member.name) else {
                continue;
            };
            let is_image = image_extension(ext) || ext.eq_ignore_ascii_case("cifar");
            let is_label = ext.eq_ignore_ascii_case("cls");
            if !is_image && !is_label {
                continue;
            }
            let group = groups.entry(key).or_insert_with(|| {
                order.push(key);
                Group::default()
            });
            if is_image {
                group.images.push(member);
            } else {
                group.cls.push(member);
            }
        }
        let mut index = ShardIndex {
            version: INDEX_VERSION,
            shard_size,
            samples: Vec::new(),
            bad: Vec::new(),
        };
        for key in order {
            let group = &groups[key];
            let problem = match (group.images.as_slice(), group.cls.as_slice()) {
                ([], _) => Err("no image member".to_string()),
                (_, []) => Err("no .cls member".to_string()),
                ([image], [cls]) => {
                    let text = cls
                        .data
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Err(_) => Err(format!("unreadable .cls {:?}", text.trim())),
                        Ok(_)
                            if image.name.to_ascii_lowercase().ends_with(".cifar")
                                && image.size != CIFAR_PIXEL_BYTES =>
                        {
                            Err(format!(
                                "raw CIFAR member of {} bytes, expected {CIFAR_PIXEL_BYTES}",
                                image.size
                            ))
                        }
                        Ok(label) => Ok((image, label)),
                    }
                }
                (images, [_]) => Err(format!(
                    "several image members ({})",
                    images
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                (_, _) => Err("several .cls members".to_string()),
            };
            match problem {
                Ok((image, label)) => index.samples.push(ShardSample {
                    key: key.to_string(),
                    member: image.name.clone(),
                    offset: image.offset,
                    size: image.size,
                    label,
                    source_key: None,
                }),
                Err(reason) => index.bad.push(ShardBad {
                    key: key.to_string(),
                    reason,
                    source_key: None,
                }),
            }
        }
        index
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, TarError> {
        let index: ShardIndex =
            serde_json::from_slice(bytes).map_err(|e| TarError::Index(e.to_string()))?;
        if index.version != INDEX_VERSION {
            return Err(TarError::Index(format!(
                "version {} (this build reads version {INDEX_VERSION})",
                index.version
            )));
        }
        for sample in &index.samples {
            let fits = sample
                .offset
                .checked_add(sample.size)
                .is_some_and(|end| end <= index.shard_size);
            if !fits {
                return Err(TarError::Index(format!(
                    "sample {} at {}+{} lies outside the {}-byte shard",
                    sample.key, sample.offset, sample.size, index.shard_size
                )));
            }
        }
        Ok(index)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Appends ustar members to an in-memory tar, deterministically (mtime 0, uid/gid 0, mode 0644), so
/// packing the same dataset twice gives byte-identical shards.
#[derive(Debug, Default)]
pub struct TarBuilder {
    bytes: Vec<u8>,
}

impl TarBuilder {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes `append` would add for a member of `size` bytes named `name`.
    pub fn member_bytes(name: &str, size: u64) -> u64 {
        let long = if fits_ustar(name).is_some() {
            0
        } else {
            BLOCK + (name.len() as u64 + 1).next_multiple_of(BLOCK)
        };
        long + BLOCK + size.next_multiple_of(BLOCK)
    }

    /// Appends a member; returns the offset of its data.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<u64, TarError> {
        if name.contains('\0') || name.len() > MAX_SMALL_MEMBER as usize - 1 {
            return Err(TarError::Name(name.to_string()));
        }
        match fits_ustar(name) {
            Some((prefix, rest)) => self.header(rest, prefix, data.len() as u64, b'0'),
            None => {
                // GNU long name: a `././@LongLink` entry whose data is the name, read by GNU tar,
                // Python's tarfile (and so WebDataset) and this module.
                let mut long = name.as_bytes().to_vec();
                long.push(0);
                self.header("././@LongLink", "", long.len() as u64, b'L');
                self.data(&long);
                let short: String = name.chars().take(99).collect();
                let short = if short.len() > 100 {
                    "long-name"
                } else {
                    short.as_str()
                };
                self.header(short, "", data.len() as u64, b'0');
            }
        }
        let offset = self.len();
        self.data(data);
        Ok(offset)
    }

    /// The finished archive (two zero blocks appended).
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend([0u8; 2 * BLOCK as usize]);
        self.bytes
    }

    fn data(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let padded = (data.len() as u64).next_multiple_of(BLOCK) as usize;
        self.bytes.resize(self.bytes.len() + padded - data.len(), 0);
    }

    fn header(&mut self, name: &str, prefix: &str, size: u64, kind: u8) {
        let mut block = [0u8; BLOCK as usize];
        block[..name.len()].copy_from_slice(name.as_bytes());
        block[100..108].copy_from_slice(b"0000644\0");
        block[108..116].copy_from_slice(b"0000000\0");
        block[116..124].copy_from_slice(b"0000000\0");
        if size < 8 << 30 {
            block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            block[124] = 0x80;
            block[128..136].copy_from_slice(&size.to_be_bytes());
        }
        block[136..148].copy_from_slice(b"00000000000\0");
        block[156] = kind;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&block);
    }
}

/// Splits a name into ustar (prefix, name) fields, if it fits them.
fn fits_ustar(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // The prefix ends at a '/', which is not stored.
    name.char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .next()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = TarBuilder::default();
        for (name, data) in members {
            builder.append(name, data).unwrap();
        }
        builder.finish()
    }

    #[test]
    fn builder_output_scans_back_with_offsets() {
        let long = format!("{}/{}.jpg", "d".repeat(120), "f".repeat(90));
        let very_long = format!("{}.jpg", "x".repeat(300));
        let members: Vec<(&str, &[u8])> = vec![
            ("a/b.jpg", b"JPEGDATA"),
            ("a/b.cls", b"7"),
            (&long, b"L"),
            (&very_long, b"VL"),
            ("empty.png", b""),
        ];
        let tar = tar_of(&members);
        assert_eq!(tar.len() % 512, 0);
        let scanned = scan_tar(&tar, is_cls).unwrap();
        assert_eq!(scanned.len(), members.len());
        for ((name, data), member) in members.iter().zip(&scanned) {
            assert_eq!(&member.name, name);
            let range = member.offset as usize..(member.offset + member.size) as usize;
            assert_eq!(&tar[range], *data);
        }
        assert_eq!(scanned[1].data.as_deref(), Some(&b"7"[..]));
        assert_eq!(scanned[0].data, None);
    }

    #[test]
    fn samples_group_by_webdataset_key() {
        let tar = tar_of(&[
            ("x/one.jpg", b"1111"),
            ("x/one.cls", b" 3\n"),
            ("two.png", b"22"),
            ("two.seg.png", b"mask"),
            ("two.cls", b"1"),
            ("noimage.cls", b"1"),
            ("nolabel.webp", b"3"),
            ("twice.jpg", b"4"),
            ("twice.png", b"4"),
            ("twice.cls", b"0"),
            ("badcls.jpg", b"5"),
            ("badcls.cls", b"cat"),
            ("rec.cifar", &[9u8; 3072]),
            ("rec.cls", b"2"),
            ("short.cifar", b"123"),
            ("short.cls", b"2"),
            ("meta.json", b"{}"),
            ("README", b"no extension"),
        ]);
        let members = scan_tar(&tar, is_cls).unwrap();
        let index = ShardIndex::from_members(tar.len() as u64, &members);
        let samples: Vec<(&str, &str, u32)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.member.as_str(), s.label))
            .collect();
        assert_eq!(
            samples,
            [
                ("x/one", "x/one.jpg", 3),
                ("two", "two.png", 1),
                ("rec", "rec.cifar", 2)
            ]
        );
        let bad: Vec<(&str, &str)> = index
            .bad
            .iter()
            .map(|b| (b.key.as_str(), b.reason.as_str()))
            .collect();
        assert_eq!(
            bad,
            [
                ("noimage", "no image member"),
                ("nolabel", "no .cls member"),
                ("twice", "several image members (twice.jpg, twice.png)"),
                ("badcls", "unreadable .cls \"cat\""),
                ("short", "raw CIFAR member of 3 bytes, expected 3072"),
            ]
        );
        let json = index.to_json();
        assert_eq!(ShardIndex::from_json(&json).unwrap(), index);
    }

    #[test]
    fn damaged_tars_are_errors_with_offsets() {
        let tar = tar_of(&[("a.jpg", &[1u8; 1000]), ("a.cls", b"1")]);
        let mut bad_sum = tar.clone();
        bad_sum[0] ^= 1;
        assert!(matches!(
            scan_tar(&bad_sum, is_cls),
            Err(TarError::Checksum { offset: 0, .. })
        ));
        assert!(matches!(
            scan_tar(&tar[..700], is_cls),
            Err(TarError::Truncated {
                offset: 0,
                missing: 812
            })
        ));
        assert!(matches!(
            scan_tar(&tar[..1600], is_cls),
            Err(TarError::TruncatedHeader { offset: 1536 })
        ));
        assert!(scan_tar(b"definitely not a tar archive, just some text", is_cls).is_err());
        // A tar without its end-of-archive blocks but with complete members still reads.
        assert_eq!(scan_tar(&tar[..tar.len() - 1024], is_cls).unwrap().len(), 2);
        let mut huge_cls = TarBuilder::default();
        huge_cls
            .append("x.cls", &vec![b'1'; MAX_SMALL_MEMBER as usize + 1])
            .unwrap();
        assert!(matches!(
            scan_tar(&huge_cls.finish(), is_cls),
            Err(TarError::TooLarge { .. })
        ));
    }

    #[test]
    fn stale_or_inconsistent_indexes_are_rejected() {
        let index = ShardIndex {
            version: 1,
            shard_size: 100,
            samples: vec![ShardSample {
                key: "k".into(),
                member: "k.jpg".into(),
                offset: 90,
                size: 20,
                label: 0,
                source_key: None,
            }],
            bad: vec![],
        };
        let err = ShardIndex::from_json(&index.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the 100-byte shard"), "{err}");
        assert!(ShardIndex::from_json(br#"{"version":2,"shard_size":0,"samples":[]}"#).is_err());
    }

    proptest! {
        /// Whatever the members and however the stream is chunked, scanning finds every member at the
        /// offset the builder reported.
        #[test]
        fn scanner_matches_builder_for_any_members_and_chunking(
            members in proptest::collection::vec(("[a-z]{1,8}(/[a-z]{1,150}){0,2}\\.(jpg|cls|png)", proptest::collection::vec(any::<u8>(), 0..1500)), 0..8),
            chunk in 1usize..2000,
        ) {
            let mut builder = TarBuilder::default();
            let mut offsets = Vec::new();
            for (name, data) in &members {
                prop_assert_eq!(
                    TarBuilder::member_bytes(name, data.len() as u64),
                    { let before = builder.len(); offsets.push(builder.append(name, data).unwrap()); builder.len() - before }
                );
            }
            let tar = builder.finish();
            let mut scanner = TarScanner::new(is_cls);
            for piece in tar.chunks(chunk) {
                scanner.feed(piece).unwrap();
            }
            let scanned = scanner.finish().unwrap();
            prop_assert_eq!(scanned.len(), members.len());
            for (((name, data), member), offset) in members.iter().zip(&scanned).zip(&offsets) {
                prop_assert_eq!(&member.name, name);
                prop_assert_eq!(member.offset, *offset);
                prop_assert_eq!(&tar[member.offset as usize..(member.offset + member.size) as usize], &data[..]);
                if is_cls(name) {
                    prop_assert_eq!(member.data.as_deref(), Some(&data[..]));
                }
            }
            let index = ShardIndex::from_members(tar.len() as u64, &scanned);
            prop_assert_eq!(ShardIndex::from_json(&index.to_json()).unwrap(), index);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..600) {
            let mut scanner = TarScanner::new(is_cls);
            let mut result = Ok(());
            for piece in bytes.chunks(chunk) {
                result = scanner.feed(piece);
                if result.is_err() { break; }
            }
            if result.is_ok() {
                let _ = scanner.finish();
            }
            let _ = ShardIndex::from_json(&bytes);
        }

        #[test]
        fn mutated_tars_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12)) {
            let mut tar = tar_of(&[("a/b.jpg", &[7u8; 600]), ("a/b.cls", b"3"), (&"n".repeat(200), b"x")]);
            for (at, value) in edits {
                let i = at.index(tar.len());
                tar[i] = value;
            }
            if let Ok(members) = scan_tar(&tar, is_cls) {
                let _ = ShardIndex::from_members(tar.len() as u64, &members);
            }
        }
    }
}
