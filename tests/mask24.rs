//! Transposable mask search + double compression and recompression under a stored mask, on the
//! GPU, bit for bit against the CPU reference.

use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use twofour::reference::{self, philox::normal_bf16};
use twofour::reference::AdamWStep;
use twofour::{adamw_masked_compress_async, apply_mask_compress_into, transposable_mask_compress, Device, DeviceMatrix, Error, Sparse24};

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

/// The optimizer step with recompression: two AdamW steps (masked decay under the stored mask)
/// on f32 master weights, bit for bit the CPU reference in W, m and v, and W and W^T recompressed
/// from the updated weights exactly as `reference::compress` / `compress_transposed` do under the
/// stored mask. Then a stored mask that is not transposable (InvalidData through the status) and
/// the typed shape errors.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_masked_compress_matches_reference() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let (rows, cols) = (96, 160);
    let n = rows * cols;
    let f32s = |seed: u64, scale: f32| normal_bf16(seed, n).iter().map(|x| x.to_f32() * scale).collect::<Vec<f32>>();
    let mut w = f32s(11, 0.02);
    let mut m = f32s(12, 1e-3);
    let mut v: Vec<f32> = f32s(13, 1e-3).iter().map(|x| x * x).collect();
    let to_bf16 = |x: &[f32]| x.iter().map(|&y| bf16::from_f32(y)).collect::<Vec<bf16>>();
    let w_bf16 = to_bf16(&w);
    let (mut gw, mut gwt) = transposable_mask_compress(&dev, &DeviceMatrix::from_host(&dev, rows, cols, &w_bf16).unwrap()).unwrap();
    let (mask, _) = reference::transposable_mask(&w_bf16, rows, cols).unwrap();
    let (mut dw, mut dm, mut dv) = (
        DeviceMatrix::from_host(&dev, rows, cols, &w).unwrap(),
        DeviceMatrix::from_host(&dev, rows, cols, &m).unwrap(),
        DeviceMatrix::from_host(&dev, rows, cols, &v).unwrap(),
    );
    for t in 1..=2i32 {
        let grad = f32s(20 + t as u64, 0.05);
        let step = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, c1: 1.0 - 0.9f32.powi(t), c2: 1.0 - 0.95f32.powi(t), gscale: 0.7, lambda: 0.05 };
        let dg = DeviceMatrix::from_host(&dev, rows, cols, &grad).unwrap();
        adamw_masked_compress_async(&dev, &mut dw, &mut dm, &mut dv, &dg, &step, &mut gw, &mut gwt).unwrap().check(&dev).unwrap();
        reference::adamw_masked(&mut w, &mut m, &mut v, &grad, &mask, &step).unwrap();
        for (name, got, want) in [("W", dw.to_host(&dev).unwrap(), &w), ("m", dm.to_host(&dev).unwrap(), &m), ("v", dv.to_host(&dev).unwrap(), &v)] {
            let bad = got.iter().zip(want.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(bad, 0, "step {t}: {name} differs from reference::adamw_masked in {bad} of {n} elements");
        }
        let wb = to_bf16(&w);
        assert_eq!(gw.to_host(&dev).unwrap(), reference::compress(&wb, rows, cols, &mask).unwrap(), "step {t}: W recompressed");
        assert_eq!(gwt.to_host(&dev).unwrap(), reference::compress_transposed(&wb, rows, cols, &mask).unwrap(), "step {t}: W^T recompressed");
    }
    // A stored mask that is 2:4 along rows only: InvalidData through the status.
    let v16 = normal_bf16(5, 64 * 64);
    let (p, row_mask) = reference::prune24_rows(&v16, 64, 64).unwrap();
    let mut bad_w = Sparse24::from_host(&dev, &reference::compress(&p, 64, 64, &row_mask).unwrap()).unwrap();
    let mut bad_wt = Sparse24::alloc(&dev, 64, 64).unwrap();
    let sq = |seed| DeviceMatrix::from_host(&dev, 64, 64, &normal_bf16(seed, 64 * 64).iter().map(|x| x.to_f32()).collect::<Vec<f32>>()).unwrap();
    let (mut w64, mut m64, mut v64, g64) = (sq(1), sq(2), sq(3), sq(4));
    let step = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, c1: 0.1, c2: 0.05, gscale: 1.0, lambda: 0.0 };
    let status = adamw_masked_compress_async(&dev, &mut w64, &mut m64, &mut v64, &g64, &step, &mut bad_w, &mut bad_wt).unwrap();
    assert!(matches!(status.check(&dev), Err(Error::InvalidData { .. })));
    // Typed errors: dimensions not multiples of 32, state of another shape, outputs of another shape.
    let rect = |r: usize, c: usize| DeviceMatrix::from_host(&dev, r, c, &vec![0f32; r * c]).unwrap();
    let (mut a, mut b, mut c) = (rect(48, 64), rect(48, 64), rect(48, 64));
    // (W^T of a 48 x 64 W has 48 columns, which no Sparse24 can: the dimension check comes first.)
    let (mut o1, mut o2) = (Sparse24::alloc(&dev, 48, 64).unwrap(), Sparse24::alloc(&dev, 64, 64).unwrap());
    assert!(matches!(adamw_masked_compress_async(&dev, &mut a, &mut b, &mut c, &rect(48, 64), &step, &mut o1, &mut o2), Err(Error::Unsupported { .. })));
    let mut m_small = rect(32, 64);
    assert!(matches!(adamw_masked_compress_async(&dev, &mut w64, &mut m_small, &mut v64, &g64, &step, &mut bad_w, &mut bad_wt), Err(Error::Shape { .. })));
    let mut o_small = Sparse24::alloc(&dev, 32, 64).unwrap();
    assert!(matches!(adamw_masked_compress_async(&dev, &mut w64, &mut m64, &mut v64, &g64, &step, &mut o_small, &mut bad_wt), Err(Error::Shape { .. })));
}
