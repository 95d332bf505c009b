//! Types and pure logic shared by the coordinator and the worker; nothing here links libtorch.

pub mod checkpoint;
pub mod npy;
