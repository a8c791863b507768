//! Property tests of the CPU reference (no GPU needed).

use half::bf16;
use proptest::prelude::*;
use twofour::reference::{self, mvue, philox, transposable};
use twofour::{BitMask, Error, MatLayout};

fn bf16_vec(len: usize) -> impl Strategy<Value = Vec<bf16>> {
    // Finite values across a wide range, with repeats (ties) made likely by a small pool.
    prop::collection::vec(
        prop_oneof![
            4 => (-1000.0f32..1000.0).prop_map(bf16::from_f32),
            1 => prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 0.5, 3.0]).prop_map(bf16::from_f32),
        ],
        len,
    )
}

/// (rows, cols, data) with rows a multiple of `rm` and cols a multiple of `cm`.
fn matrix(rm: usize, cm: usize, max_r: usize, max_c: usize) -> impl Strategy<Value = (usize, usize, Vec<bf16>)> {
    (1..=max_r, 1..=max_c).prop_flat_map(move |(r, c)| (Just(r * rm), Just(c * cm), bf16_vec(r * rm * c * cm)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prune_keeps_two_largest_of_every_four((rows, cols, w) in matrix(1, 4, 8, 16)) {
        let (p, mask) = reference::prune24_rows(&w, rows, cols).unwrap();
        prop_assert!(mask.is_24_rows());
        for r in 0..rows {
            for q in 0..cols / 4 {
                let g = &w[r * cols + 4 * q..r * cols + 4 * q + 4];
                let kept: Vec<usize> = (0..4).filter(|&j| mask.get(r, 4 * q + j)).collect();
                let min_kept = kept.iter().map(|&j| g[j].to_f32().abs()).fold(f32::INFINITY, f32::min);
                for j in (0..4).filter(|j| !kept.contains(j)) {
                    prop_assert!(g[j].to_f32().abs() <= min_kept);
                    prop_assert_eq!(p[r * cols + 4 * q + j].to_bits(), 0);
                }
            }
        }
    }

    #[test]
    fn compress_then_decompress_is_identity((rows, cols, w) in matrix(16, 32, 4, 4)) {
        let (p, mask) = reference::prune24_rows(&w, rows, cols).unwrap();
        let s = reference::compress(&p, rows, cols, &mask).unwrap();
        prop_assert_eq!(s.values.len(), rows * cols / 2);
        let back = reference::decompress(&s).unwrap();
        prop_assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), p.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn transposable_mask_is_24_both_ways_and_optimal((rows, cols, w) in matrix(4, 4, 6, 6)) {
        let (mask, _) = reference::transposable_mask(&w, rows, cols).unwrap();
        prop_assert!(mask.is_24_rows());
        prop_assert!(mask.transpose().is_24_rows());
        // Brute force: every row-wise 2:4 choice of each block (6^4), kept when also 2:4 by columns.
        for br in 0..rows / 4 {
            for bc in 0..cols / 4 {
                let at = |r: usize, c: usize| w[(4 * br + r) * cols + 4 * bc + c].to_f32().abs();
                let mut best = f32::NEG_INFINITY;
                let mut n_valid = 0;
                for choice in 0..6usize.pow(4) {
                    let rows_pick: Vec<(usize, usize)> = (0..4).map(|r| transposable::PAIRS[choice / 6usize.pow(r as u32) % 6]).collect();
                    let col_count = |c: usize| rows_pick.iter().filter(|&&(i, j)| i == c || j == c).count();
                    if (0..4).all(|c| col_count(c) == 2) {
                        n_valid += 1;
                        // Same summation order as the reference: row pair sums, then rows in order.
                        let rs: Vec<f32> = rows_pick.iter().enumerate().map(|(r, &(i, j))| at(r, i) + at(r, j)).collect();
                        best = best.max(((rs[0] + rs[1]) + rs[2]) + rs[3]);
                    }
                }
                prop_assert_eq!(n_valid, 90);
                let rs: Vec<f32> = (0..4).map(|r| {
                    let k: Vec<usize> = (0..4).filter(|&c| mask.get(4 * br + r, 4 * bc + c)).collect();
                    at(r, k[0]) + at(r, k[1])
                }).collect();
                prop_assert_eq!(((rs[0] + rs[1]) + rs[2]) + rs[3], best);
            }
        }
    }

    #[test]
    fn transposed_compression_matches_compressing_the_transpose((rows, cols, w) in matrix(32, 32, 2, 2)) {
        let (mask, _) = reference::transposable_mask(&w, rows, cols).unwrap();
        let mut wt = vec![bf16::ZERO; w.len()];
        for r in 0..rows { for c in 0..cols { wt[c * rows + r] = w[r * cols + c]; } }
        let a = reference::compress_transposed(&w, rows, cols, &mask).unwrap();
        let b = reference::compress(&wt, cols, rows, &mask.transpose()).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn pruned_gemm_equals_dense_gemm_of_pruned((rows, cols, w) in matrix(16, 32, 2, 2), n in 1usize..6, seed in any::<u64>()) {
        let x = philox::normal_bf16(seed, n * cols);
        let (p, mask) = reference::prune24_rows(&w, rows, cols).unwrap();
        let s = reference::compress(&p, rows, cols, &mask).unwrap();
        // Sparse product straight from values + metadata, no decompression.
        let mut y = vec![0f64; n * rows];
        for t in 0..n { for r in 0..rows { for c16 in (0..cols).step_by(16) {
            let (word, shift) = twofour::layout::meta_position(r, c16, cols);
            for q in 0..4 {
                let nib = (s.meta[word] >> shift) >> (4 * q) & 0xf;
                for (slot, idx) in [(0, nib & 3), (1, nib >> 2)] {
                    let v = s.values[r * cols / 2 + c16 / 2 + 2 * q + slot].to_f64();
                    y[t * rows + r] += v * x[t * cols + c16 + 4 * q + idx as usize].to_f64();
                }
            }
        }}}
        let dense = reference::linear_forward(&x, &p, n, cols, rows).unwrap();
        for (a, b) in y.iter().zip(&dense) { prop_assert!((*a as f32 - b).abs() <= 1e-6 * b.abs().max(1.0)); }
    }

    #[test]
    fn mvue_is_always_24_and_never_keeps_more((rows, cols, a) in matrix(1, 4, 8, 8), seed in any::<u64>(), step in any::<u32>()) {
        let s = reference::mvue24_f32(&a, rows, cols, seed, step).unwrap();
        for (g, src) in s.chunks(4).zip(a.chunks(4)) {
            prop_assert!(g.iter().filter(|v| **v != 0.0).count() <= 2);
            // A kept value has the sign of its source and at least its magnitude (p <= 1).
            for (v, x) in g.iter().zip(src) {
                if *v != 0.0 { prop_assert!(v.signum() == x.to_f32().signum() && v.abs() >= x.to_f32().abs() * (1.0 - 1e-6)); }
            }
        }
    }

    #[test]
    fn inclusion_probabilities_sum_to_two(a in prop::array::uniform4(-100.0f32..100.0)) {
        let p = mvue::inclusion_probabilities(a);
        prop_assert!((p.iter().sum::<f32>() - 2.0).abs() < 1e-5);
        prop_assert!(p.iter().all(|&x| (0.0..=1.0 + 1e-6).contains(&x)));
    }
}

#[test]
fn there_are_90_distinct_transposable_patterns() {
    let p = transposable::patterns();
    let mut v = p.to_vec();
    v.sort_unstable();
    v.dedup();
    assert_eq!(v.len(), 90);
}

/// E[S(a)] = a: the mean over 20000 fixed seeds is within 4 standard errors of a, per element.
#[test]
fn mvue_is_unbiased() {
    let a: Vec<bf16> = [3.0, -1.0, 0.25, 0.0, 1.0, 1.0, 1.0, 1.0, 10.0, 0.1, -0.2, 0.3, -5.0, 4.0, 0.0, 0.0]
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let n = 20_000;
    let (mut sum, mut sq) = (vec![0f64; 16], vec![0f64; 16]);
    for s in 0..n {
        let out = reference::mvue24_f32(&a, 4, 4, 0xC0FFEE, s as u32).unwrap();
        for i in 0..16 {
            sum[i] += out[i] as f64;
            sq[i] += (out[i] as f64).powi(2);
        }
    }
    for i in 0..16 {
        let mean = sum[i] / n as f64;
        let var = (sq[i] / n as f64 - mean * mean).max(0.0);
        let se = (var / n as f64).sqrt();
        let want = a[i].to_f64();
        assert!((mean - want).abs() <= 4.0 * se + 1e-9, "element {i}: mean {mean} vs {want} (se {se})");
    }
}

#[test]
fn gated_backward_matches_finite_differences() {
    for gate in [reference::Gate::SwiGlu, reference::Gate::GeGlu] {
        for &x in &[-3.0f64, -0.5, 0.0, 0.7, 2.5] {
            let h = 1e-6;
            let fd = (gate.act(x + h).0 - gate.act(x - h).0) / (2.0 * h);
            assert!((fd - gate.act(x).1).abs() < 1e-6, "{gate:?} at {x}");
        }
    }
}

/// GPT-2's GELU backward: dY = gelu'(x) dA, gelu' by central differences of gelu, elementwise;
/// unequal lengths are a shape error.
#[test]
fn gelu_backward_is_the_derivative_times_da() {
    let x: Vec<bf16> = [-4.0f32, -1.25, -0.5, 0.0, 0.375, 1.5, 3.0].iter().map(|&v| bf16::from_f32(v)).collect();
    let da: Vec<bf16> = [0.5f32, -2.0, 1.0, 3.0, -0.25, 1.5, -1.0].iter().map(|&v| bf16::from_f32(v)).collect();
    let dy = reference::gelu_backward(&x, &da).unwrap();
    let gelu = |v: f64| reference::Gate::GeGlu.act(v).0;
    for ((&xi, &di), &got) in x.iter().zip(&da).zip(&dy) {
        let (v, h) = (xi.to_f64(), 1e-6);
        let want = (gelu(v + h) - gelu(v - h)) / (2.0 * h) * di.to_f64();
        assert!((got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "x {v}: {got} vs {want}");
    }
    assert!(matches!(reference::gelu_backward(&x, &da[..3]), Err(Error::Shape { .. })));
}

#[test]
fn masked_decay_touches_only_pruned_weights_and_flip_rate_counts() {
    let mut mask = BitMask::zeros(2, 4);
    mask.set(0, 1, true);
    mask.set(1, 3, true);
    let w = vec![1.0f32; 8];
    let mut g = vec![0.5f32; 8];
    reference::masked_decay(&mut g, &w, &mask, 0.1).unwrap();
    assert_eq!(g[1], 0.5);
    assert_eq!(g[7], 0.5);
    assert!((g[0] - 0.6).abs() < 1e-7);
    let mut other = mask.clone();
    other.set(0, 0, true);
    assert_eq!(reference::flip_rate(&mask, &other).unwrap(), 1.0 / 8.0);
}

#[test]
fn bad_shapes_give_typed_errors() {
    let w = vec![bf16::ONE; 30];
    assert!(matches!(reference::prune24_rows(&w, 5, 6), Err(Error::Unsupported { .. })));
    assert!(matches!(reference::transposable_mask(&w, 5, 6), Err(Error::Unsupported { .. })));
    assert!(matches!(reference::linear_forward(&w, &w, 3, 10, 4), Err(Error::Shape { .. })));
    let m = BitMask::zeros(16, 32);
    assert!(matches!(reference::compress(&vec![bf16::ONE; 512], 16, 32, &m), Err(Error::InvalidData { .. })));
    assert!(matches!(reference::compress(&w, 16, 30, &m), Err(Error::Unsupported { .. })));
    assert!(matches!(reference::matmul(&w, MatLayout::RowMajor, &w, MatLayout::RowMajor, 2, 2, 2), Err(Error::Shape { .. })));
    assert!(matches!(reference::flip_rate(&m, &BitMask::zeros(16, 64)), Err(Error::Shape { .. })));
    let mut nan = vec![bf16::ONE; 16];
    nan[3] = bf16::NAN;
    assert!(matches!(reference::transposable_mask(&nan, 4, 4), Err(Error::InvalidData { .. })));
}

/// Without a driver the library answers a typed error; with a GPU it opens it. Never a panic.
#[test]
fn device_open_is_typed() {
    match twofour::Device::new(0) {
        Ok(dev) => assert!(dev.compute_capability().0 >= 8),
        Err(Error::NoGpu(_) | Error::GpuTooOld { .. }) => {}
        Err(e) => panic!("unexpected error opening the GPU: {e}"),
    }
}

/// The embedded H100 shape table parses and was measured with this kernel build (re-run
/// `twofour-tune` and replace tables/h100.json after changing anything under cuda/).
#[test]
fn embedded_shape_table_fits_this_build() {
    let t = twofour::ShapeTable::parse(include_str!("../tables/h100.json"), "tables/h100.json").unwrap();
    assert_eq!(t.gpu, "NVIDIA H100 80GB HBM3");
    assert_eq!(t.kernels_hash, twofour::shape_table::kernels_hash(), "tables/h100.json is stale: re-tune on an H100");
    // Fallback: an untuned shape takes the nearest tuned shape's configuration.
    let e = t.entries.iter().find(|e| e.config.is_some()).expect("GEMM entries");
    assert_eq!(t.lookup(&e.kernel, &e.layout, e.m + 16, e.n, e.k), e.config);
    // Launch shapes of the memory-bound kernels are in it too, and fall back the same way.
    for kernel in ["mask24_search", "mask24_apply", "mvue24", "gated_forward", "gated_backward"] {
        let e = t.entries.iter().find(|e| e.kernel == kernel).unwrap_or_else(|| panic!("no {kernel} entry"));
        assert_eq!(t.lookup_launch(kernel, &e.layout, e.m, e.n), e.launch);
        assert!(t.lookup_launch(kernel, &e.layout, e.m * 2 + 32, e.n).is_some(), "{kernel}: an untuned shape falls back");
    }
}

/// Table entries: a GEMM entry written before launch shapes existed still parses; a launch entry
/// round-trips; lookups pick the nearest tuned shape of the same kernel and layout only.
#[test]
fn shape_table_entries_and_fallback() {
    use twofour::shape_table::TableEntry;
    use twofour::LaunchShape;
    let old = r#"{"version":1,"gpu":"G","compute_capability":[9,0],"driver":"","twofour_version":"0.1.0","kernels_hash":"x",
        "entries":[{"kernel":"sparse_gemm","layout":"kmajor-colmajor","pass":"p","m":1024,"n":4096,"k":1024,
        "config":{"bn":256,"stages":4,"group_m":8,"schedule":"DataParallel"},"ms":0.1,"default_ms":0.2}]}"#;
    let mut t = twofour::ShapeTable::parse(old, "old").unwrap();
    assert!(t.entries[0].config.is_some() && t.entries[0].launch.is_none());
    let shape = |block, blocks_per_sm| LaunchShape { block, blocks_per_sm };
    let entry = |m: usize, n: usize, l: LaunchShape| TableEntry { kernel: "mvue24".into(), layout: "row-major".into(), pass: "x".into(), m, n, k: 0, config: None, launch: Some(l), ms: 1.0, default_ms: 1.0 };
    t.insert(entry(16384, 1024, shape(64, 8)));
    t.insert(entry(16384, 4096, shape(256, 0)));
    let back = twofour::ShapeTable::parse(&serde_json::to_string(&t).unwrap(), "round trip").unwrap();
    assert_eq!(back, t);
    assert_eq!(t.lookup_launch("mvue24", "row-major", 16384, 1024), Some(shape(64, 8)));
    assert_eq!(t.lookup_launch("mvue24", "row-major", 16384, 3072), Some(shape(256, 0)), "nearest in log2 distance");
    assert_eq!(t.lookup_launch("mask24_search", "row-major", 16384, 1024), None, "other kernels do not count");
    assert_eq!(t.lookup("sparse_gemm", "kmajor-colmajor", 1000, 4000, 1000).map(|c| c.bn), Some(256), "launch entries do not disturb the GEMM lookup");
    // Grids: the cap is in blocks per multiprocessor, 0 means one work item per thread or warp.
    assert_eq!(shape(128, 0).grid(1000, 4, 132), 250);
    assert_eq!(shape(128, 1).grid(1000, 4, 132), 132);
    assert_eq!(LaunchShape::candidates(twofour::launch::Family::Gated).len(), 15);
}

/// `reference::matmul` (operands widened once, contiguous dot products) equals the textbook
/// triple loop bit for bit, in all four operand layouts and on empty shapes.
#[test]
fn matmul_is_the_triple_loop() {
    for (m, n, k, seed) in [(1, 1, 1, 1u64), (3, 5, 7, 2), (16, 8, 64, 3), (37, 29, 130, 4), (0, 4, 4, 5), (4, 0, 4, 6), (4, 4, 0, 7)] {
        let a = philox::normal_bf16(seed, m * k);
        let b = philox::normal_bf16(seed + 9, k * n);
        for al in [MatLayout::RowMajor, MatLayout::ColMajor] {
            for bl in [MatLayout::RowMajor, MatLayout::ColMajor] {
                let at = |i: usize, p: usize| if al == MatLayout::RowMajor { a[i * k + p] } else { a[p * m + i] };
                let bt = |p: usize, j: usize| if bl == MatLayout::RowMajor { b[p * n + j] } else { b[j * k + p] };
                let got = reference::matmul(&a, al, &b, bl, m, n, k).unwrap();
                assert_eq!(got.len(), m * n);
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).fold(0f64, |s, p| s + at(i, p).to_f64() * bt(p, j).to_f64()) as f32;
                        assert_eq!(got[i * n + j].to_bits(), want.to_bits(), "{m}x{n}x{k} {al:?} {bl:?} ({i}, {j})");
                    }
                }
            }
        }
    }
}

/// The AdamW reference's masked decay reaches the moments of pruned weights only: with no
/// gradient and empty moments, a kept weight's moments stay zero and it moves by its decoupled
/// decay alone; a pruned weight's first moment becomes (1 - beta1) lambda w.
#[test]
fn adamw_masked_decays_only_pruned_weights() {
    use twofour::reference::{adamw_masked, AdamWStep};
    let mut mask = twofour::BitMask::zeros(4, 4);
    for c in [0, 2] {
        for r in 0..4 {
            mask.set(r, c, true);
        }
    }
    let mut w = vec![0.5f32; 16];
    let (mut m, mut v) = (vec![0f32; 16], vec![0f32; 16]);
    let step = AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, c1: 0.1, c2: 0.05, gscale: 1.0, lambda: 0.2 };
    adamw_masked(&mut w, &mut m, &mut v, &[0f32; 16], &mask, &step).unwrap();
    for i in 0..16 {
        if mask.get(i / 4, i % 4) {
            assert_eq!((m[i], v[i]), (0.0, 0.0), "kept weight {i}: no decay in its moments");
            assert_eq!(w[i], 0.5 - 0.01 * (0.1 * 0.5), "kept weight {i}: decoupled decay only");
        } else {
            assert_eq!(m[i], (1.0 - 0.9f32) * (0.2 * 0.5), "pruned weight {i}: masked decay in its first moment");
            assert!(w[i] < 0.5 - 0.01 * (0.1 * 0.5), "pruned weight {i}: pulled further towards zero");
        }
    }
    assert!(adamw_masked(&mut w, &mut m, &mut v, &[0f32; 15], &mask, &step).is_err(), "a gradient of the wrong length is a typed error");
}
