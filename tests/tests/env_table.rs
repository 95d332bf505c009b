//! The README's environment-variable table against the code: every variable the binaries read (clap
//! `env = "…"`, `std::env::var*("…")`, `*_ENV` constants) has a row, and every `TRESNET_` row is read
//! by the code or the ops scripts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

/// The quoted upper-case names right after each of `openers` in `text`.
fn names_after(text: &str, openers: &[&str], into: &mut BTreeSet<String>) {
    for opener in openers {
        for (i, _) in text.match_indices(opener) {
            let name: String = text[i + opener.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.len() > 1 && text[i + opener.len() + name.len()..].starts_with('"') {
                into.insert(name);
            }
        }
    }
}

/// What the binaries' code reads from the environment at run time.
fn read_by_code() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for krate in ["common/src", "coordinator/src", "worker/src"] {
        let mut rs = Vec::new();
        files(&root().join(krate), "rs", &mut rs);
        for f in rs {
            let text = std::fs::read_to_string(&f).unwrap();
            names_after(
                &text,
                &[
                    "env = \"",
                    "env::var(\"",
                    "env::var_os(\"",
                    "_ENV: &str = \"",
                ],
                &mut found,
            );
        }
    }
    found
}

/// The variables named in the first column of the README's table under "## Deploy".
fn readme_rows() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let deploy = &readme[readme.find("\n## Deploy\n").expect("a Deploy section")..];
    let deploy = &deploy[..deploy[1..].find("\n## ").unwrap()];
    let mut rows = BTreeSet::new();
    for line in deploy.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap();
        for part in first.split('`').skip(1).step_by(2) {
            rows.insert(part.to_string());
        }
    }
    rows
}

#[test]
fn every_variable_the_code_reads_has_a_readme_row() {
    let rows = readme_rows();
    let missing: Vec<_> = read_by_code()
        .into_iter()
        .filter(|v| !rows.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "README's Deploy table lacks {missing:?}"
    );
}

#[test]
fn every_tresnet_variable_in_the_readme_is_read_somewhere() {
    let code = read_by_code();
    let mut scripts = String::new();
    let mut sh = Vec::new();
    files(&root().join("ops"), "sh", &mut sh);
    files(&root().join("ops"), "sbatch", &mut sh);
    sh.push(root().join("tests/src/lib.rs"));
    for f in sh {
        scripts += &std::fs::read_to_string(f).unwrap();
    }
    for v in readme_rows().iter().filter(|v| v.starts_with("TRESNET_")) {
        assert!(
            code.contains(v) || scripts.contains(v.as_str()),
            "README names {v}, which nothing reads"
        );
    }
}
