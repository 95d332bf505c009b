//! TLS on the coordinator's gRPC endpoint: workers that trust its CA complete a run (local workers get
//! the CA from the coordinator), workers without it or with another CA, and plaintext workers, are
//! refused with errors that say why, and bad certificate or key files are named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tresnet_tests::{Watched, coordinator_run, summary, worker_command};

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
    other_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params, key)
}

/// A CA, a server certificate it signs for localhost and 127.0.0.1, and an unrelated CA.
fn make_pki(dir: &Path) -> Pki {
    let (ca_params, ca_key) = ca("tresnet test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (other_params, other_key) = ca("some other CA");
    let other = other_params.self_signed(&other_key).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        other_ca: dir.join("other-ca.pem"),
        other_key: dir.join("other-ca.key"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    std::fs::write(&pki.other_ca, other.pem()).unwrap();
    std::fs::write(&pki.other_key, other_key.serialize_pem()).unwrap();
    pki
}

fn tls_args<'a>(cmd: &'a mut Command, pki: &Pki) -> &'a mut Command {
    cmd.arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
}

fn worker(url: &str, extra: &[&str]) -> Output {
    worker_command(url)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn failed_with(out: &Output) -> String {
    assert!(!out.status.success(), "the worker should have been refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn local_workers_get_the_ca_and_the_https_url() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let run = dir.path().join("run");
    let mut cmd = coordinator_run(&run, &["--local-workers", "2", "--shard-size", "6"]);
    tls_args(&mut cmd, &pki).arg("--tls-ca").arg(&pki.ca);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&run);
    assert_eq!(s["samples"], tresnet_tests::sample_dataset_size(), "{s}");
    assert_eq!(s["bad_samples"], 0);
}

#[test]
fn remote_workers_need_https_and_the_right_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let run = dir.path().join("run");
    let mut cmd = coordinator_run(
        &run,
        &[
            "--local-workers",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--shard-size",
            "6",
        ],
    );
    tls_args(&mut cmd, &pki);
    let mut coord = Watched::spawn(cmd, "coordinator");
    let line = coord.wait_for("coordinator listening on ");
    let addr = line.split(';').next().unwrap().trim().to_string();
    assert!(line.contains(&format!("https://{addr}")), "{line}");

    // Plaintext against the TLS endpoint: no gRPC answer, and the error says what to try.
    let e = failed_with(&worker(&format!("http://{addr}"), &[]));
    assert!(e.contains("https://") && e.contains("--tls-ca"), "{e}");
    // Another CA: the server's certificate does not verify.
    let other = pki.other_ca.display().to_string();
    let e = failed_with(&worker(&format!("https://{addr}"), &["--tls-ca", &other]));
    assert!(
        e.contains("certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    // No CA: the system's roots do not know the test CA either.
    let e = failed_with(&worker(&format!("https://{addr}"), &[]));
    assert!(
        e.contains("certificate") || e.contains("native certs"),
        "{e}"
    );
    // The right CA but a name the certificate does not carry.
    let ca = pki.ca.display().to_string();
    let e = failed_with(&worker(
        &format!("https://{addr}"),
        &["--tls-ca", &ca, "--tls-domain", "coordinator.example"],
    ));
    assert!(
        e.contains("certificate not valid for name \"coordinator.example\""),
        "{e}"
    );

    // The right CA: this worker alone does the whole job, so the run completing with a whole report
    // shows it got through. (Its own exit status is not checked: a remote worker that polls after the
    // coordinator has exited finds no server.)
    let mut ok = worker_command(&format!("https://{addr}"))
        .args(["--tls-ca", &ca])
        .spawn()
        .unwrap();
    assert!(coord.child.wait().unwrap().success());
    let _ = ok.wait();
    let s = summary(&run);
    assert_eq!(s["samples"], tresnet_tests::sample_dataset_size(), "{s}");
    assert_eq!(s["failed_samples"], 0);
}

#[test]
fn bad_certificate_and_key_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let run = dir.path().join("run");
    let coordinator_error = |cert: &Path, key: &Path| {
        let mut cmd = coordinator_run(&run, &["--local-workers", "1"]);
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.pem");
    let e = coordinator_error(&missing, &pki.key);
    assert!(
        e.contains("cannot read TLS certificate") && e.contains("missing.pem"),
        "{e}"
    );
    let e = coordinator_error(&pki.cert, &missing);
    assert!(
        e.contains("cannot read TLS key") && e.contains("missing.pem"),
        "{e}"
    );
    // A certificate where the key should be.
    let e = coordinator_error(&pki.cert, &pki.cert);
    assert!(
        e.contains("holds no PEM PRIVATE KEY") && e.contains("server.pem"),
        "{e}"
    );
    // A key that is not the certificate's.
    let e = coordinator_error(&pki.cert, &pki.other_key);
    assert!(
        e.contains("cannot be used together") && e.contains("other-ca.key"),
        "{e}"
    );
    assert!(
        !run.join("job.json").exists(),
        "nothing should have started"
    );
    // The worker names its CA file too, and refuses --tls-ca with a plaintext URL.
    let e = failed_with(&worker(
        "https://127.0.0.1:1",
        &["--tls-ca", &missing.display().to_string()],
    ));
    assert!(
        e.contains("cannot read TLS CA") && e.contains("missing.pem"),
        "{e}"
    );
    let e = failed_with(&worker(
        "http://127.0.0.1:1",
        &["--tls-ca", &pki.ca.display().to_string()],
    ));
    assert!(e.contains("not an https:// URL"), "{e}");
}
