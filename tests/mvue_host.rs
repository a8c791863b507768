//! The MVUE kernel's per-group arithmetic, compiled from its CUDA source for the host, against the
//! Rust reference, without a GPU: the `host-check` region of cuda/mvue24.cuh (weights, picks,
//! kept values) is built with the system C++ compiler (IEEE single precision, no contraction,
//! the GPU's canonical NaN: scripts/host/mvue_shim.h) and fed two million groups of bf16 values,
//! many of them adversarial (any bit pattern, subnormals, infinities, NaN, huge ratios, zeros,
//! u = 0 and u = 1 - 2^-24). The GPU tests (tests/mvue24.rs) check the kernel itself on
//! gradient-like data; this one checks the edge cases of its arithmetic on every CI run.
//! NaN results are compared as NaN (their payloads are the hardware's business).

use half::bf16;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use twofour::reference::mvue::{group_weights, kept_value, systematic_pick};
use twofour::reference::philox::{normal_bf16, philox4x32, unit_f32};

const MAIN: &str = r#"
#include <cstdio>
#include "mvue_shim.h"
namespace kernel {
#include "region.inc"
}
int main() {
    float in[5];
    while (std::fread(in, sizeof(float), 5, stdin) == 5) {
        uint32_t out[3];
        outputs(kernel::group_kept(in, in[4]), out[0], out[1], out[2]);
        std::fwrite(out, sizeof(uint32_t), 3, stdout);
    }
    return 0;
}
"#;

/// The C++ program around the kernel source's host-check region, built in `dir`.
fn build(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("cuda/mvue24.cuh")).expect("reading cuda/mvue24.cuh");
    // The region between the `host-check` lines (or, in sources from before they existed, from
    // the weights' comment to the staging code's).
    let find = |marker: &str, old: &str| src.find(marker).or_else(|| src.find(old)).unwrap_or_else(|| panic!("cuda/mvue24.cuh has no `{marker}` line"));
    let begin = find("// host-check begin", "// reference::mvue::group_weights");
    let end = find("// host-check end", "// Per-warp staging");
    std::fs::write(dir.join("region.inc"), &src[begin..end]).unwrap();
    std::fs::write(dir.join("main.cpp"), MAIN).unwrap();
    let exe = dir.join("mvue_host");
    let args = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wno-unknown-pragmas"];
    for cxx in ["c++", "g++"] {
        let status = Command::new(cxx)
            .args(args)
            .arg("-I")
            .arg(dir)
            .arg("-I")
            .arg(root.join("scripts/host"))
            .arg("-o")
            .arg(&exe)
            .arg(dir.join("main.cpp"))
            .status();
        if let Ok(s) = status {
            assert!(s.success(), "{cxx} failed to build the host copy of cuda/mvue24.cuh's group arithmetic");
            return exe;
        }
    }
    panic!("no C++ compiler (c++ or g++) on PATH: this test builds the kernel's arithmetic for the host; install g++");
}

/// Group `i` of the test set: four bf16 values of one of four kinds, and its uniform.
fn group(i: usize, r: [u32; 4], normal: &[bf16]) -> ([f32; 4], f32) {
    const SPECIAL: [u16; 20] = [
        0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x3f80, 0xbf80, 0x4000, 0x3f00, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7fc0, 0x3f81, 0x3f7f, 0x4040, 0x0100, 0x4b00,
    ];
    let mut a = [0f32; 4];
    for (j, x) in a.iter_mut().enumerate() {
        let bits = match i % 4 {
            0 => r[j] as u16,                                                     // any bit pattern
            1 => SPECIAL[r[j] as usize % SPECIAL.len()],                          // hand-picked
            2 => normal[(4 * i + j) % normal.len()].to_bits(),                    // gradient-like
            _ => if r[j] % 4 == 0 { 0 } else { normal[(4 * i + j + 1) % normal.len()].to_bits() }, // zeros among them
        };
        *x = bf16::from_bits(bits).to_f32();
    }
    let u = match i % 97 {
        0 => 0.0,
        1 => unit_f32(u32::MAX),
        _ => unit_f32(r[0].rotate_left(13) ^ r[3]),
    };
    (a, u)
}

/// What the reference keeps of one group: (kept values as bf16 bits, low index first; the
/// metadata nibble k0 | k1 << 2; the mask bits).
fn reference(a: [f32; 4], u: f32) -> ([u16; 2], u32, u32) {
    let (w, h, big) = group_weights(a);
    let (k0, k1) = systematic_pick(w, h, u);
    let v = [k0, k1].map(|k| bf16::from_f32(kept_value(a[k], k, h, big)).to_bits());
    (v, (k0 | k1 << 2) as u32, (1 << k0 | 1 << k1) as u32)
}

#[test]
fn mvue_kernel_group_arithmetic_is_the_reference_on_edge_cases() {
    let dir = std::env::temp_dir().join(format!("twofour-mvue-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = build(&dir);
    let n = 2_000_000;
    let normal = normal_bf16(5, 1 << 16);
    let groups: Vec<([f32; 4], f32)> = (0..n).map(|i| group(i, philox4x32([i as u32, 0, 0, 0x6d76_6865], [7, 11]), &normal)).collect();
    let mut input = Vec::with_capacity(n * 20);
    for (a, u) in &groups {
        for x in a.iter().chain(std::iter::once(u)) {
            input.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("running the host build");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), n * 12, "the host build answered for {} of {n} groups", out.stdout.len() / 12);
    let word = |g: usize, k: usize| u32::from_le_bytes(out.stdout[12 * g + 4 * k..12 * g + 4 * k + 4].try_into().unwrap());
    let is_nan = |b: u16| b & 0x7f80 == 0x7f80 && b & 0x7f != 0;
    let mut bad = Vec::new();
    for (g, &(a, u)) in groups.iter().enumerate() {
        let (want, nib, bits) = reference(a, u);
        let pair = word(g, 0);
        let got = [pair as u16, (pair >> 16) as u16];
        let same = (0..2).all(|j| got[j] == want[j] || (is_nan(got[j]) && is_nan(want[j])));
        if !same || word(g, 1) != nib || word(g, 2) != bits {
            bad.push(format!("a = {a:?}, u = {u:e}: kernel {got:04x?} nibble {:x} bits {:x}, reference {want:04x?} {nib:x} {bits:x}", word(g, 1), word(g, 2)));
        }
    }
    assert!(bad.is_empty(), "{} of {n} groups differ, e.g.\n{}", bad.len(), bad[..bad.len().min(8)].join("\n"));
}
