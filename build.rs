//! Build script. The CUDA kernels in `kernels/` are compiled here once the CUDA
//! backend lands; the default build needs no CUDA toolkit.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
}
