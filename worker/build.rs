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
}
