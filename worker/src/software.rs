//! The worker's report of what it computes with, sent at registration and recorded in the run's
//! outcome.json and summary.json.
//!
//! libtorch has no runtime version call that tch exposes, so `build.rs` reads the version of the
//! libtorch this binary links (the pip torch's `version.py`, or `build-version` of a libtorch
//! download) into `TRESNET_LIBTORCH_VERSION`; when neither exists the version is reported as unknown
//! rather than guessed.

use tch::Device;
use tresnet_common::software::WorkerSoftware;

/// The libtorch this binary was linked against, when the build could read its version.
pub const LIBTORCH_VERSION: Option<&str> = option_env!("TRESNET_LIBTORCH_VERSION");

/// This process's software and the devices its executors use (`cpu`, `cuda:N`: tch exposes no
/// device-name call, so CUDA devices are named by their ordinal).
pub fn report(devices: &[Device]) -> WorkerSoftware {
    WorkerSoftware {
        libtorch: LIBTORCH_VERSION.map(str::to_string),
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        device_names: devices
            .iter()
            .map(|d| match d {
                Device::Cuda(i) => format!("cuda:{i}"),
                other => format!("{other:?}").to_lowercase(),
            })
            .collect(),
    }
}
