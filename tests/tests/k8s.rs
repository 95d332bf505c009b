//! ops/k8s, validated offline: every overlay renders (`kubectl kustomize`), every rendered object passes
//! `kubernetes-validate --strict`, and every container's command line parses with the binaries' own
//! clap parsers (a renamed flag fails here, not on a cluster); ports, probes, scrape annotations, the
//! grace period and the sweep ConfigMap agree with the flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Parser;
use serde_json::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/k8s")
}

/// The base and every overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![k8s_dir().join("base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(k8s_dir().join("overlays"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    overlays.sort();
    assert!(overlays.len() >= 3, "{overlays:?}");
    dirs.extend(overlays);
    dirs
}

fn kubectl_present() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: kubectl is not installed, so ops/k8s cannot be rendered");
    }
    ok
}

/// `kubernetes-validate` from ops/k8s_tools.sh (which ops/test.sh sources).
fn validator() -> PathBuf {
    let p = std::env::var_os("TRESNET_KUBERNETES_VALIDATE").map(PathBuf::from).expect(
        "TRESNET_KUBERNETES_VALIDATE is not set: run the tests through ops/test.sh (source ops/k8s_tools.sh)",
    );
    assert!(
        p.exists(),
        "{} is missing; rerun ops/k8s_tools.sh",
        p.display()
    );
    p
}

/// `kubectl kustomize dir`: the rendered YAML.
fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered objects as JSON, through PyYAML in the validator's venv.
fn objects(yaml: &str) -> Vec<Value> {
    let python = validator().with_file_name("python");
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "yaml to json failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pod_spec(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The value of `--name=value` (the manifests spell flags that way) in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_overlay_renders_and_validates_strictly() {
    if !kubectl_present() {
        return;
    }
    let validate = validator();
    let dir = tempfile::tempdir().unwrap();
    for k in kustomizations() {
        let name = k.file_name().unwrap().to_string_lossy().into_owned();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, render(&k)).unwrap();
        let out = Command::new(&validate)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}");
        assert!(
            !text.contains("ERROR") && !text.contains("WARN"),
            "{name}: {text}"
        );
    }
}

#[test]
fn container_command_lines_parse_with_the_binaries_own_parsers() {
    if !kubectl_present() {
        return;
    }
    for k in kustomizations() {
        let name = k.file_name().unwrap().to_string_lossy().into_owned();
        let objs = objects(&render(&k));
        let jobs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Job").collect();
        let (mut coordinators, mut workers) = (0, 0);
        for job in &jobs {
            for c in pod_spec(job)["containers"].as_array().unwrap() {
                let command = strs(&c["command"]);
                let args = strs(&c["args"]);
                let argv: Vec<String> = command.iter().chain(&args).cloned().collect();
                match command.first().map(String::as_str) {
                    Some("tresnet-coordinator") => {
                        coordinators += 1;
                        check_coordinator(&name, &k, job, c, &argv);
                    }
                    Some("tresnet-worker") => {
                        workers += 1;
                        check_worker(&name, job, c, &argv);
                    }
                    other => panic!("{name}: unknown container command {other:?}"),
                }
            }
        }
        assert_eq!((coordinators, workers), (1, 1), "{name}");
        // Workers reach the coordinator through the Service, on the port it listens on.
        let service = objs.iter().find(|o| o["kind"] == "Service").unwrap();
        let grpc = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .unwrap();
        let worker_env = &pod_spec(
            jobs.iter()
                .find(|j| j["metadata"]["name"] == "tresnet-workers")
                .unwrap(),
        )["containers"][0]["env"];
        let url = worker_env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TRESNET_COORDINATOR")
            .unwrap()["value"]
            .as_str()
            .unwrap();
        let svc = service["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            url,
            format!("http://{svc}:{}", grpc["port"]),
            "{name}: workers' coordinator URL"
        );
    }
}

/// The env var names the containers set must be ones the binaries read.
fn check_env(name: &str, c: &Value) {
    for e in c["env"].as_array().into_iter().flatten() {
        let var = e["name"].as_str().unwrap();
        assert!(
            [
                tresnet_common::protocol::auth::TOKEN_ENV,
                "TRESNET_COORDINATOR",
                "POD_NAME"
            ]
            .contains(&var),
            "{name}: env {var} is read by neither binary"
        );
    }
}

/// Probes on /healthz and /readyz, and the scrape annotation, on the port `metrics_listen` binds.
fn check_metrics(name: &str, job: &Value, c: &Value, metrics_listen: &str) {
    let port = port_of(metrics_listen);
    let named = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap_or_else(|| panic!("{name}: no metrics port"));
    assert_eq!(named["containerPort"], port, "{name}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{name}: {probe}");
    }
    let ann = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true", "{name}");
    assert_eq!(ann["prometheus.io/port"], port.to_string(), "{name}");
    assert_eq!(ann["prometheus.io/path"], "/metrics", "{name}");
}

fn check_coordinator(name: &str, dir: &Path, job: &Value, c: &Value, argv: &[String]) {
    use tresnet_coordinator::cli::{Cli, Command as Sub};
    check_env(name, c);
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {argv:?}: {e}"));
    // The settings that matter to the pod: from the flags (run) or the sweep's [run] table.
    let (listen, metrics, drain_ms) = match cli.command {
        Sub::Run(args) => {
            let cfg = args
                .into_config()
                .unwrap_or_else(|e| panic!("{name}: {argv:?}: {e:#}"));
            (
                cfg.listen,
                cfg.metrics_listen,
                cfg.drain_timeout.as_millis() as u64,
            )
        }
        Sub::Sweep(args) => {
            // The TOML is the ConfigMap's, mounted where the argument points.
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| args.file.starts_with(m["mountPath"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{name}: {} is on no mount", args.file.display()));
            let volume = pod_spec(job)["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            assert!(
                volume["configMap"]["name"].is_string(),
                "{name}: not a ConfigMap"
            );
            let toml = dir.join(args.file.file_name().unwrap());
            let sweep = tresnet_coordinator::sweep::SweepFile::read(&toml)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!sweep.cells(dir).unwrap().is_empty(), "{name}");
            let run: toml::Table = toml::from_str(&std::fs::read_to_string(&toml).unwrap())
                .map(|t: toml::Table| t["run"].as_table().unwrap().clone())
                .unwrap();
            let s = |k: &str| run.get(k).and_then(|v| v.as_str()).map(str::to_string);
            (
                s("listen").map(|a| a.parse().unwrap()),
                s("metrics-listen").map(|a| a.parse().unwrap()),
                run.get("drain-timeout-ms")
                    .and_then(|v| v.as_integer())
                    .map_or(15_000, |v| v as u64),
            )
        }
        other => panic!("{name}: the coordinator runs {other:?}"),
    };
    let listen = listen.unwrap_or_else(|| panic!("{name}: the coordinator does not --listen"));
    let grpc = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(grpc["containerPort"], u64::from(listen.port()), "{name}");
    assert!(
        listen.ip().is_unspecified(),
        "{name}: {listen} is unreachable from other pods"
    );
    check_metrics(
        name,
        job,
        c,
        &metrics
            .unwrap_or_else(|| panic!("{name}: no --metrics-listen"))
            .to_string(),
    );
    // The grace period holds the drain, the journal writes and workers hearing the end (10 s).
    let grace = pod_spec(job)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace >= drain_ms / 1000 + 15,
        "{name}: terminationGracePeriodSeconds {grace} is too short for a {drain_ms} ms drain"
    );
}

fn check_worker(name: &str, job: &Value, c: &Value, argv: &[String]) {
    check_env(name, c);
    // The worker's own parser, in its binary: `--check-args` parses, prints and exits.
    let out = Command::new(tresnet_tests::bin("tresnet-worker"))
        .args(&argv[1..])
        .arg("--check-args")
        .env_remove("TRESNET_COORDINATOR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = &argv[1..];
    let metrics =
        flag(args, "metrics-listen").unwrap_or_else(|| panic!("{name}: no --metrics-listen"));
    check_metrics(name, job, c, metrics);
    // One device per requested GPU, and decode threads matching the CPU request.
    let gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        .as_u64()
        .unwrap_or(0);
    let devices = flag(args, "devices").unwrap_or("cpu").split(',').count() as u64;
    assert_eq!(devices, gpus.max(1), "{name}: --devices vs nvidia.com/gpu");
    assert_eq!(
        flag(args, "decode-threads"),
        c["resources"]["requests"]["cpu"].as_str(),
        "{name}: --decode-threads vs the CPU request"
    );
    assert_eq!(job["spec"]["completionMode"], "Indexed", "{name}");
}
