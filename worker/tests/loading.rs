//! Strict checkpoint loading: every mismatch listed in one error naming the file, heads of any size.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use tresnet_common::checkpoint::{DType, RawTensor, StateDict, load_state_dict};
use tresnet_worker::infer;
use tresnet_worker::model::{BuildOptions, LoadError, ModelName, load_model};

fn m_state_dict() -> StateDict {
    let case = common::case("tresnet_m_64");
    load_state_dict(&case.weights_dir.join("timm.pth")).unwrap()
}

fn write_safetensors(path: &Path, sd: &StateDict) {
    let views: BTreeMap<String, safetensors::tensor::TensorView<'_>> = sd
        .iter()
        .map(|(k, t)| {
            let dtype = match t.dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::I64 => safetensors::Dtype::I64,
                other => panic!("unexpected dtype {other:?}"),
            };
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load_err(sd: &StateDict) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    write_safetensors(&path, sd);
    let name = ModelName::TresnetM;
    let err = load_model(name, &name.config(), &path, &BuildOptions::cpu_f32()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("edited.safetensors"),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_all_listed() {
    let mut sd = m_state_dict();
    sd.remove("body.layer2.1.se.fc1.bias").unwrap();
    sd.insert(
        "body.layer9.weight".into(),
        RawTensor::from_f32(vec![2], &[1.0, 2.0]),
    );
    sd.insert(
        "body.layer1.0.conv1.bn.running_var".into(),
        RawTensor::from_f32(vec![3], &[1.0, 1.0, 1.0]),
    );
    let msg = load_err(&sd);
    assert!(
        msg.contains("1 missing, 1 unexpected, 1 wrong shape"),
        "{msg}"
    );
    assert!(msg.contains("missing: body.layer2.1.se.fc1.bias"), "{msg}");
    assert!(msg.contains("unexpected: body.layer9.weight"), "{msg}");
    assert!(
        msg.contains("wrong shape: body.layer1.0.conv1.bn.running_var"),
        "{msg}"
    );
}

#[test]
fn num_batches_tracked_is_ignored_both_ways() {
    let mut sd = m_state_dict();
    assert!(sd.keys().any(|k| k.ends_with("num_batches_tracked")));
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.safetensors");
    write_safetensors(&with, &sd);
    sd.retain(|k, _| !k.ends_with("num_batches_tracked"));
    let without = dir.path().join("without.safetensors");
    write_safetensors(&without, &sd);
    let name = ModelName::TresnetM;
    for p in [with, without] {
        load_model(name, &name.config(), &p, &BuildOptions::cpu_f32()).unwrap();
    }
}

#[test]
fn wrong_variant_is_refused_with_the_differences() {
    let case = common::case("tresnet_m_64");
    let name = ModelName::TresnetL;
    let err = load_model(
        name,
        &name.config(),
        &case.weights_dir.join("timm.pth"),
        &BuildOptions::cpu_f32(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("timm.pth"), "{msg}");
    assert!(
        matches!(err, LoadError::Classes { .. } | LoadError::Mismatch { .. }),
        "{msg}"
    );
}

#[test]
fn truncated_and_non_checkpoint_files_are_clear_errors() {
    let case = common::case("tresnet_m_64");
    let bytes = std::fs::read(case.weights_dir.join("timm.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = ModelName::TresnetM;
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_model(name, &name.config(), &cut, &BuildOptions::cpu_f32())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cut.pth"), "{msg}");
    let junk = dir.path().join("notes.pth");
    std::fs::write(&junk, b"these are not weights").unwrap();
    let msg = load_model(name, &name.config(), &junk, &BuildOptions::cpu_f32())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("notes.pth") && msg.contains("not a checkpoint"),
        "{msg}"
    );
    let absent = dir.path().join("absent.pth");
    let msg = load_model(name, &name.config(), &absent, &BuildOptions::cpu_f32())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.pth"), "{msg}");
}

/// Transfer heads: the class count comes from the checkpoint, and a 10-class head computes exactly
/// the first 10 logits of the 1000-class head it was cut from.
#[test]
fn class_count_is_inferred_from_the_checkpoint() {
    let case = common::case("tresnet_m_64");
    let mut sd = m_state_dict();
    let w = sd["head.fc.weight"].clone();
    let features = w.shape[1];
    let classes = 10;
    sd.insert(
        "head.fc.weight".into(),
        RawTensor {
            dtype: w.dtype,
            shape: vec![classes, features],
            data: w.data[..classes * features * 4].to_vec(),
        },
    );
    let b = sd["head.fc.bias"].clone();
    sd.insert(
        "head.fc.bias".into(),
        RawTensor {
            dtype: b.dtype,
            shape: vec![classes],
            data: b.data[..classes * 4].to_vec(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten.safetensors");
    write_safetensors(&path, &sd);
    let name = ModelName::TresnetM;
    let loaded = load_model(name, &name.config(), &path, &BuildOptions::cpu_f32()).unwrap();
    assert_eq!(loaded.num_classes, 10);
    let input = infer::read_input(&case.dir.join("input.npy")).unwrap();
    let got = infer::logits(&loaded.model, &input, 8).unwrap();
    let want = common::read(&case.dir.join("logits.npy"));
    let n = want.shape[0];
    for i in 0..n {
        for c in 0..classes {
            let g = got.double_value(&[i as i64, c as i64]);
            let w = f64::from(want.data[i * 1000 + c]);
            assert!(
                (g - w).abs() <= common::TOLERANCE_IN_SIGMA * case.sigma,
                "image {i} class {c}: {g} vs {w}"
            );
        }
    }
}

/// NaN or infinite weights are refused at load naming the tensor (and how many others): evaluated, they
/// would rank NaN first and report a made-up accuracy.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let mut sd = m_state_dict();
    let bias = sd.get_mut("head.fc.bias").unwrap();
    let mut values = vec![0.0f32; bias.numel()];
    values[5] = f32::NAN;
    *bias = RawTensor::from_f32(bias.shape.clone(), &values);
    let w = sd.get_mut("body.layer1.0.conv1.conv.weight").unwrap();
    let values = vec![f32::INFINITY; w.numel()];
    *w = RawTensor::from_f32(w.shape.clone(), &values);
    let msg = load_err(&sd);
    assert!(
        msg.contains("tensor body.layer1.0.conv1.conv.weight holds 0 NaN and")
            && msg.contains("(and 1 more such tensors)"),
        "{msg}"
    );
}
