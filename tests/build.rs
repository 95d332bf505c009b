//! Makes the test binaries find libtorch at run time without LD_LIBRARY_PATH: in a workspace build they
//! link it through the worker (see Cargo.toml), and torch-sys gives no rpath to dependents.

fn main() {
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
