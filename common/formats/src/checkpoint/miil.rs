//! Remaps official MIIL TResNet checkpoints (inplace-ABN era) to timm's key names and BatchNorm semantics.

use super::{DType, RawTensor, StateDict};
use regex::Regex;

/// Which naming convention a TResNet state dict was saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// timm >= 0.9 / Hugging Face hub: `body.conv1.conv.weight`, plain BatchNorm γ.
    Timm,
    /// Official Alibaba-MIIL release: `body.conv1.0.weight`, inplace-ABN γ stored raw.
    Miil,
    /// Neither marker key is present; the strict loader will report the differences.
    Unknown,
}

/// inplace-ABN scales by `|γ| + eps` (inplace_abn v1.0.11, `abs_weight = weight.abs() + eps`); a
/// plain BatchNorm reproduces it only if γ is replaced by that value.
const IABN_EPS: f32 = 1e-5;

/// Converts a MIIL-layout state dict to timm's layout exactly as timm's `checkpoint_filter_fn` does
/// (same renaming rules in the same order, `bn.weight := |γ| + 1e-5`); timm-layout dicts pass unchanged.
pub fn to_timm_layout(sd: StateDict) -> (StateDict, CheckpointLayout) {
    let layout = if sd.contains_key("body.conv1.conv.weight") {
        CheckpointLayout::Timm
    } else if sd.contains_key("body.conv1.0.weight") {
        CheckpointLayout::Miil
    } else {
        CheckpointLayout::Unknown
    };
    if layout != CheckpointLayout::Miil {
        return (sd, layout);
    }
    // The unescaped middle dots mirror timm's patterns; on TResNet keys they only ever meet a literal dot.
    let rules: [(Regex, &str); 6] = [
        (Regex::new(r"conv(\d+)\.0.0").unwrap(), "conv${1}.conv"),
        (Regex::new(r"conv(\d+)\.0.1").unwrap(), "conv${1}.bn"),
        (Regex::new(r"conv(\d+)\.0").unwrap(), "conv${1}.conv"),
        (Regex::new(r"conv(\d+)\.1").unwrap(), "conv${1}.bn"),
        (
            Regex::new(r"downsample\.(\d+)\.0").unwrap(),
            "downsample.${1}.conv",
        ),
        (
            Regex::new(r"downsample\.(\d+)\.1").unwrap(),
            "downsample.${1}.bn",
        ),
    ];
    let mut out = StateDict::new();
    for (key, tensor) in sd {
        let mut k = key;
        for (re, rep) in &rules {
            k = re.replace_all(&k, *rep).into_owned();
        }
        let tensor = if k.ends_with("bn.weight") {
            iabn_gamma_to_bn(tensor)
        } else {
            tensor
        };
        out.insert(k, tensor);
    }
    (out, layout)
}

fn iabn_gamma_to_bn(t: RawTensor) -> RawTensor {
    let map_f32 = |v: f32| v.abs() + IABN_EPS;
    let data: Vec<u8> = match t.dtype {
        DType::F32 => t
            .data
            .chunks_exact(4)
            .flat_map(|b| map_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
            .collect(),
        DType::F64 => t
            .data
            .chunks_exact(8)
            .flat_map(|b| {
                (f64::from_le_bytes(b.try_into().unwrap()).abs() + f64::from(IABN_EPS))
                    .to_le_bytes()
            })
            .collect(),
        DType::F16 => t
            .data
            .chunks_exact(2)
            .flat_map(|b| {
                half::f16::from_f32(map_f32(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
                    .to_le_bytes()
            })
            .collect(),
        DType::BF16 => t
            .data
            .chunks_exact(2)
            .flat_map(|b| {
                half::bf16::from_f32(map_f32(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
                    .to_le_bytes()
            })
            .collect(),
        // A non-float γ is nonsense; leave it for the loader's dtype check to report.
        _ => return t,
    };
    RawTensor { data, ..t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> RawTensor {
        RawTensor::from_f32(vec![v.len()], v)
    }

    #[test]
    fn renames_every_miil_pattern_and_converts_gamma() {
        let mut sd = StateDict::new();
        for k in [
            "body.conv1.0.weight",
            "body.conv1.1.weight",
            "body.conv1.1.running_var",
            "body.layer1.0.conv1.0.weight",
            "body.layer2.0.conv1.0.0.weight",
            "body.layer2.0.conv1.0.1.weight",
            "body.layer3.0.conv3.1.bias",
            "body.layer3.0.downsample.1.0.weight",
            "body.layer3.0.downsample.1.1.weight",
            "body.layer1.0.downsample.0.1.running_mean",
            "body.layer1.0.se.fc1.weight",
            "head.fc.weight",
        ] {
            sd.insert(k.to_string(), t(&[-2.0, 0.5]));
        }
        let (out, layout) = to_timm_layout(sd);
        assert_eq!(layout, CheckpointLayout::Miil);
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "body.conv1.bn.running_var",
                "body.conv1.bn.weight",
                "body.conv1.conv.weight",
                "body.layer1.0.conv1.conv.weight",
                "body.layer1.0.downsample.0.bn.running_mean",
                "body.layer1.0.se.fc1.weight",
                "body.layer2.0.conv1.bn.weight",
                "body.layer2.0.conv1.conv.weight",
                "body.layer3.0.conv3.bn.bias",
                "body.layer3.0.downsample.1.bn.weight",
                "body.layer3.0.downsample.1.conv.weight",
                "head.fc.weight",
            ]
        );
        let g = out["body.layer2.0.conv1.bn.weight"].to_f64_vec();
        assert_eq!(g, vec![(2.0f32 + 1e-5) as f64, (0.5f32 + 1e-5) as f64]);
        // Only γ changes: running stats, biases and conv weights keep their sign.
        assert_eq!(
            out["body.conv1.bn.running_var"].to_f64_vec(),
            vec![-2.0, 0.5]
        );
        assert_eq!(out["head.fc.weight"].to_f64_vec(), vec![-2.0, 0.5]);
    }

    #[test]
    fn timm_layout_passes_unchanged() {
        let mut sd = StateDict::new();
        sd.insert("body.conv1.conv.weight".into(), t(&[1.0]));
        sd.insert("body.conv1.bn.weight".into(), t(&[-1.0]));
        let (out, layout) = to_timm_layout(sd.clone());
        assert_eq!(layout, CheckpointLayout::Timm);
        assert_eq!(out, sd);
    }
}
