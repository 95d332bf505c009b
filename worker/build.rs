//! Makes the worker's binaries and tests find libtorch at run time without LD_LIBRARY_PATH.

fn main() {
    // torch-sys only passes its rpath to the C++ shim it compiles, where it has no effect, so the final
    // link needs its own. It points at the pip torch's lib/ directory found at build time.
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    // rustc links with --as-needed, which drops libtorch.so/libtorch_cuda.so because no symbol is
    // referenced directly; without them libtorch cannot register its CUDA backend (tch-rs #980).
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // The version of the libtorch being linked, reported by workers at registration (torch-sys has no
    // runtime call for it). Read, never assumed: when it cannot be read the worker says "unknown".
    if let Some(version) = std::env::var_os("DEP_TCH_LIBTORCH_LIB")
        .and_then(|lib| libtorch_version(std::path::Path::new(&lib)))
    {
        println!("cargo:rustc-env=TRESNET_LIBTORCH_VERSION={version}");
    }
}

/// `lib/` is `torch/lib` of a pip install (next to `torch/version.py`) or `libtorch/lib` of a
/// libtorch download (next to `libtorch/build-version`).
fn libtorch_version(lib: &std::path::Path) -> Option<String> {
    let root = lib.parent()?;
    let version_py = root.join("version.py");
    let build_version = root.join("build-version");
    println!("cargo:rerun-if-changed={}", version_py.display());
    println!("cargo:rerun-if-changed={}", build_version.display());
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        // `__version__ = '2.11.0+cu130'`
        return text.lines().find_map(|l| {
            let v = l.strip_prefix("__version__")?.trim_start();
            let v = v.strip_prefix('=')?.trim();
            let v = v.trim_matches(|c| c == '\'' || c == '"');
            (!v.is_empty()).then(|| v.to_string())
        });
    }
    let v = std::fs::read_to_string(&build_version).ok()?;
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}
