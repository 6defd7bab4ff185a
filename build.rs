//! Build script: the kernel sources in `kernels/`, twice over.
//!
//! - Always: every `.cu` file is compiled as host C++20 against
//!   `kernels/emu/emu.h` (the host emulation) with the `cc` crate and linked
//!   into the crate, so `cargo test` on a machine without CUDA runs the real
//!   kernel sources. Needs only a C++20 compiler.
//! - With the `cuda` feature: nvcc compiles each `.cu` file to PTX for
//!   `compute_90` and to a cubin for `sm_90`; both are embedded in the crate
//!   (see `src/op/kernels/cuda.rs`). nvcc is taken from `$NVCC`, else from
//!   `.cache/nvcc` (where `scripts/install-nvcc.sh` puts it), else from `PATH`.
//!   The `-Xptxas -v` report of each kernel goes to `$OUT_DIR/ptxas.txt`, and
//!   is printed as build warnings when `LWPF_PTXAS_VERBOSE` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel files compiled for both targets: `kernels/*.cu` and
/// `kernels/selftest/*.cu`, in a stable order.
fn kernel_sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["kernels", "kernels/selftest"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "cu") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn build_emulation(root: &Path, sources: &[PathBuf]) {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .define("LWPF_EMU", None)
        // The kernels say where they want an fma; the host compiler must not
        // add any, or emulated scores would round differently.
        .flag("-ffp-contract=off")
        .flag_if_supported("-pthread")
        .include(root.join("kernels"));
    // `.cu` is not a C++ extension to g++: name the language before the files.
    b.flag("-x").flag("c++");
    for s in sources {
        b.file(s);
    }
    b.file(root.join("kernels/emu/launch.cpp"));
    b.compile("lwpf_kernels_emu");
}

/// Where nvcc is, or why it is not.
fn find_nvcc(root: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(format!("NVCC={} does not exist", p.display()))
        };
    }
    let cached = root.join(".cache/nvcc/nvidia/cu13/bin/nvcc");
    if cached.exists() {
        return Ok(cached);
    }
    if Command::new("nvcc").arg("--version").output().is_ok() {
        return Ok(PathBuf::from("nvcc"));
    }
    Err("nvcc was not found (not in $NVCC, .cache/nvcc or PATH)".into())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("could not run nvcc for {what}: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if out.status.success() { Ok(text) } else { Err(format!("nvcc failed on {what}:\n{text}")) }
}

fn build_cuda(root: &Path, sources: &[PathBuf], out_dir: &Path) -> Result<(), String> {
    let nvcc = find_nvcc(root)?;
    let mut modules = String::from("&[\n");
    let mut ptxas = String::new();
    for src in sources {
        let name =
            src.file_stem().and_then(|s| s.to_str()).ok_or("kernel file name is not UTF-8")?;
        let ptx = out_dir.join(format!("{name}.ptx"));
        let cubin = out_dir.join(format!("{name}.cubin"));
        let common = |c: &mut Command| {
            c.arg("-O3").arg("-std=c++17").arg("-lineinfo").arg("-I").arg(root.join("kernels"));
        };
        let mut c = Command::new(&nvcc);
        common(&mut c);
        c.arg("-ptx")
            .arg("-gencode")
            .arg("arch=compute_90,code=compute_90")
            .arg("-o")
            .arg(&ptx)
            .arg(src);
        run(&mut c, name)?;
        let mut c = Command::new(&nvcc);
        common(&mut c);
        c.arg("-cubin")
            .arg("-gencode")
            .arg("arch=compute_90,code=sm_90")
            .arg("-Xptxas")
            .arg("-v")
            .arg("-o")
            .arg(&cubin)
            .arg(src);
        ptxas += &run(&mut c, name)?;
        modules += &format!(
            "    KernelModule {{ name: {name:?}, ptx: include_str!({:?}), \
             cubin: include_bytes!({:?}) }},\n",
            ptx.display().to_string(),
            cubin.display().to_string(),
        );
    }
    modules += "]\n";
    std::fs::write(out_dir.join("cuda_modules.rs"), modules).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("ptxas.txt"), &ptxas).map_err(|e| e.to_string())?;
    if std::env::var_os("LWPF_PTXAS_VERBOSE").is_some() {
        for line in ptxas.lines().filter(|l| l.contains("Used") || l.contains("spill")) {
            println!("cargo::warning=ptxas: {line}");
        }
    }
    Ok(())
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=LWPF_PTXAS_VERBOSE");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let sources = kernel_sources(&root);

    build_emulation(&root, &sources);

    if std::env::var_os("CARGO_FEATURE_CUDA").is_some()
        && let Err(e) = build_cuda(&root, &sources, &out_dir)
    {
        eprintln!(
            "error: the `cuda` feature needs nvcc 13.0 to compile kernels/*.cu.\n\
             {e}\n\
             Install the pinned compiler (about 270 MB, from PyPI) with\n    \
             scripts/install-nvcc.sh\n\
             which puts it in .cache/nvcc, where this build finds it; or set\n\
             NVCC=/path/to/nvcc. Without the `cuda` feature no nvcc is needed."
        );
        std::process::exit(1);
    }
}
