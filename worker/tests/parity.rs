//! Logit parity with timm for every variant, both checkpoint layouts and BN folding on and off: exactly
//! equal with BN kept, within 1% of sigma with BN folded.
//! Fixtures: ops/reference/gen_model_fixtures.py (seeded random-init timm models, input-sensitive).

mod common;

use std::path::Path;

use tch::Tensor;
use tresnet_common::checkpoint::CheckpointLayout;
use tresnet_common::npy::NpyF32;
use tresnet_worker::infer;
use tresnet_worker::model::{BuildOptions, ModelName, load_model};

fn run(
    model: &str,
    weights: &Path,
    input: &Tensor,
    opts: &BuildOptions,
) -> (NpyF32, CheckpointLayout) {
    let name: ModelName = model.parse().unwrap();
    let loaded = load_model(name, &name.config(), weights, opts).unwrap_or_else(|e| panic!("{e}"));
    // Exact equality with BN kept holds for the thread count the fixtures were made with.
    tch::set_num_threads(common::generator_threads());
    let y = infer::logits(&loaded.model, input, 8).unwrap();
    let shape = y.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
    (NpyF32 { shape, data }, loaded.layout)
}

fn assert_parity(case_name: &str, weights_file: &str, want_layout: CheckpointLayout) {
    let case = common::case(case_name);
    let input = infer::read_input(&case.dir.join("input.npy")).unwrap();
    let want = common::read(&case.dir.join("logits.npy"));
    for fold_bn in [false, true] {
        let opts = BuildOptions {
            fold_bn,
            ..BuildOptions::cpu_f32()
        };
        let (got, layout) = run(
            &case.model,
            &case.weights_dir.join(weights_file),
            &input,
            &opts,
        );
        assert_eq!(layout, want_layout);
        let (diff, same_argmax) = common::compare(&got, &want);
        let rel = diff / case.sigma;
        eprintln!(
            "{case_name} {weights_file} fold_bn={fold_bn}: max|dlogit|={diff:.3e} = {rel:.2e} sigma, argmax equal: {same_argmax}"
        );
        assert!(
            same_argmax,
            "{case_name} {weights_file} fold_bn={fold_bn}: argmax differs"
        );
        // With BN kept the graph is timm's op for op on the same libtorch and thread count (the
        // fixtures are generated on the machine that tests them; `run` sets the generator's thread
        // count), so the README promises bit-identical logits: any difference at all means an op
        // changed. Folding BN reassociates the arithmetic, so it gets the 1% of sigma bar.
        if !fold_bn {
            assert!(
                diff == 0.0,
                "{case_name} {weights_file} with BN kept: max|dlogit| {diff:.3e} is not 0 (the README \
                 promises bit-identical logits on CPU fp32)"
            );
        }
        assert!(
            rel <= common::TOLERANCE_IN_SIGMA,
            "{case_name} {weights_file} fold_bn={fold_bn}: max|dlogit| {diff:.3e} exceeds 1% of sigma {:.3}",
            case.sigma
        );
    }
}

#[test]
fn tresnet_m_224_timm_layout() {
    assert_parity("tresnet_m_224", "timm.pth", CheckpointLayout::Timm);
}

#[test]
fn tresnet_m_224_miil_layout_legacy_pickle() {
    assert_parity("tresnet_m_224", "miil.pth", CheckpointLayout::Miil);
}

#[test]
fn tresnet_m_224_safetensors() {
    assert_parity("tresnet_m_224", "timm.safetensors", CheckpointLayout::Timm);
}

#[test]
fn tresnet_m_448() {
    assert_parity("tresnet_m_448", "timm.pth", CheckpointLayout::Timm);
    assert_parity("tresnet_m_448", "miil.pth", CheckpointLayout::Miil);
}

#[test]
fn tresnet_l_224() {
    assert_parity("tresnet_l_224", "timm.pth", CheckpointLayout::Timm);
    assert_parity("tresnet_l_224", "miil.pth", CheckpointLayout::Miil);
}

#[test]
fn tresnet_xl_224() {
    assert_parity("tresnet_xl_224", "timm.pth", CheckpointLayout::Timm);
    assert_parity("tresnet_xl_224", "miil.pth", CheckpointLayout::Miil);
}

#[test]
fn tresnet_v2_l_224() {
    assert_parity("tresnet_v2_l_224", "timm.pth", CheckpointLayout::Timm);
    assert_parity("tresnet_v2_l_224", "miil.pth", CheckpointLayout::Miil);
}

#[test]
fn channels_last_matches_too() {
    let case = common::case("tresnet_m_224");
    let input = infer::read_input(&case.dir.join("input.npy")).unwrap();
    let want = common::read(&case.dir.join("logits.npy"));
    let opts = BuildOptions {
        channels_last: true,
        fold_bn: true,
        ..BuildOptions::cpu_f32()
    };
    let (got, _) = run(
        &case.model,
        &case.weights_dir.join("timm.pth"),
        &input,
        &opts,
    );
    let (diff, same_argmax) = common::compare(&got, &want);
    assert!(
        same_argmax && diff / case.sigma <= common::TOLERANCE_IN_SIGMA,
        "{diff}"
    );
}

/// The comparison must be able to fail: an input-path bug (RGB fed as BGR) has to blow the tolerance.
#[test]
fn channel_order_bug_is_detected() {
    let case = common::case("tresnet_m_224");
    let input = infer::read_input(&case.dir.join("input.npy"))
        .unwrap()
        .flip([1]);
    let want = common::read(&case.dir.join("logits.npy"));
    let (got, _) = run(
        &case.model,
        &case.weights_dir.join("timm.pth"),
        &input,
        &BuildOptions::cpu_f32(),
    );
    let (diff, _) = common::compare(&got, &want);
    assert!(
        diff / case.sigma > 20.0 * common::TOLERANCE_IN_SIGMA,
        "a BGR input moved logits by only {:.3} sigma: the fixture is blind",
        diff / case.sigma
    );
}

/// Batch-size independence: chunking must not change results beyond fp32 noise.
#[test]
fn chunked_batches_agree() {
    let case = common::case("tresnet_m_64");
    let name: ModelName = case.model.parse().unwrap();
    let loaded = load_model(
        name,
        &name.config(),
        &case.weights_dir.join("timm.pth"),
        &BuildOptions::cpu_f32(),
    )
    .unwrap();
    let input = infer::read_input(&case.dir.join("input.npy")).unwrap();
    let whole = infer::logits(&loaded.model, &input, 64).unwrap();
    let ones = infer::logits(&loaded.model, &input, 1).unwrap();
    let diff = (whole - ones).abs().max().double_value(&[]);
    assert!(diff / case.sigma <= common::TOLERANCE_IN_SIGMA, "{diff}");
}

/// `auto` layout: every candidate is measured, the choice and each candidate's timed passes are
/// recorded, and whichever wins stays within the parity bound (each candidate is checked, since the
/// winner depends on the machine). Forcing every choice measures nothing.
#[test]
fn measured_layout_is_recorded_and_within_parity() {
    use tresnet_common::job::MemoryFormat;
    use tresnet_worker::tuning::{LayoutSpace, TUNE_ROUNDS, TuneShape, load_fastest};
    let case = common::case("tresnet_m_64");
    let name: ModelName = case.model.parse().unwrap();
    let weights = case.weights_dir.join("timm.pth");
    let input = infer::read_input(&case.dir.join("input.npy")).unwrap();
    let want = common::read(&case.dir.join("logits.npy"));
    let shape = TuneShape {
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
        batch_size: 2,
        resolution: 64,
    };
    let open = LayoutSpace::new(true, true, MemoryFormat::Auto);
    let (loaded, choice) =
        load_fastest(name, &name.config(), &weights, &open, shape, None).unwrap();
    assert!(choice.measured);
    assert_eq!(choice.candidates.len(), 4);
    assert_eq!((choice.batch_size, choice.resolution), (2, 64));
    for c in &choice.candidates {
        // The budget only ever cuts rounds after the first.
        assert!((1..=TUNE_ROUNDS).contains(&c.pass_ms.len()), "{c:?}");
        assert!(c.pass_ms.iter().all(|&ms| ms > 0.0), "{c:?}");
    }
    let best = choice
        .candidates
        .iter()
        .min_by(|a, b| a.best_ms().total_cmp(&b.best_ms()))
        .unwrap();
    assert_eq!(best.layout, choice.chosen, "the fastest candidate is kept");
    let check = |model: &tresnet_worker::model::TResNet, what: &str| {
        let y = infer::logits(model, &input, 8).unwrap();
        let got = tresnet_common::npy::NpyF32 {
            shape: y.size().iter().map(|&d| d as usize).collect(),
            data: Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(),
        };
        let (diff, same_argmax) = common::compare(&got, &want);
        assert!(
            same_argmax && diff / case.sigma <= common::TOLERANCE_IN_SIGMA,
            "{what}: max|dlogit| {diff:.3e}"
        );
    };
    check(&loaded.model, "the measured choice");
    for l in open.candidates() {
        let opts = BuildOptions {
            fold_bn: l.fold_bn,
            channels_last: l.channels_last,
            ..BuildOptions::cpu_f32()
        };
        let m = load_model(name, &name.config(), &weights, &opts).unwrap();
        check(&m.model, &format!("candidate {l:?}"));
    }
    let forced = LayoutSpace::new(false, false, MemoryFormat::ChannelsLast);
    let (_, choice) = load_fastest(name, &name.config(), &weights, &forced, shape, None).unwrap();
    assert!(!choice.measured);
    assert!(choice.candidates.is_empty());
    assert!(!choice.chosen.fold_bn && choice.chosen.channels_last);
    assert_eq!(choice.seconds, 0.0);
}
