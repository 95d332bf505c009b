//! From a checkpoint file to a ready TResNet: read natively, remap MIIL layout, load strictly, fold BN.

use std::path::Path;

use tresnet_common::checkpoint::{
    CheckpointLayout, load_state_dict, non_finite_tensors, to_timm_layout,
};

use super::config::{ModelName, TResNetConfig};
use super::tresnet::TResNet;
use super::weights::{BuildOptions, LoadError, WeightStore};

/// A model plus what was learnt about its checkpoint while loading it.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: TResNet,
    pub layout: CheckpointLayout,
    pub num_classes: i64,
}

/// Loads `name` from `path` (`.pth` zip or legacy, `.safetensors`; timm or MIIL layout). The class
/// count comes from the checkpoint's classifier, so transfer heads (10, 100, 102, 196, …) just work.
pub fn load_model(
    name: ModelName,
    cfg: &TResNetConfig,
    path: &Path,
    opts: &BuildOptions,
) -> Result<LoadedModel, LoadError> {
    let mut models = load_models(name, cfg, path, std::slice::from_ref(opts))?;
    Ok(models.pop().expect("one model per option"))
}

/// The same checkpoint built once per entry of `opts` (layout candidates), read from disk once.
pub fn load_models(
    name: ModelName,
    cfg: &TResNetConfig,
    path: &Path,
    opts: &[BuildOptions],
) -> Result<Vec<LoadedModel>, LoadError> {
    let (sd, layout) = to_timm_layout(load_state_dict(path)?);
    let mut non_finite = non_finite_tensors(&sd).into_iter();
    if let Some(tensor) = non_finite.next() {
        return Err(LoadError::NonFinite {
            path: path.to_path_buf(),
            tensor,
            more: non_finite.count(),
        });
    }
    let mut out = Vec::with_capacity(opts.len());
    let mut sd = Some(sd);
    for (i, o) in opts.iter().enumerate() {
        // The last build takes the state dict itself; the others a copy.
        let mine = if i + 1 == opts.len() {
            sd.take().expect("taken once, by the last build")
        } else {
            sd.clone().expect("taken only by the last build")
        };
        out.push(build(name, cfg, path, mine, layout, o)?);
    }
    Ok(out)
}

fn build(
    name: ModelName,
    cfg: &TResNetConfig,
    path: &Path,
    sd: tresnet_common::checkpoint::StateDict,
    layout: CheckpointLayout,
    opts: &BuildOptions,
) -> Result<LoadedModel, LoadError> {
    let store = WeightStore::from_state_dict(sd);
    let num_classes = match store.shape_of("head.fc.weight").as_deref() {
        Some([classes, features]) if *features as i64 == cfg.num_features() && *classes > 0 => {
            *classes as i64
        }
        Some(shape) => {
            return Err(LoadError::Classes {
                path: path.to_path_buf(),
                reason: format!(
                    "head.fc.weight has shape {shape:?}, {name} expects [classes, {}]",
                    cfg.num_features()
                ),
            });
        }
        None => {
            return Err(LoadError::Classes {
                path: path.to_path_buf(),
                reason: format!("no head.fc.weight (layout detected: {layout:?})"),
            });
        }
    };
    let model = TResNet::new(cfg, &store.root(), num_classes, opts);
    store.finish(path, name.as_str())?;
    Ok(LoadedModel {
        model,
        layout,
        num_classes,
    })
}

impl TResNetConfig {
    /// Trainable parameters of this variant with `num_classes` outputs, counted as timm does.
    pub fn param_count(&self, num_classes: i64) -> i64 {
        let store = WeightStore::shapes_only();
        let _ = TResNet::new(self, &store.root(), num_classes, &BuildOptions::cpu_f32());
        store.param_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_equal_timm() {
        // timm: sum(p.numel() for p in model.parameters()) with 1000 classes.
        assert_eq!(TResNetConfig::m().param_count(1000), 31_389_032);
        assert_eq!(TResNetConfig::l().param_count(1000), 55_989_256);
        assert_eq!(TResNetConfig::xl().param_count(1000), 78_436_244);
        assert_eq!(TResNetConfig::v2_l().param_count(1000), 46_174_824);
    }
}
