//! Parsing and validating `--device` and `--precision` into libtorch devices and kinds.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

/// Why a device or precision cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device {0:?}; expected cpu, cuda or cuda:N")]
    Invalid(String),
    #[error("device {device} requested but libtorch sees {seen} CUDA device(s)")]
    Missing { device: DeviceSpec, seen: i64 },
    #[error("precision fp16 needs a CUDA device; use fp32 or bf16 on cpu")]
    Fp16OnCpu,
}

/// A compute device as users spell it: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Invalid(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves against what libtorch actually sees, so a missing GPU is an error, not a crash.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                let n = tch::Cuda::device_count();
                if (i as i64) < n {
                    Ok(Device::Cuda(i))
                } else {
                    Err(DeviceError::Missing {
                        device: self,
                        seen: n,
                    })
                }
            }
        }
    }
}

/// Numeric precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// fp16 convolutions are a CUDA feature; on CPU libtorch either lacks the kernels or crawls.
    pub fn check_device(self, device: Device) -> Result<(), DeviceError> {
        if self == Precision::Fp16 && device == Device::Cpu {
            return Err(DeviceError::Fp16OnCpu);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        let e = "gpu".parse::<DeviceSpec>().unwrap_err();
        assert!(e.to_string().contains("gpu"), "{e}");
        assert_eq!(e, DeviceError::Invalid("gpu".into()));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_gpu_is_an_error() {
        if tch::Cuda::device_count() == 0 {
            let e = DeviceSpec::Cuda(0).resolve().unwrap_err();
            assert!(e.to_string().contains("cuda:0"), "{e}");
            assert!(matches!(e, DeviceError::Missing { seen: 0, .. }), "{e:?}");
        }
    }
}
