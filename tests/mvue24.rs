//! MVUE 2:4 of dY^T fused with compression, on the GPU, bit for bit against the CPU reference
//! (which is tested unbiased in tests/reference.rs).

use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use twofour::reference::{self, philox::normal_bf16};
use twofour::{mvue24_compress, Device, DeviceMatrix, Error};

#[test]
#[ignore = "needs a CUDA GPU"]
fn mvue24_matches_reference_bit_for_bit() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    runner
        .run(&(1usize..=16, 1usize..=8, any::<u64>(), any::<u32>(), any::<bool>()), |(tt, ft, seed, step, zeros)| {
            let (t, f) = (32 * tt, 32 * ft);
            let mut dy = normal_bf16(seed, t * f);
            if zeros {
                // Zero groups and single non-zeros exercise the degenerate probability branches.
                for (i, x) in dy.iter_mut().enumerate() {
                    if (i / f) % 4 != 0 || i % 3 == 0 {
                        *x = bf16::ZERO;
                    }
                }
            }
            let got = mvue24_compress(&dev, &DeviceMatrix::from_host(&dev, t, f, &dy).unwrap(), seed, step).unwrap().to_host(&dev).unwrap();
            let mut dyt = vec![bf16::ZERO; t * f];
            for i in 0..t {
                for j in 0..f {
                    dyt[j * t + i] = dy[i * f + j];
                }
            }
            let (vals, mask) = reference::mvue24_with_mask(&dyt, f, t, seed, step).unwrap();
            let vals: Vec<bf16> = vals.into_iter().map(bf16::from_f32).collect();
            let want = reference::compress(&vals, f, t, &mask).unwrap();
            prop_assert_eq!(got, want, "{}x{} seed {} step {}", t, f, seed, step);
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mvue24_same_seed_same_result_other_step_other_result() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let dy = DeviceMatrix::from_host(&dev, 64, 64, &normal_bf16(9, 64 * 64)).unwrap();
    let a = mvue24_compress(&dev, &dy, 7, 3).unwrap().to_host(&dev).unwrap();
    let b = mvue24_compress(&dev, &dy, 7, 3).unwrap().to_host(&dev).unwrap();
    let c = mvue24_compress(&dev, &dy, 7, 4).unwrap().to_host(&dev).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.mask, c.mask);
    let bad = DeviceMatrix::from_host(&dev, 48, 64, &normal_bf16(9, 48 * 64)).unwrap();
    assert!(matches!(mvue24_compress(&dev, &bad, 1, 1), Err(Error::Unsupported { .. })));
}
