//! The coordinator–worker wire protocol: generated gRPC code plus the version both sides check.

pub mod auth;
pub mod convert;
pub mod tls;

/// Generated from common/proto/tresnet.proto.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("tresnet.v1");
}

/// Bumped on every incompatible change to tresnet.proto; checked at registration. 6: decoded packs
/// (`DataSpec.decoded_json`: an older worker would decode the raw pixels as images and count every
/// sample bad) and the pool bench (`JobSpec.bench`).
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest gRPC message either side accepts. A shard of 4096 samples with fp32 logits of 1000 classes
/// is ~16 MiB; anything beyond 64 MiB is refused before it is buffered.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
