//! NCCL for the node-local collectives (feature `nccl`): cudarc with libnccl/libcuda loaded at run
//! time, one communicator per device from `ncclCommInitAll`, driven from the rendezvous thread inside
//! a group call. tch exposes no CUDA streams, so every kernel libtorch runs is on each device's legacy
//! default stream; the collectives run on that same stream (cudarc's `default_stream`), after an
//! explicit device synchronize, so they see finished forward passes.
// The one module that needs unsafe: raw device pointers cross from libtorch to NCCL here.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError};
use cudarc::nccl::result::{group_end, group_start};
use cudarc::nccl::sys::ncclResult_t;
use cudarc::nccl::{Comm, ReduceOp};
use tch::{Device, Kind, Tensor};

use super::{Ops, OpsError, check_same_shape};

/// Why NCCL cannot be set up, or an operation through it failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NcclError {
    #[error("{0:?} is not a CUDA device")]
    NotCuda(Device),
    #[error("no devices")]
    NoDevices,
    #[error("libcuda cannot be loaded")]
    NoLibcuda,
    #[error(
        "libnccl cannot be loaded (cudarc looks for libnccl.so, not the libnccl.so.2 that pip's \
         nvidia-nccl wheel ships: put a libnccl.so symlink to it on LD_LIBRARY_PATH)"
    )]
    NoLibnccl,
    #[error("cuda:{ordinal}: {source}")]
    Context {
        ordinal: usize,
        #[source]
        source: DriverError,
    },
    #[error("stream synchronize: {0}")]
    Synchronize(#[source] DriverError),
    /// `call` names the NCCL function (and the peer, for point-to-point calls).
    #[error("{call}: {code:?}")]
    Call { call: String, code: ncclResult_t },
    #[error("rank {rank}'s tensor is on {device:?}, its communicator on cuda:{ordinal}")]
    Placement {
        rank: usize,
        device: Device,
        ordinal: usize,
    },
    #[error("rank {0}'s tensor is not contiguous")]
    NotContiguous(usize),
    #[error("NCCL collectives here take int32/int64/float32/float64, not {0:?}")]
    Kind(Kind),
}

fn call(name: impl Into<String>) -> impl FnOnce(cudarc::nccl::result::NcclError) -> NcclError {
    let call = name.into();
    move |e| NcclError::Call { call, code: e.0 }
}

/// The communicators, one per rank. cudarc's `Comm` is not `Send` because a raw `ncclComm_t` must
/// not be used from two threads at once; the rendezvous in `Collective` guarantees exactly that (only
/// the last-arriving rank, under the round's mutex, touches them).
pub struct NcclOps {
    comms: Vec<Comm>,
    streams: Vec<Arc<CudaStream>>,
    ordinals: Vec<usize>,
}

// SAFETY: see the type's doc; every use is serialized by `Collective`'s mutex.
unsafe impl Send for NcclOps {}
// SAFETY: as above, `&NcclOps` is only ever used by the thread holding the round mutex.
unsafe impl Sync for NcclOps {}

impl std::fmt::Debug for NcclOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclOps")
            .field("ordinals", &self.ordinals)
            .finish_non_exhaustive()
    }
}

impl NcclOps {
    /// Fails (never panics) when a device is not CUDA or libcuda/libnccl cannot be loaded: cudarc
    /// panics on any call into a missing library, so presence is checked first.
    pub fn new(devices: &[Device]) -> Result<Self, NcclError> {
        let ordinals = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(i) => Ok(*i),
                other => Err(NcclError::NotCuda(*other)),
            })
            .collect::<Result<Vec<usize>, NcclError>>()?;
        if ordinals.is_empty() {
            return Err(NcclError::NoDevices);
        }
        // SAFETY: only dlopens the libraries to see whether they exist.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(NcclError::NoLibcuda);
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(NcclError::NoLibnccl);
        }
        let mut streams = Vec::with_capacity(ordinals.len());
        for &o in &ordinals {
            let ctx =
                CudaContext::new(o).map_err(|source| NcclError::Context { ordinal: o, source })?;
            // Slices wrapping libtorch memory must not record events libtorch knows nothing about.
            // SAFETY: called before any slice exists on this context.
            unsafe { ctx.disable_event_tracking() };
            streams.push(ctx.default_stream());
        }
        let comms = Comm::from_devices(streams.clone()).map_err(call("ncclCommInitAll"))?;
        Ok(NcclOps {
            comms,
            streams,
            ordinals,
        })
    }

    fn sync_torch(&self) {
        for &o in &self.ordinals {
            tch::Cuda::synchronize(o as i64);
        }
    }

    fn sync_streams(&self) -> Result<(), NcclError> {
        for s in &self.streams {
            s.synchronize().map_err(NcclError::Synchronize)?;
        }
        Ok(())
    }

    fn check_placement(&self, tensors: &[Tensor]) -> Result<(), NcclError> {
        for (rank, t) in tensors.iter().enumerate() {
            if t.device() != Device::Cuda(self.ordinals[rank]) {
                return Err(NcclError::Placement {
                    rank,
                    device: t.device(),
                    ordinal: self.ordinals[rank],
                });
            }
            if !t.is_contiguous() {
                return Err(NcclError::NotContiguous(rank));
            }
        }
        Ok(())
    }
}

/// Wraps libtorch memory as a cudarc slice; the caller must `leak` it (dropping would free memory
/// that libtorch owns) and keep the tensor alive meanwhile.
///
/// SAFETY: `t` is a contiguous CUDA tensor on `stream`'s device holding `numel` elements of `T`.
unsafe fn borrow<T>(stream: &Arc<CudaStream>, t: &Tensor) -> CudaSlice<T> {
    let n = t.numel();
    // SAFETY: forwarded from the caller.
    unsafe { stream.upgrade_device_ptr::<T>(t.data_ptr() as u64, n) }
}

macro_rules! with_kind {
    ($kind:expr, $T:ident, $body:block) => {
        match $kind {
            Kind::Int64 => {
                type $T = i64;
                $body
            }
            Kind::Int => {
                type $T = i32;
                $body
            }
            Kind::Float => {
                type $T = f32;
                $body
            }
            Kind::Double => {
                type $T = f64;
                $body
            }
            other => Err(NcclError::Kind(other)),
        }
    };
}

impl Ops for NcclOps {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), OpsError> {
        check_same_shape(tensors)?;
        self.check_placement(tensors)?;
        self.sync_torch();
        let kind = tensors[0].kind();
        let res: Result<(), NcclError> = with_kind!(kind, T, {
            // SAFETY: placement and contiguity checked above; the tensors outlive the slices.
            let mut slices: Vec<CudaSlice<T>> = tensors
                .iter()
                .zip(&self.streams)
                .map(|(t, s)| unsafe { borrow::<T>(s, t) })
                .collect();
            let result = {
                // No early return here: the borrowed slices must be leaked whatever happens.
                let mut r = group_start().map(drop).map_err(call("ncclGroupStart"));
                for (comm, slice) in self.comms.iter().zip(slices.iter_mut()) {
                    if r.is_err() {
                        break;
                    }
                    if let Err(e) = comm.all_reduce_in_place(slice, &ReduceOp::Sum) {
                        r = Err(call("ncclAllReduce")(e));
                    }
                }
                // Ending the group launches the queued operations; its error outranks theirs.
                group_end().map_err(call("ncclGroupEnd")).and(r)
            };
            let synced = self.sync_streams();
            for s in slices {
                s.leak();
            }
            result.and(synced)
        });
        Ok(res?)
    }

    fn gather(&self, tensors: &[Tensor]) -> Result<Tensor, OpsError> {
        self.check_placement(tensors)?;
        self.sync_torch();
        let kind = tensors[0].kind();
        let dev0 = tensors[0].device();
        // Receive buffers on rank 0, one per other rank, each the sender's shape.
        let buffers: Vec<Tensor> = tensors[1..]
            .iter()
            .map(|t| Tensor::empty(t.size(), (kind, dev0)))
            .collect();
        let res: Result<(), NcclError> = with_kind!(kind, T, {
            let sends: Vec<CudaSlice<T>> = tensors[1..]
                .iter()
                .zip(&self.streams[1..])
                // SAFETY: placement and contiguity checked above.
                .map(|(t, s)| unsafe { borrow::<T>(s, t) })
                .collect();
            let mut recvs: Vec<CudaSlice<T>> = buffers
                .iter()
                // SAFETY: fresh contiguous buffers on rank 0's device.
                .map(|b| unsafe { borrow::<T>(&self.streams[0], b) })
                .collect();
            let result = {
                // No early return here: the borrowed slices must be leaked whatever happens.
                let mut r = group_start().map(drop).map_err(call("ncclGroupStart"));
                for (i, (send, recv)) in sends.iter().zip(recvs.iter_mut()).enumerate() {
                    if r.is_err() {
                        break;
                    }
                    let peer = i + 1;
                    if let Err(e) = self.comms[peer].send(send, 0) {
                        r = Err(call(format!("ncclSend from rank {peer}"))(e));
                    }
                    if let Err(e) = self.comms[0].recv(recv, peer as i32) {
                        r = Err(call(format!("ncclRecv of rank {peer}"))(e));
                    }
                }
                // Ending the group launches the queued operations; its error outranks theirs.
                group_end().map_err(call("ncclGroupEnd")).and(r)
            };
            let synced = self.sync_streams();
            for s in sends {
                s.leak();
            }
            for s in recvs {
                s.leak();
            }
            result.and(synced)
        });
        res?;
        let mut parts = vec![tensors[0].shallow_clone()];
        parts.extend(buffers);
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}
