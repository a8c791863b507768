//! SwiGLU / GEGLU forward and backward on the GPU against the f64 reference, in both layouts.
//! Bound: relative error norm < 4e-3 (one bf16 rounding of the output, f32 math inside).

use half::bf16;
use twofour::reference::{self, philox::normal_bf16, Gate};
use twofour::{gated_backward, gated_forward, Device, DeviceMatrix, Error, GatedLayout};

fn rel(got: &[bf16], want: &[f32]) -> f64 {
    reference::rel_error(got.iter().map(|g| g.to_f64()), want.iter().map(|&w| w as f64))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gated_matches_reference_in_both_layouts() {
    let dev = Device::new(0).expect("a CUDA GPU");
    for (t, f) in [(64, 96), (40, 256), (128, 8)] {
        for gate in [Gate::SwiGlu, Gate::GeGlu] {
            for layout in [GatedLayout::TokenMajor, GatedLayout::FeatureMajor] {
                let seed = (t * 1000 + f) as u64;
                let up = normal_bf16(seed, t * f);
                let g = normal_bf16(seed + 1, t * f);
                let dy = normal_bf16(seed + 2, t * f);
                // Lay H and dy out as the layout says; up/gate/dy index (token, feature).
                let (h, dyl) = match layout {
                    GatedLayout::TokenMajor => {
                        let mut h = vec![bf16::ZERO; t * 2 * f];
                        for i in 0..t {
                            for j in 0..f {
                                h[i * 2 * f + j] = up[i * f + j];
                                h[i * 2 * f + f + j] = g[i * f + j];
                            }
                        }
                        (DeviceMatrix::from_host(&dev, t, 2 * f, &h).unwrap(), DeviceMatrix::from_host(&dev, t, f, &dy).unwrap())
                    }
                    GatedLayout::FeatureMajor => {
                        if t % 8 != 0 {
                            continue;
                        }
                        let mut h = vec![bf16::ZERO; t * 2 * f];
                        let mut d = vec![bf16::ZERO; t * f];
                        for i in 0..t {
                            for j in 0..f {
                                h[j * t + i] = up[i * f + j];
                                h[(f + j) * t + i] = g[i * f + j];
                                d[j * t + i] = dy[i * f + j];
                            }
                        }
                        (DeviceMatrix::from_host(&dev, 2 * f, t, &h).unwrap(), DeviceMatrix::from_host(&dev, f, t, &d).unwrap())
                    }
                };
                let (yr, yc) = if layout == GatedLayout::TokenMajor { (t, f) } else { (f, t) };
                let mut y = DeviceMatrix::<bf16>::poisoned(&dev, yr, yc).unwrap();
                gated_forward(&dev, gate, layout, &h, &mut y).unwrap();
                let mut dh = DeviceMatrix::<bf16>::poisoned(&dev, h.rows(), h.cols()).unwrap();
                gated_backward(&dev, gate, layout, &h, &dyl, &mut dh).unwrap();
                let y = y.to_host(&dev).unwrap();
                let dh = dh.to_host(&dev).unwrap();
                let want_y = reference::gated_forward(gate, &up, &g).unwrap();
                let (want_du, want_dg) = reference::gated_backward(gate, &up, &g, &dy).unwrap();
                // Bring GPU results back to (token, feature) order.
                let mut gy = vec![bf16::ZERO; t * f];
                let mut gdu = vec![bf16::ZERO; t * f];
                let mut gdg = vec![bf16::ZERO; t * f];
                for i in 0..t {
                    for j in 0..f {
                        gy[i * f + j] = match layout {
                            GatedLayout::TokenMajor => y[i * f + j],
                            GatedLayout::FeatureMajor => y[j * t + i],
                        };
                        match layout {
                            GatedLayout::TokenMajor => {
                                gdu[i * f + j] = dh[i * 2 * f + j];
                                gdg[i * f + j] = dh[i * 2 * f + f + j];
                            }
                            GatedLayout::FeatureMajor => {
                                gdu[i * f + j] = dh[j * t + i];
                                gdg[i * f + j] = dh[(f + j) * t + i];
                            }
                        }
                    }
                }
                for (name, got, want) in [("y", &gy, &want_y), ("d_up", &gdu, &want_du), ("d_gate", &gdg, &want_dg)] {
                    let e = rel(got, want);
                    assert!(e < 4e-3, "{gate:?} {layout:?} {t}x{f} {name}: relative error {e:e}");
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gated_rejects_bad_shapes() {
    let dev = Device::new(0).expect("a CUDA GPU");
    let h = DeviceMatrix::from_host(&dev, 16, 12, &normal_bf16(1, 192)).unwrap(); // F = 6: not a multiple of 8
    let mut y = DeviceMatrix::<bf16>::poisoned(&dev, 16, 6).unwrap();
    assert!(matches!(gated_forward(&dev, Gate::SwiGlu, GatedLayout::TokenMajor, &h, &mut y), Err(Error::Unsupported { .. })));
    let h = DeviceMatrix::from_host(&dev, 16, 32, &normal_bf16(1, 512)).unwrap();
    let mut y = DeviceMatrix::<bf16>::poisoned(&dev, 16, 8).unwrap();
    assert!(matches!(gated_forward(&dev, Gate::GeGlu, GatedLayout::TokenMajor, &h, &mut y), Err(Error::Shape { .. })));
}
