//! The mma.sp GEMM on Sparse24 against the f64 reference: proves on the hardware that the
//! Sparse24 metadata layout (docs/layout.md) is the one the tensor cores read.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use twofour::reference::{self, philox::normal_bf16};
use twofour::{prune24_compress, sparse_gemm_sm80, sparse_mma_naive, Device, DeviceMatrix, Error, KernelImage, MetaReading};

/// ||D - ref|| / ||ref|| for D = W_pruned (m x k) * X^T, X n x k.
fn rel_error(dev: &Device, m: usize, n: usize, k: usize, seed: u64, reading: MetaReading) -> f64 {
    let w = normal_bf16(seed, m * k);
    let x = normal_bf16(seed ^ 0x5555, n * k);
    let sparse = prune24_compress(dev, &DeviceMatrix::from_host(dev, m, k, &w).unwrap()).unwrap();
    let xd = DeviceMatrix::from_host(dev, n, k, &x).unwrap();
    let mut d = DeviceMatrix::<f32>::poisoned(dev, m, n).unwrap();
    sparse_mma_naive(dev, &sparse, &xd, &mut d, reading).unwrap();
    let d = d.to_host(dev).unwrap();
    let (p, _) = reference::prune24_rows(&w, m, k).unwrap();
    let want = reference::linear_forward(&x, &p, n, k, m).unwrap(); // n x m
    let (mut e, mut r) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let (g, w) = (d[i * n + j] as f64, want[j * m + i] as f64);
            e += (g - w).powi(2);
            r += w * w;
        }
    }
    (e / r).sqrt() // NaN (poison left unwritten) fails every bound
}

// Exact bf16 products summed in f32 by the tensor core: far below bf16's 4e-3 step.
const BOUND: f64 = 1e-4;

fn check_image(image: KernelImage) {
    let dev = Device::with_image(0, image).expect("a CUDA GPU");
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    runner
        .run(&(1usize..=16, 1usize..=24, 1usize..=24, any::<u64>()), |(mb, nb, kc, seed)| {
            let (m, n, k) = (mb * 16, nb * 8, kc * 32);
            let err = rel_error(&dev, m, n, k, seed, MetaReading::Documented);
            prop_assert!(err < BOUND, "{}x{}x{}: relative error {:e}", m, n, k, err);
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_mma_matches_reference_native() {
    check_image(KernelImage::Native);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_mma_matches_reference_forced_ampere_ptx() {
    check_image(KernelImage::Ampere);
}

/// Names the metadata reading the hardware follows, so a wrong layout is diagnosed at once.
#[test]
#[ignore = "needs a CUDA GPU"]
fn metadata_layout_reading() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let documented = rel_error(&dev, 64, 64, 256, 42, MetaReading::Documented);
    let alternative = rel_error(&dev, 64, 64, 256, 42, MetaReading::RowPerThread);
    eprintln!("metadata reading: documented {documented:e}, row-per-thread {alternative:e}");
    assert!(documented < BOUND, "the documented layout is wrong (row-per-thread reading gives {alternative:e})");
}

/// The fast sm_80 kernel (cp.async pipeline, ldmatrix) gives the naive kernel's bits (same
/// fragments, same k order) on random shapes, partial CTA tiles included, from the native image
/// and from the compute_80 PTX; and refuses K % 64 != 0 with a typed error.
fn check_fast(image: KernelImage) {
    let dev = Device::with_image(0, image).expect("a CUDA GPU");
    let mut runner = TestRunner::new(Config { cases: 16, ..Config::default() });
    runner
        .run(&(1usize..=20, 1usize..=40, 1usize..=12, any::<u64>()), |(mb, nb, k64, seed)| {
            let (m, n, k) = (mb * 16, nb * 8, k64 * 64);
            let w = normal_bf16(seed, m * k);
            let x = normal_bf16(seed ^ 0x77, n * k);
            let sparse = prune24_compress(&dev, &DeviceMatrix::from_host(&dev, m, k, &w).unwrap()).unwrap();
            let xd = DeviceMatrix::from_host(&dev, n, k, &x).unwrap();
            let mut want = DeviceMatrix::<f32>::poisoned(&dev, m, n).unwrap();
            sparse_mma_naive(&dev, &sparse, &xd, &mut want, MetaReading::Documented).unwrap();
            let mut got = DeviceMatrix::<f32>::poisoned(&dev, m, n).unwrap();
            sparse_gemm_sm80(&dev, &sparse, &xd, &mut got).unwrap();
            let (want, got) = (want.to_host(&dev).unwrap(), got.to_host(&dev).unwrap());
            let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "{}x{}x{}: sparse_gemm_sm80 differs from sparse_mma_naive", m, n, k);
            Ok(())
        })
        .unwrap();
    // And the reference itself, on one larger shape.
    let err = {
        let (m, n, k) = (272, 200, 192);
        let w = normal_bf16(9, m * k);
        let x = normal_bf16(10, n * k);
        let sparse = prune24_compress(&dev, &DeviceMatrix::from_host(&dev, m, k, &w).unwrap()).unwrap();
        let xd = DeviceMatrix::from_host(&dev, n, k, &x).unwrap();
        let mut d = DeviceMatrix::<f32>::poisoned(&dev, m, n).unwrap();
        sparse_gemm_sm80(&dev, &sparse, &xd, &mut d).unwrap();
        let d = d.to_host(&dev).unwrap();
        let (p, _) = reference::prune24_rows(&w, m, k).unwrap();
        let want = reference::linear_forward(&x, &p, n, k, m).unwrap();
        let (mut e, mut r) = (0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                e += (d[i * n + j] as f64 - want[j * m + i] as f64).powi(2);
                r += (want[j * m + i] as f64).powi(2);
            }
        }
        (e / r).sqrt()
    };
    assert!(err < BOUND, "sparse_gemm_sm80 vs reference: {err:e}");
    let sparse = prune24_compress(&dev, &DeviceMatrix::from_host(&dev, 16, 96, &normal_bf16(1, 16 * 96)).unwrap()).unwrap();
    let xd = DeviceMatrix::from_host(&dev, 8, 96, &normal_bf16(2, 8 * 96)).unwrap();
    let mut d = DeviceMatrix::<f32>::poisoned(&dev, 16, 8).unwrap();
    assert!(matches!(sparse_gemm_sm80(&dev, &sparse, &xd, &mut d), Err(Error::Unsupported { .. })));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_gemm_sm80_matches_naive_native() {
    check_fast(KernelImage::Native);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_gemm_sm80_matches_naive_forced_ampere_ptx() {
    check_fast(KernelImage::Ampere);
}
