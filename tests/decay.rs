//! Masked decay and flip rate on the GPU against the CPU reference (exact: same f32 operations).

use twofour::reference::{self, philox::normal_bf16};
use twofour::{flip_rate, masked_decay, prune24_compress, transposable_mask_compress, Device, DeviceMatrix};

#[test]
#[ignore = "needs a CUDA GPU"]
fn masked_decay_and_flip_rate_match_reference() {
    let dev = Device::new(0).expect("a CUDA GPU");
    for (rows, cols) in [(64, 96), (128, 256), (32, 32)] {
        let w16 = normal_bf16(rows as u64, rows * cols);
        let w: Vec<f32> = w16.iter().map(|x| x.to_f32()).collect();
        let grad: Vec<f32> = normal_bf16(7, rows * cols).iter().map(|x| x.to_f32() * 1e-3).collect();
        let wd = DeviceMatrix::from_host(&dev, rows, cols, &w16).unwrap();
        let (sw, _) = transposable_mask_compress(&dev, &wd).unwrap();
        let mask = sw.to_host(&dev).unwrap().mask;
        let mut gd = DeviceMatrix::from_host(&dev, rows, cols, &grad).unwrap();
        masked_decay(&dev, &mut gd, &DeviceMatrix::from_host(&dev, rows, cols, &w).unwrap(), &sw, 6e-5).unwrap();
        let mut want = grad.clone();
        reference::masked_decay(&mut want, &w, &mask, 6e-5).unwrap();
        let got = gd.to_host(&dev).unwrap();
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());

        // Flip rate between the transposable mask and plain row-wise magnitude pruning of W.
        let sp = prune24_compress(&dev, &wd).unwrap();
        let got = flip_rate(&dev, &sw, &sp).unwrap();
        let want = reference::flip_rate(&mask, &sp.to_host(&dev).unwrap().mask).unwrap();
        assert_eq!(got, want);
    }
}
