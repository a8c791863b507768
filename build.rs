//! Compiles every `cuda/*.cu` with nvcc into one fatbin (sm_80 and sm_90a cubins plus compute_80
//! PTX) and one compute_80 PTX image (the forced-Ampere path), both embedded by `src/kernels.rs`.
//! The ptxas resource report is saved as `ptxas-report.txt` in OUT_DIR and in the target folder.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compile flags that shape the code (part of the kernels hash).
const FLAGS: &str = "-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr sm_80 sm_90a compute_80";

const SETUP_HINT: &str = "run `scripts/setup-nvcc.sh` (installs CUDA 13.0's nvcc from PyPI into .toolchain/), \
or set NVCC to an nvcc 13.0 binary";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cuda = root.join("cuda");
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");

    let mut sources: Vec<PathBuf> = fs::read_dir(&cuda)
        .expect("cuda/ folder missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for entry in fs::read_dir(&cuda).unwrap().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    // One translation unit that includes every kernel family: one fatbin, one module to load.
    let unit = out.join("twofour_all.cu");
    let body: String = sources
        .iter()
        .map(|p| format!("#include \"{}\"\n", p.display()))
        .collect();
    fs::write(&unit, body).unwrap();

    // A hash of what determines the tuned kernels (every source except those no shape table
    // times: the GPT trainer's ops `gpt_*.cu`, the Ampere path `sparse_mma_sm80.cu` and the PTX
    // helpers only those two use, `sm80_ptx.cuh`; the flags
    // below; the compiler version), independent of the build folder: shape tables name the kernel
    // build by it.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut kernel_files: Vec<PathBuf> = fs::read_dir(&cuda)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with("gpt_") && name != "sparse_mma_sm80.cu" && name != "sm80_ptx.cuh"
        })
        .collect();
    kernel_files.sort();
    for f in &kernel_files {
        feed(f.file_name().unwrap().to_string_lossy().as_bytes());
        feed(&fs::read(f).unwrap());
    }
    feed(FLAGS.as_bytes());

    let nvcc = find_nvcc(&root).unwrap_or_else(|| {
        panic!("\n\ntwofour: nvcc (CUDA 13.0) not found in NVCC, PATH, /usr/local/cuda/bin or .toolchain/.\n  To fix: {SETUP_HINT}\n\n")
    });

    let common = |cmd: &mut Command| {
        cmd.arg("-std=c++17")
            .arg("-O3")
            .arg("-lineinfo")
            .arg("--expt-relaxed-constexpr")
            .arg("-Werror")
            .arg("all-warnings")
            .arg(format!("-I{}", cuda.display()))
            .arg(&unit);
    };

    let fatbin = out.join("twofour.fatbin");
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin")
        .arg("-gencode=arch=compute_80,code=sm_80")
        .arg("-gencode=arch=compute_90a,code=sm_90a")
        .arg("-gencode=arch=compute_80,code=compute_80")
        .arg("-Xptxas=-v,-warn-spills,-warn-lmem-usage")
        .arg("-o")
        .arg(&fatbin);
    common(&mut cmd);
    let report = run(cmd, "fatbin");
    fs::write(out.join("ptxas-report.txt"), &report).unwrap();
    // OUT_DIR is target/<profile>/build/twofour-<hash>/out: also leave the report at target/<profile>/.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let _ = fs::write(profile_dir.join("ptxas-report.txt"), &report);
        let _ = fs::copy(&fatbin, profile_dir.join("twofour.fatbin"));
    }

    if let Ok(v) = Command::new(&nvcc).arg("--version").output() {
        feed(&v.stdout);
    }
    println!("cargo:rustc-env=TWOFOUR_KERNELS_HASH={h:016x}");

    let ptx = out.join("twofour_sm80.ptx");
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-ptx").arg("-arch=compute_80").arg("-o").arg(&ptx);
    common(&mut cmd);
    run(cmd, "compute_80 PTX");
}

/// Runs nvcc, fails the build on any error or warning, returns its stderr (the ptxas report).
fn run(mut cmd: Command, what: &str) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("twofour: could not start nvcc for the {what}: {e}. {SETUP_HINT}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        panic!("\n\ntwofour: nvcc failed building the {what}:\n{stderr}\n");
    }
    // ptxas -warn-spills prints warnings without failing: a spill or stack use is a build error here.
    if stderr.lines().any(|l| l.contains("warning")) {
        panic!("\n\ntwofour: nvcc warned building the {what} (warnings fail the build):\n{stderr}\n");
    }
    stderr
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Ok(path) = env::var("PATH") {
        for dir in env::split_paths(&path) {
            let c = dir.join("nvcc");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    [
        PathBuf::from("/usr/local/cuda/bin/nvcc"),
        root.join(".toolchain/nvidia/cu13/bin/nvcc"),
    ]
    .into_iter()
    .find(|c| c.is_file())
}
