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

/// The GPU's counting form of the systematic pick equals the reference's interval walk: over
/// groups drawn with mixed magnitudes (zeros, ties, subnormals, 1e±30, inf and NaN among them)
/// and draws u including 0 and the largest value below 1.
#[test]
fn pick_by_counting_is_the_walk() {
    use reference::mvue::{group_weights, systematic_pick, systematic_pick_counting};
    let special = [0.0f32, -0.0, 1.0, -1.0, 2.0, 3.0, 1e-45, 1e-30, 1e30, 3e38, f32::INFINITY, f32::NAN, 0.5, 0.25];
    let value = prop_oneof![
        4 => -4.0f32..4.0,
        1 => prop::sample::select(special.to_vec()),
        1 => -1e-38f32..1e-38,
    ];
    let u = prop_oneof![
        6 => (0u32..1 << 24).prop_map(|x| x as f32 / 16_777_216.0),
        1 => Just(0.0f32),
        1 => Just(16_777_215.0f32 / 16_777_216.0),
    ];
    let mut runner = TestRunner::new(Config { cases: 200_000, ..Config::default() });
    runner
        .run(&(prop::array::uniform4(value), u), |(a, u)| {
            let (w, h, _) = group_weights(a);
            let walk = systematic_pick(w, h, u);
            let count = systematic_pick_counting(w, h, u);
            prop_assert_eq!(walk, count, "a = {:?}, w = {:?}, h = {}, u = {}", a, w, h, u);
            Ok(())
        })
        .unwrap();
}
