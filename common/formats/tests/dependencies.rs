//! The promise of this crate: parsers build without the network stack. `cargo tree` lists what
//! tresnet-formats compiles (normal dependencies, offline, from Cargo.lock), and none of the async
//! runtime, RPC, HTTP, TLS, object store or metrics crates may be among them; the fuzz crate may pull
//! tresnet-common (protocol target) and tresnet-worker (image targets) only behind features, so that
//! the parser targets stay as light as this crate.

use std::path::Path;
use std::process::Command;

/// Crates that mean the network stack (or the async runtime it runs on) came in.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "tonic",
    "axum",
    "hyper",
    "rustls",
    "reqwest",
    "object_store",
    "prometheus-client",
    "prost",
    "tresnet-common",
];

#[test]
fn the_parsers_build_without_the_network_stack() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tresnet-formats",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"tresnet-formats"), "{stdout}");
    assert!(
        crates.contains(&"zip"),
        "cargo tree lists the dependencies: {stdout}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(
        found.is_empty(),
        "tresnet-formats depends on {found:?}; parsers must build without the network stack:\n{stdout}"
    );
}

#[test]
fn the_fuzz_crate_needs_the_network_stack_only_behind_features() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/Cargo.toml"),
    )
    .unwrap();
    for line in manifest.lines() {
        let name = line.split('=').next().unwrap_or("").trim();
        if name == "tresnet-common" || name == "tresnet-worker" {
            assert!(
                line.contains("optional = true"),
                "fuzz/Cargo.toml: {name} must be optional (behind a feature): {line}"
            );
        }
    }
    assert!(manifest.contains("tresnet-formats = { path = \"../common/formats\" }"));
}
