//! Transposable mask search + double compression and recompression under a stored mask, on the
//! GPU, bit for bit against the CPU reference.

use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use twofour::reference::{self, philox::normal_bf16};
use twofour::{apply_mask_compress_into, transposable_mask_compress, Device, DeviceMatrix, Error, Sparse24};

/// The kernel's pattern table is the reference's, in the same order (the tie rule depends on it).
#[test]
fn cuda_pattern_table_matches_reference() {
    let src = include_str!("../cuda/mask24.cu");
    let table = &src[src.find("PATTERNS[90] = {").expect("table")..];
    let table = &table[..table.find("};").unwrap()];
    let got: Vec<u16> = table.split(|c: char| c == ',' || c == '{').filter_map(|s| s.trim().strip_prefix("0x")).map(|h| u16::from_str_radix(h, 16).unwrap()).collect();
    assert_eq!(got, reference::patterns().to_vec());
}

fn weights(seed: u64, n: usize, flavour: u8) -> Vec<bf16> {
    let mut w = normal_bf16(seed, n);
    if flavour == 1 {
        // Few distinct magnitudes: many tied patterns, so the tie rule is exercised.
        for (i, x) in w.iter_mut().enumerate() {
            *x = bf16::from_f32([1.0, -1.0, 2.0, 0.0, -0.0][(seed as usize + i * 13) % 5]);
        }
    }
    w
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn transposable_mask_and_both_compressions_match_reference() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let mut runner = TestRunner::new(Config { cases: 32, ..Config::default() });
    runner
        .run(&(1usize..=12, 1usize..=12, any::<u64>(), 0u8..2), |(rt, ct, seed, flavour)| {
            let (rows, cols) = (32 * rt, 32 * ct);
            let w = weights(seed, rows * cols, flavour);
            let (gw, gwt) = transposable_mask_compress(&dev, &DeviceMatrix::from_host(&dev, rows, cols, &w).unwrap()).unwrap();
            let (mask, _) = reference::transposable_mask(&w, rows, cols).unwrap();
            prop_assert_eq!(gw.to_host(&dev).unwrap(), reference::compress(&w, rows, cols, &mask).unwrap(), "W at {}x{}", rows, cols);
            prop_assert_eq!(gwt.to_host(&dev).unwrap(), reference::compress_transposed(&w, rows, cols, &mask).unwrap(), "W^T at {}x{}", rows, cols);
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn recompression_under_a_stored_mask_matches_reference() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let (rows, cols) = (96, 160);
    let w1 = normal_bf16(1, rows * cols);
    let w2 = normal_bf16(2, rows * cols); // the weights after some optimizer steps
    let (mut gw, mut gwt) = transposable_mask_compress(&dev, &DeviceMatrix::from_host(&dev, rows, cols, &w1).unwrap()).unwrap();
    apply_mask_compress_into(&dev, &DeviceMatrix::from_host(&dev, rows, cols, &w2).unwrap(), &mut gw, &mut gwt).unwrap();
    let (mask1, _) = reference::transposable_mask(&w1, rows, cols).unwrap();
    assert_eq!(gw.to_host(&dev).unwrap(), reference::compress(&w2, rows, cols, &mask1).unwrap());
    assert_eq!(gwt.to_host(&dev).unwrap(), reference::compress_transposed(&w2, rows, cols, &mask1).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn unaligned_shape_is_rejected() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let w = DeviceMatrix::from_host(&dev, 48, 64, &normal_bf16(3, 48 * 64)).unwrap();
    assert!(matches!(transposable_mask_compress(&dev, &w), Err(Error::Unsupported { .. })));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn nan_weights_are_rejected() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let mut v = normal_bf16(4, 64 * 64);
    v[77] = bf16::NAN;
    let w = DeviceMatrix::from_host(&dev, 64, 64, &v).unwrap();
    assert!(matches!(transposable_mask_compress(&dev, &w), Err(Error::InvalidData { .. })));
    // The asynchronous form queues the kernel and reports the same error through its status.
    let (mut ow, mut owt) = (Sparse24::alloc(&dev, 64, 64).unwrap(), Sparse24::alloc(&dev, 64, 64).unwrap());
    let status = twofour::transposable_mask_compress_async(&dev, &w, &mut ow, &mut owt, None).unwrap();
    assert!(matches!(status.check(&dev), Err(Error::InvalidData { .. })));
    let ok = DeviceMatrix::from_host(&dev, 64, 64, &normal_bf16(4, 64 * 64)).unwrap();
    twofour::transposable_mask_compress_async(&dev, &ok, &mut ow, &mut owt, None).unwrap().check(&dev).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn non_transposable_stored_mask_is_rejected() {
    let dev = Device::new(0).expect("a CUDA GPU");
    // A stored mask that is 2:4 along rows only (magnitude pruning), not transposable.
    let v = normal_bf16(5, 64 * 64);
    let (p, row_mask) = reference::prune24_rows(&v, 64, 64).unwrap();
    let mut gw = Sparse24::from_host(&dev, &reference::compress(&p, 64, 64, &row_mask).unwrap()).unwrap();
    let mut gwt = Sparse24::alloc(&dev, 64, 64).unwrap();
    let w = DeviceMatrix::from_host(&dev, 64, 64, &v).unwrap();
    assert!(matches!(apply_mask_compress_into(&dev, &w, &mut gw, &mut gwt), Err(Error::InvalidData { .. })));
    // Outputs of the wrong shape.
    let mut small = Sparse24::alloc(&dev, 32, 64).unwrap();
    assert!(matches!(apply_mask_compress_into(&dev, &w, &mut small, &mut gwt), Err(Error::Shape { .. })));
}
