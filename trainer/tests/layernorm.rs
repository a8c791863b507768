//! The LayerNorm backward kernels alone (no cuBLASLt in this process, so compute-sanitizer
//! racecheck can run them; they reduce through shared memory): the fused backward with its
//! weight-gradient sums (the trainer's default) and the separate backward + column sums, both
//! against the CPU reference, on widths that take each fused instance (k3, k4, k5) and a row count
//! that leaves the last chunk short. dinp, dw and db accumulate onto random starting values.
//! Tolerances: bf16 inputs and dinp; relative L2 error below 1e-2 for dinp, 1e-4 for dw and db
//! (f32 sums of 300 rows, in another order than the reference's).

use half::bf16;
use twofour::Device;
use twofour_trainer::gpu::layernorm_check;
use twofour_trainer::reference::{layernorm_backward, layernorm_forward};

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check(n: usize, c: usize, seed: u64) {
    let dev = Device::new(0).expect("a CUDA GPU");
    let normal = |s: u64, len: usize| twofour::reference::philox::normal_bf16(s, len);
    let f32s = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    let (inp, dout, dinp0) = (normal(seed, n * c), normal(seed + 1, n * c), normal(seed + 2, n * c));
    let (w, b, dw0, db0) = (f32s(&normal(seed + 3, c)), f32s(&normal(seed + 4, c)), f32s(&normal(seed + 5, c)), f32s(&normal(seed + 6, c)));
    // Reference on the same bf16 inputs.
    let (xf, df) = (f32s(&inp), f32s(&dout));
    let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &xf, &w, &b, n, c);
    let (mut dinp_ref, mut dw_ref, mut db_ref) = (f32s(&dinp0), dw0.clone(), db0.clone());
    layernorm_backward(&mut dinp_ref, &mut dw_ref, &mut db_ref, &df, &xf, &w, &mean, &rstd, n, c);
    for fused in [true, false] {
        let (dinp, dw, db) = layernorm_check(&dev, n, c, &inp, &dout, &dinp0, &w, &b, &dw0, &db0, fused).unwrap();
        let dinp = f32s(&dinp);
        let (e_in, e_w, e_b) = (rel_l2(&dinp, &dinp_ref), rel_l2(&dw, &dw_ref), rel_l2(&db, &db_ref));
        println!("n={n} C={c} fused={fused}: dinp rel L2 {e_in:.2e}, dw {e_w:.2e}, db {e_b:.2e}");
        assert!(dinp.iter().chain(&dw).chain(&db).all(|x| x.is_finite()), "an output was not written or overflowed");
        assert!(e_in < 1e-2 && e_w < 1e-4 && e_b < 1e-4, "n={n} C={c} fused={fused}: {e_in:e} {e_w:e} {e_b:e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_matches_reference() {
    check(300, 768, 11); // k3; 38 chunks of 8 rows, the last 4 rows long
    check(300, 1024, 12); // k4
    check(300, 1280, 13); // k5
    check(77, 136, 14); // partial lanes (17 of 32 active), one short chunk
    check(1100, 768, 15); // more rows than the column-sum chunk (512)
}
