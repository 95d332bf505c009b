//! The TResNet family (M, L, XL, v2-L) on tch, mirroring timm's module tree so state-dict keys map 1:1.

mod blocks;
mod blur_pool;
mod config;
mod conv_norm_act;
mod load;
mod space_to_depth;
mod squeeze_excite;
mod tresnet;
mod weights;

pub use config::{ModelName, TResNetConfig, UnknownModel};
pub use load::{LoadedModel, load_model, load_models};
pub use tresnet::{ForwardError, TResNet};
pub use weights::{BuildOptions, LoadError, Params, WeightStore};
