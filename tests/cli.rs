//! The `twofour` command-line tool on safetensors files (CPU path: runs without a GPU).

use half::bf16;
use std::process::Command;
use twofour::reference::{self, philox::normal_bf16};
use twofour::tensors::{load, save, Tensor};

/// The binary cargo built, or `TWOFOUR_BIN` (the GPU runner points it at the packed copy).
fn bin() -> Command {
    Command::new(std::env::var("TWOFOUR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_twofour").to_string()))
}

fn f32_tensor(name: &str, r: usize, c: usize, seed: u64) -> Tensor {
    let data = normal_bf16(seed, r * c).iter().flat_map(|x| x.to_f32().to_le_bytes()).collect();
    Tensor { name: name.into(), dtype: safetensors::Dtype::F32, shape: vec![r, c], data }
}

#[test]
fn prune_check_compress_roundtrip() {
    let dir = std::env::temp_dir().join(format!("twofour-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, pruned, packed) = (dir.join("in.safetensors"), dir.join("pruned.safetensors"), dir.join("packed.safetensors"));
    save(&input, &[f32_tensor("h.0.mlp.c_fc.weight", 64, 96, 1), f32_tensor("wte.weight", 40, 24, 2)]).unwrap();

    let out = bin().args(["prune"]).arg(&input).arg(&pruned).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("h.0.mlp.c_fc.weight"));

    // The pruned FFN weight is transposable 2:4 and the other tensor is untouched.
    let before = load(&input).unwrap();
    let after = load(&pruned).unwrap();
    assert_eq!(before[1].data, after[1].data, "wte.weight must be copied as is");
    assert!(bin().arg("check").arg(&pruned).status().unwrap().success());
    let bad = bin().arg("check").arg(&input).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not transposable"));

    // Compress, then decompress the stored values + metadata: the pruned weight comes back.
    assert!(bin().arg("compress").arg(&pruned).arg(&packed).status().unwrap().success());
    let packed_t = load(&packed).unwrap();
    let get = |n: &str| packed_t.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n} missing")).clone();
    let values: Vec<bf16> = get("h.0.mlp.c_fc.weight.values").data.chunks(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect();
    let meta: Vec<u32> = get("h.0.mlp.c_fc.weight.meta").data.chunks(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mask_words: Vec<u32> = get("h.0.mlp.c_fc.weight.mask").data.chunks(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let s = twofour::Sparse24Host { rows: 64, cols: 96, values, meta, mask: twofour::BitMask::from_words(64, 96, mask_words).unwrap() };
    let dense = reference::decompress(&s).unwrap();
    let want = after[0].to_bf16().unwrap();
    assert_eq!(dense, want);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_file_gives_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("twofour-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"this is not a safetensors file").unwrap();
    let out = bin().arg("check").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid safetensors file"));
    let missing = bin().arg("check").arg(dir.join("nope.safetensors")).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    std::fs::remove_dir_all(&dir).ok();
}
