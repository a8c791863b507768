//! The fused attention kernels alone (no cuBLASLt in this process, so compute-sanitizer racecheck
//! can run it) against the CPU reference: output, log-sum-exp and every element of dQ, dK, dV, on
//! shapes with partial tiles. Tolerances: bf16 inputs and outputs, P rounded to bf16 before the
//! P V and dS products: relative L2 error below 1e-2 for out, 2e-2 for dqkv; lse within 1e-3.

use half::bf16;
use twofour::Device;
use twofour_trainer::gpu::{attention_check, HEAD_SIZE};
use twofour_trainer::reference::{attention_backward, attention_forward};

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check(b: usize, t: usize, nh: usize, seed: u64) {
    let dev = Device::new(0).expect("a CUDA GPU");
    let c = nh * HEAD_SIZE;
    let qkv: Vec<bf16> = twofour::reference::philox::normal_bf16(seed, b * t * 3 * c);
    let dout: Vec<bf16> = twofour::reference::philox::normal_bf16(seed + 1, b * t * c);
    let (out, lse, dqkv) = attention_check(&dev, b, t, nh, &qkv, &dout).unwrap();
    let qf: Vec<f32> = qkv.iter().map(|x| x.to_f32()).collect();
    let df: Vec<f32> = dout.iter().map(|x| x.to_f32()).collect();
    let mut out_ref = vec![0f32; b * t * c];
    let mut att = vec![0f32; b * nh * t * t];
    attention_forward(&mut out_ref, &mut att, &qf, b, t, c, nh);
    let mut dqkv_ref = vec![0f32; b * t * 3 * c];
    attention_backward(&mut dqkv_ref, &df, &qf, &att, b, t, c, nh);
    let of: Vec<f32> = out.iter().map(|x| x.to_f32()).collect();
    let dq: Vec<f32> = dqkv.iter().map(|x| x.to_f32()).collect();
    // lse of query i, head h: log sum over j <= i of exp(q.k / 8).
    let mut worst_lse = 0f64;
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let q = &qf[(bi * t + i) * 3 * c + h * HEAD_SIZE..][..HEAD_SIZE];
                let s: Vec<f64> = (0..=i).map(|j| q.iter().zip(&qf[(bi * t + j) * 3 * c + c + h * HEAD_SIZE..][..HEAD_SIZE]).map(|(x, y)| (x * y) as f64).sum::<f64>() / 8.0).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                worst_lse = worst_lse.max((l - lse[(bi * nh + h) * t + i] as f64).abs());
            }
        }
    }
    let (eo, ed) = (rel_l2(&of, &out_ref), rel_l2(&dq, &dqkv_ref));
    println!("B={b} T={t} NH={nh}: out rel L2 {eo:.2e}, dqkv rel L2 {ed:.2e}, max |lse diff| {worst_lse:.2e}");
    assert!(of.iter().chain(&dq).all(|x| x.is_finite()), "an element was not written (poisoned NaN) or overflowed");
    assert!(eo < 1e-2 && ed < 2e-2 && worst_lse < 1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_matches_reference_partial_tiles() {
    check(2, 200, 3, 1); // four query/key tiles, the last 8 rows long
    check(1, 64, 1, 2); // exactly one tile
    check(3, 17, 2, 3); // a single partial tile
    check(1, 300, 2, 4); // five tiles, the last 44 rows long
}
