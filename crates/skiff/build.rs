//! Links `skiff` as a position-dependent executable. The same binary is re-executed as the
//! per-container shim, and a PIE this size carries ~70k relative relocations that the loader
//! writes into private pages of every process: about 1.6 MB of each shim's memory. Without PIE
//! those are resolved at link time. (ASLR still randomizes the stack, heap and libraries.)
fn main() {
    println!("cargo:rustc-link-arg-bin=skiff=-no-pie");
}
