//! The protocol fuzz target's body (the prost messages and their conversions live here, not in
//! `tresnet-formats`); the parser targets and the corpus replay helpers are [`tresnet_formats::fuzzing`],
//! re-exported. `fuzz/` builds this target only with its `protocol` feature, so that the parser targets
//! build without the network stack.

use prost::Message;
pub use tresnet_formats::fuzzing::*;

use crate::protocol::convert::{sample_from_pb, sample_to_pb};
use crate::protocol::pb;

fn sample_round_trip(r: pb::SampleRef) {
    if let Ok((index, sample)) = sample_from_pb(r.clone()) {
        assert_eq!(sample_to_pb(index, &sample), r, "SampleRef round trip");
    }
}

/// Protocol frames: the first byte picks a message type, the rest is decoded as that message (as
/// tonic would) and converted into our types wherever a conversion exists.
pub fn protocol(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => {
            if let Ok(req) = pb::RegisterRequest::decode(body)
                && let Some(software) = req.software
            {
                let back = crate::software::WorkerSoftware::from(software.clone());
                // An empty version means "unknown", so only a non-empty one must come back as sent.
                if !software.libtorch.is_empty() {
                    assert_eq!(pb::WorkerSoftware::from(&back), software);
                }
            }
        }
        1 => {
            // The job arrives at registration or, between the cells of a sweep, from NextJob.
            if let Ok(resp) = pb::RegisterResponse::decode(body)
                && let Some(job) = resp.job
            {
                let _ = crate::job::JobSpec::try_from(job);
            }
            if let Ok(resp) = pb::NextJobResponse::decode(body)
                && let Some(job) = resp.job
            {
                let _ = crate::job::JobSpec::try_from(job);
            }
        }
        2 => {
            let _ = pb::LeaseRequest::decode(body);
        }
        3 => {
            if let Ok(resp) = pb::LeaseResponse::decode(body) {
                for lease in resp.leases {
                    lease.samples.into_iter().for_each(sample_round_trip);
                }
            }
        }
        4 => {
            let _ = pb::HeartbeatRequest::decode(body);
        }
        5 => {
            let _ = pb::SubmitRequest::decode(body);
        }
        6 => {
            let _ = pb::ReleaseRequest::decode(body);
        }
        7 => {
            // The journal's record, read back from disk on resume.
            let _ = pb::ShardRecord::decode(body);
        }
        _ => {
            if let Ok(job) = pb::JobSpec::decode(body) {
                let _ = crate::job::JobSpec::try_from(job);
            }
            if let Ok(r) = pb::SampleRef::decode(body) {
                sample_round_trip(r);
            }
        }
    }
}
