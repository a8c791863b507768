//! The CPU reference model: every parameter tensor's gradient against central finite differences,
//! and a few AdamW steps that must lower the loss of a repeated batch.

use twofour_trainer::reference::{backward, forward, init_params, AdamW, Config, ParamLayout};

const SMALL: Config = Config { vocab: 37, max_seq: 8, layers: 2, heads: 2, channels: 16, swiglu: false };

fn batch() -> (Vec<u16>, Vec<u16>, usize, usize) {
    let (b, t) = (2, 6);
    let inputs: Vec<u16> = (0..b * t).map(|i| ((i * 7 + 3) % 37) as u16).collect();
    let targets: Vec<u16> = (0..b * t).map(|i| ((i * 5 + 1) % 37) as u16).collect();
    (inputs, targets, b, t)
}

#[test]
fn gradients_match_finite_differences() {
    check_gradients(SMALL);
}

#[test]
fn swiglu_gradients_match_finite_differences() {
    check_gradients(Config { swiglu: true, ..SMALL });
}

fn check_gradients(c: Config) {
    let params = init_params(&c, 1).iter().map(|x| x * 5.0).collect::<Vec<f32>>(); // larger weights: larger gradients
    let (x, y, b, t) = batch();
    let (_, acts) = forward(&c, &params, &x, &y, b, t);
    let g = backward(&c, &params, &acts);
    let p = ParamLayout::new(&c);
    let starts = [p.wte, p.wpe, p.ln1w, p.ln1b, p.qkvw, p.qkvb, p.attprojw, p.attprojb, p.ln2w, p.ln2b, p.fcw, p.fcb, p.fcprojw, p.fcprojb, p.lnfw, p.lnfb, p.total];
    let names = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"];
    let eps = 3e-3f32;
    for (ti, name) in names.iter().enumerate() {
        let (lo, hi) = (starts[ti], starts[ti + 1]);
        // Three entries of each tensor, spread over it.
        for idx in [lo, lo + (hi - lo) / 3, hi - 1] {
            let mut plus = params.clone();
            plus[idx] += eps;
            let mut minus = params.clone();
            minus[idx] -= eps;
            let fd = (forward(&c, &plus, &x, &y, b, t).0 as f64 - forward(&c, &minus, &x, &y, b, t).0 as f64) / (2.0 * eps as f64);
            let an = g[idx] as f64;
            assert!((an - fd).abs() <= 2e-3 + 5e-2 * fd.abs(), "{name}[{}]: analytic {an:e} vs finite difference {fd:e}", idx - lo);
        }
    }
}

#[test]
fn adamw_lowers_the_loss_of_a_repeated_batch() {
    let c = SMALL;
    let mut params = init_params(&c, 2);
    let (x, y, b, t) = batch();
    let mut opt = AdamW::new(params.len());
    let first = forward(&c, &params, &x, &y, b, t).0;
    assert!((first - (37f32).ln()).abs() < 0.3, "initial loss {first} should be near ln(V)");
    let mut last = first;
    for _ in 0..30 {
        let (loss, acts) = forward(&c, &params, &x, &y, b, t);
        let g = backward(&c, &params, &acts);
        opt.update(&mut params, &g, 1e-2, 0.9, 0.999, 1e-8, 0.0);
        last = loss;
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
