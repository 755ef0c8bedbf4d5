//! Build script: the CUDA kernels in src/cuda/kernels.
//!
//! * Always: the CPU emulator (src/cuda/emu) compiled with the C++ compiler, running the
//!   same kernel source with every CUDA thread as a fiber, so `cargo test` checks the kernels
//!   against their CPU references on machines without a GPU (src/cuda/emu.rs).
//! * With `--features cuda`: every kernel compiled to PTX by nvcc (found through CUDA_HOME,
//!   CUDA_PATH or PATH; ../shared/gpu/build-cuda.sh sets them up) for compute capability
//!   CUDA_COMPUTE_CAP (default 90), embedded in the binary and loaded by the driver.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &[&str] = &["attention", "token_ce", "optim", "norm", "swiglu", "rope"];

fn main() {
    let dir = Path::new("src/cuda");
    println!("cargo:rerun-if-changed=src/cuda/kernels");
    println!("cargo:rerun-if-changed=src/cuda/emu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(false)
        .file(dir.join("emu/emu.cpp"))
        .file(dir.join("emu/harness.cpp"))
        .compile("rho_cuda_emu");

    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        let nvcc = nvcc();
        let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
        for k in KERNELS {
            let src = dir.join(format!("kernels/{k}.cu"));
            let ptx = out.join(format!("{k}.ptx"));
            let st = Command::new(&nvcc)
                .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17", "-lineinfo"])
                .arg(format!("--gpu-architecture=compute_{cap}"))
                .arg(&src)
                .arg("-o")
                .arg(&ptx)
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e} (set CUDA_HOME, or build with ../shared/gpu/build-cuda.sh)", nvcc.display()));
            assert!(st.success(), "nvcc failed on {}", src.display());
        }
    }
}

fn nvcc() -> PathBuf {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = env::var_os(var) {
            let p = PathBuf::from(h).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}
