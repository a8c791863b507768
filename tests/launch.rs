//! Launch shapes (twofour::launch) never change a result: every candidate the tuner may pick gives
//! the default shape's output bit for bit, and the default matches the CPU reference (tests/mask24.rs,
//! tests/mvue24.rs, tests/gated.rs check the kernels themselves in depth).

use half::bf16;
use twofour::launch::{Family, LaunchShape};
use twofour::reference::{self, philox::normal_bf16, Gate};
use twofour::{Device, DeviceMatrix, GatedLayout, Sparse24};

fn dev() -> Device {
    Device::new(0).expect("a CUDA GPU")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mask_search_and_apply_are_launch_shape_invariant() {
    let d = dev();
    // 96 x 160: 15 tiles, fewer than one block of most shapes and not a multiple of any.
    let (r, c) = (96, 160);
    let host = normal_bf16(5, r * c);
    let w = DeviceMatrix::from_host(&d, r, c, &host).unwrap();
    let want = reference::transposable_mask(&host, r, c).unwrap().0;
    for apply in [false, true] {
        let mut base = None;
        for shape in LaunchShape::candidates(Family::Mask24) {
            let (mut ow, mut owt) = (Sparse24::alloc(&d, r, c).unwrap(), Sparse24::alloc(&d, c, r).unwrap());
            if apply {
                twofour::transposable_mask_compress_into(&d, &w, &mut ow, &mut owt).unwrap();
                twofour::apply_mask_compress_with(&d, &w, &mut ow, &mut owt, Some(shape)).unwrap();
            } else {
                twofour::transposable_mask_compress_with(&d, &w, &mut ow, &mut owt, Some(shape)).unwrap();
            }
            let got = (ow.to_host(&d).unwrap(), owt.to_host(&d).unwrap());
            assert_eq!(got.0.mask, want, "{shape:?}: mask differs from the CPU reference");
            match &base {
                None => base = Some(got),
                Some(b) => assert!(*b == got, "apply={apply} {shape:?}: output differs from the first shape's"),
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mvue_is_launch_shape_invariant() {
    let d = dev();
    let (t, f) = (160, 96);
    let dy = DeviceMatrix::from_host(&d, t, f, &normal_bf16(6, t * f)).unwrap();
    let mut base = None;
    for shape in LaunchShape::candidates(Family::Mvue24) {
        let mut out = Sparse24::alloc(&d, f, t).unwrap();
        twofour::mvue24_compress_with(&d, &dy, 9, 4, &mut out, Some(shape)).unwrap();
        let got = out.to_host(&d).unwrap();
        match &base {
            None => base = Some(got),
            Some(b) => assert!(*b == got, "{shape:?}: output differs"),
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gated_is_launch_shape_invariant() {
    let d = dev();
    let (t, f) = (200, 136);
    for layout in [GatedLayout::TokenMajor, GatedLayout::FeatureMajor] {
        let (hr, hc, yr, yc) = if layout == GatedLayout::TokenMajor { (t, 2 * f, t, f) } else { (2 * f, t, f, t) };
        let h = DeviceMatrix::from_host(&d, hr, hc, &normal_bf16(7, hr * hc)).unwrap();
        let dy = DeviceMatrix::from_host(&d, yr, yc, &normal_bf16(8, yr * yc)).unwrap();
        let mut base: Option<(Vec<bf16>, Vec<bf16>)> = None;
        for shape in LaunchShape::candidates(Family::Gated) {
            let mut y = DeviceMatrix::poisoned(&d, yr, yc).unwrap();
            let mut dh = DeviceMatrix::poisoned(&d, hr, hc).unwrap();
            twofour::gated_forward_with(&d, Gate::SwiGlu, layout, &h, &mut y, Some(shape)).unwrap();
            twofour::gated_backward_with(&d, Gate::SwiGlu, layout, &h, &dy, &mut dh, Some(shape)).unwrap();
            let got = (d.download(y.data()).unwrap(), d.download(dh.data()).unwrap());
            assert!(got.0.iter().chain(&got.1).all(|x| !x.is_nan()), "{shape:?}: an element was not written");
            match &base {
                None => base = Some(got),
                Some(b) => assert!(b.0 == got.0 && b.1 == got.1, "{layout:?} {shape:?}: output differs"),
            }
        }
    }
}
