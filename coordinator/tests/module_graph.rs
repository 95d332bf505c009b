//! The coordinator's modules form no import circle: each `crate::x` reference in a module's non-test
//! code is an edge of a graph read from coordinator/src, and the graph must be acyclic. A circle
//! (report ↔ html, service ↔ metrics were two) means neither module can be read, tested or changed
//! without the other; this test names the circle when one comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module a source file belongs to: `src/x.rs` and `src/x/...` are module `x`; the crate roots
/// (lib.rs, main.rs) are no module of their own.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    let name = name.strip_suffix(".rs").unwrap_or(name);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without comments (doc links name modules without depending on them) and
/// without `#[cfg(test)]` items (a test may build its fixtures from a module that depends on the one
/// under test; that is no circle of the product).
fn product_code(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut depth = 0i64;
    let mut opened = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        if !skipping && code.trim() == "#[cfg(test)]" {
            (skipping, depth, opened) = (true, 0, false);
            continue;
        }
        if skipping {
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            // The item ends where its braces close (or at its `;` when it has none, as in `mod x;`).
            if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The modules `code` names through `crate::x` paths, `use crate::{x, y::z}` groups included.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // `tresnet_crate::` or similar would not be this crate.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        out.insert(ident_at(&group[i..]).to_string());
                        start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.insert(ident_at(rest).to_string());
        }
    }
    out
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(
            referenced(&product_code(&text))
                .into_iter()
                .filter(|m| *m != module),
        );
    }
    graph
}

/// A circle of `graph` as `a -> b -> a`, if it has one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == m).unwrap();
                let mut circle = path[from..].to_vec();
                circle.push(m.to_string());
                return Some(circle);
            }
            None => {}
        }
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn coordinator_modules_form_no_import_circle() {
    let graph = module_graph();
    // The reader sees the edges it must: if parsing broke, an empty graph would pass vacuously.
    for (from, to) in [("report", "html"), ("html", "run_dir"), ("run", "service")] {
        assert!(
            graph.get(from).is_some_and(|d| d.contains(to)),
            "the module graph lacks {from} -> {to}: {graph:#?}"
        );
    }
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "coordinator modules import each other in a circle: {}",
            circle.join(" -> ")
        );
    }
}

/// The checker itself finds a circle, through a `use crate::{..}` group and past comments and tests.
#[test]
fn the_checker_sees_circles_and_ignores_comments_and_tests() {
    let a = "use crate::{b::X, c};\n// crate::d\n#[cfg(test)]\nmod tests {\n    use crate::e;\n}\n";
    assert_eq!(
        referenced(&product_code(a)),
        ["b", "c"].map(String::from).into()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_circle(&graph).unwrap(),
        ["a", "b", "c", "a"].map(String::from).to_vec()
    );
}
