//! What a worker computes with, as it reports it at registration and the run directory records it.

use serde::{Deserialize, Serialize};

/// A worker's numerical stack: the libtorch it links and the accelerators that libtorch can see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSoftware {
    /// libtorch version read from the install the binary was linked against (e.g. `2.11.0+cpu`);
    /// `None` when the build could not tell.
    pub libtorch: Option<String>,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    /// One name per executor device (`cpu`, or the CUDA device's name).
    pub device_names: Vec<String>,
}
