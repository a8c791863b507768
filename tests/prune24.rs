//! GPU 2:4 prune + compress against the CPU reference, bit for bit.

use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use twofour::reference::{self, philox::normal_bf16};
use twofour::{prune24_compress, prune24_compress_into, Device, DeviceMatrix, Error, KernelImage, Sparse24};

fn check_image(image: KernelImage) {
    let dev = Device::with_image(0, image).expect("a CUDA GPU");
    let mut runner = TestRunner::new(Config { cases: 40, ..Config::default() });
    // Shapes up to 1024 x 2048, including the smallest (16 x 32) and non-square, non-power-of-2.
    let shapes = (1usize..=64, 1usize..=64, any::<u64>(), 0u8..3);
    runner
        .run(&shapes, |(rb, kc, seed, flavour)| {
            let (rows, cols) = (rb * 16, kc * 32);
            let mut w = normal_bf16(seed, rows * cols);
            if flavour == 1 {
                // Many exact ties and signed zeros: the tie rule must match the reference.
                for (i, x) in w.iter_mut().enumerate() {
                    *x = bf16::from_f32([0.0, -0.0, 1.0, -1.0, 2.0][(seed as usize + i * 7) % 5]);
                }
            } else if flavour == 2 {
                // Extreme magnitudes, subnormals, infinities.
                for (i, x) in w.iter_mut().enumerate().step_by(3) {
                    *x = bf16::from_bits([0x0001, 0x7f7f, 0xff80, 0x7f80, 0x8001][i % 5]);
                }
            }
            let wd = DeviceMatrix::from_host(&dev, rows, cols, &w).unwrap();
            let got = prune24_compress(&dev, &wd).unwrap().to_host(&dev).unwrap();
            let (p, mask) = reference::prune24_rows(&w, rows, cols).unwrap();
            let want = reference::compress(&p, rows, cols, &mask).unwrap();
            prop_assert_eq!(&got.mask, &want.mask, "mask differs at {} x {}", rows, cols);
            prop_assert_eq!(&got.meta, &want.meta, "metadata differs at {} x {}", rows, cols);
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got.values), bits(&want.values), "values differ at {} x {}", rows, cols);
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prune24_matches_reference_native() {
    check_image(KernelImage::Native);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prune24_matches_reference_forced_ampere_ptx() {
    check_image(KernelImage::Ampere);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prune24_rewrites_every_element_of_reused_storage() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let (rows, cols) = (48, 96);
    let mut out = Sparse24::alloc(&dev, rows, cols).unwrap(); // poisoned
    for seed in 0..3 {
        let w = normal_bf16(100 + seed, rows * cols);
        let wd = DeviceMatrix::from_host(&dev, rows, cols, &w).unwrap();
        prune24_compress_into(&dev, &wd, &mut out).unwrap();
        let (p, mask) = reference::prune24_rows(&w, rows, cols).unwrap();
        assert_eq!(out.to_host(&dev).unwrap(), reference::compress(&p, rows, cols, &mask).unwrap());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prune24_rejects_bad_shapes_with_typed_errors() {
    let dev = Device::new(0).expect("a CUDA GPU");
    for (rows, cols) in [(16, 48), (8, 32), (17, 64), (32, 20)] {
        let w = DeviceMatrix::from_host(&dev, rows, cols, &normal_bf16(1, rows * cols)).unwrap();
        assert!(matches!(prune24_compress(&dev, &w), Err(Error::Unsupported { .. })), "{rows} x {cols}");
    }
    let w = DeviceMatrix::from_host(&dev, 16, 32, &normal_bf16(1, 512)).unwrap();
    let mut wrong = Sparse24::alloc(&dev, 32, 32).unwrap();
    assert!(matches!(prune24_compress_into(&dev, &w, &mut wrong), Err(Error::Shape { .. })));
    assert!(matches!(DeviceMatrix::from_host(&dev, 4, 4, &normal_bf16(1, 15)), Err(Error::Shape { .. })));
}
