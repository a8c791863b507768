//! twofour's sparse GEMM vs cuBLASLt dense (and cuSPARSELt when bound) on transformer FFN shapes,
//! in the three GEMMs of a linear layer. One process, random bf16 data; our fastest instance is
//! picked first, then the three contenders run interleaved (one call each a round, L2 flushed
//! before each call, warm-up first) and each reports its median. TFLOP/s are dense-equivalent
//! (2 M N K / time).
//!
//!   gemm [--shapes name:tokens:d_in:d_out,...] [--json PATH] [--reps N] [--all-configs] [--max-cluster 1|2] [--no-stream-k]
//!        [--no-cusparselt]   (leave the cuSPARSELt peer out: for ncu, which it does not survive)
//!        [--cslt-alg ID]     (cuSPARSELt with that algorithm, no search: its first launch is the
//!                             timed kernel, for a profile; the bench prints the id each search keeps)
//!        [--select-reps N]   (rounds of our candidate instances, interleaved, to pick the fastest;
//!                             --reps is the head-to-head's rounds: one call of cuBLASLt, ours and
//!                             cuSPARSELt a round, interleaved, L2 flushed before each)
//!        [--pass fwd|dx|dw] [--config SUBSTRING]   (only that pass / the instances whose name, as
//!        --all-configs prints it, contains SUBSTRING: one kernel for ncu)
//!        [--group-m G,G,..] [--tail-pieces P,P,..]   (every candidate at each raster group, every
//!        stream-K one at each tail split; 0 is the library's choice, named _g / _p otherwise)
//! (cargo bench passes --bench, which is ignored.)

use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use half::bf16;
use std::io::Write;
use twofour::reference::philox::normal_bf16;
use twofour::shapes::{ffn_shapes, parse_shapes, LinearShape, Pass};
use twofour::timing::{interleaved, median, FLUSH_BYTES};
use twofour::peer::cusparselt::{CuSparseLt, Order};
use twofour::{prune24_compress, sparse_gemm, BOperand, Device, DeviceMatrix, GemmOptions, MatLayout, Schedule, TileConfig};

struct Args {
    shapes: Vec<LinearShape>,
    json: Option<String>,
    reps: usize,
    /// Interleaved rounds of our candidate instances when ours is picked (before the head-to-head).
    select_reps: usize,
    /// Also print every compiled instance's time (stderr), not only the best.
    all_configs: bool,
    /// Only instances with cluster_m at most this (1: skip the cluster instances, which the
    /// tuner never picked on the H100; halves the sweep's time).
    max_cluster: u32,
    /// Also time each single-CTA cooperative instance with the stream-K schedule.
    stream_k: bool,
    no_cusparselt: bool,
    /// cuSPARSELt's algorithm (config id) without a search.
    cslt_alg: Option<i32>,
    pass: Option<String>,
    config: Option<String>,
    /// Raster groups to try for every candidate (0: the library's choice).
    group_ms: Vec<u32>,
    /// Stream-K tail pieces to try for the stream-K candidates (0: the library's choice).
    tail_pieces: Vec<u32>,
}

/// A comma-separated list of numbers, for --group-m and --tail-pieces.
fn parse_list(s: &str) -> Vec<u32> {
    let v: Vec<u32> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    if v.is_empty() {
        eprintln!("expected a comma-separated list of numbers, got {s:?}");
        std::process::exit(2)
    }
    v
}

/// "bn256_s4_DataParallel", with "_c2" / "_pp" for the cluster and ping-pong instances and
/// "_g8" / "_p3" for a raster group and tail split other than the library's choice.
fn config_name(c: &TileConfig) -> String {
    let kind = if c.pingpong { "_pp" } else if c.cluster_m == 2 { "_c2" } else { "" };
    let g = if c.group_m > 0 { format!("_g{}", c.group_m) } else { String::new() };
    let p = if c.tail_pieces > 0 { format!("_p{}", c.tail_pieces) } else { String::new() };
    format!("bn{}_s{}{kind}_{:?}{g}{p}", c.bn, c.stages, c.schedule)
}

fn args() -> Args {
    let mut a = Args { shapes: ffn_shapes(), json: None, reps: 20, select_reps: 5, all_configs: false, max_cluster: 2, stream_k: true, no_cusparselt: false, cslt_alg: None, pass: None, config: None, group_ms: vec![0], tail_pieces: vec![0] };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        match v[i].as_str() {
            "--shapes" => {
                a.shapes = parse_shapes(&v[i + 1]).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(2)
                });
                i += 1;
            }
            "--json" => {
                a.json = Some(v[i + 1].clone());
                i += 1;
            }
            "--all-configs" => a.all_configs = true,
            // Stream-K candidates are measured by default (the library's table picks them on
            // partial-wave shapes); --stream-k is kept for old command lines.
            "--stream-k" => a.stream_k = true,
            "--no-stream-k" => a.stream_k = false,
            "--no-cusparselt" => a.no_cusparselt = true,
            "--cslt-alg" => {
                a.cslt_alg = v[i + 1].parse().ok();
                i += 1;
            }
            "--max-cluster" => {
                a.max_cluster = v[i + 1].parse().unwrap_or(2);
                i += 1;
            }
            "--pass" => {
                a.pass = v.get(i + 1).cloned();
                i += 1;
            }
            "--config" => {
                a.config = v.get(i + 1).cloned();
                i += 1;
            }
            "--group-m" => {
                a.group_ms = parse_list(&v[i + 1]);
                i += 1;
            }
            "--tail-pieces" => {
                a.tail_pieces = parse_list(&v[i + 1]);
                i += 1;
            }
            "--select-reps" => {
                a.select_reps = v[i + 1].parse().unwrap_or(5);
                i += 1;
            }
            "--reps" => {
                a.reps = v[i + 1].parse().unwrap_or(20);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    a
}

/// cuBLASLt bf16 GEMM (f32 accumulation) computing the dense version of `pass` for `s`, in the
/// column-major terms cuBLAS uses (row-major Y = X W^T is column-major Y^T = W X^T, and so on).
fn dense_config(s: &LinearShape, pass: Pass) -> MatmulConfig {
    let (t, i, o) = (s.tokens as u64, s.d_in as u64, s.d_out as u64);
    let base = MatmulConfig { transa: false, transb: false, transc: false, m: 0, n: 0, k: 0, alpha: 1.0, lda: 0, ldb: 0, beta: 0.0, ldc: 0, stride_a: None, stride_b: None, stride_c: None, stride_bias: None, batch_size: None };
    match pass {
        // Y^T (o x t) = W (o x i; stored row-major = col-major i x o, so transposed) * X^T (i x t)
        Pass::Forward => MatmulConfig { transa: true, m: o, n: t, k: i, lda: i as i64, ldb: i as i64, ldc: o as i64, ..base },
        // dX^T (i x t) = W^T (i x o, col-major view of W) * dY^T (o x t)
        Pass::GradInput => MatmulConfig { m: i, n: t, k: o, lda: i as i64, ldb: o as i64, ldc: i as i64, ..base },
        // dW^T (i x o) = X^T (i x t) * dY (t x o; col-major view is dY^T, so transposed)
        Pass::GradWeight => MatmulConfig { transb: true, m: i, n: o, k: t, lda: i as i64, ldb: o as i64, ldc: i as i64, ..base },
    }
}

fn main() {
    let a = args();
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gemm bench skipped: {e}");
            return;
        }
    };
    let blas = CudaBlasLT::new(dev.stream().clone()).expect("cuBLASLt");
    let mut flush = dev.stream().alloc_zeros::<u8>(FLUSH_BYTES).expect("flush buffer");
    let cslt = match if a.no_cusparselt { Err("left out (--no-cusparselt)".to_string()) } else { CuSparseLt::load() } {
        Ok(c) => {
            println!("cuSPARSELt version {}", c.version().unwrap_or(-1));
            Some(c)
        }
        Err(e) => {
            println!("cuSPARSELt peer unavailable: {e}");
            None
        }
    };
    let commit = option_env!("TWOFOUR_COMMIT").unwrap_or("unknown");
    println!("device: {}  commit: {commit}", dev.name());
    println!("{:<22} {:>4} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>7}  config", "shape", "pass", "M", "N", "K", "twofour", "cuBLAS", "cuSPLt", "x dense");
    let mut records = Vec::new();
    for s in &a.shapes {
        let x = DeviceMatrix::from_host(&dev, s.tokens, s.d_in, &normal_bf16(1, s.tokens * s.d_in)).unwrap();
        let w = DeviceMatrix::from_host(&dev, s.d_out, s.d_in, &normal_bf16(2, s.d_out * s.d_in)).unwrap();
        let dy = DeviceMatrix::from_host(&dev, s.tokens, s.d_out, &normal_bf16(3, s.tokens * s.d_out)).unwrap();
        let wt: Vec<bf16> = {
            let h = normal_bf16(2, s.d_out * s.d_in);
            let mut t = vec![bf16::ZERO; h.len()];
            for r in 0..s.d_out {
                for c in 0..s.d_in {
                    t[c * s.d_out + r] = h[r * s.d_in + c];
                }
            }
            t
        };
        let wt = DeviceMatrix::from_host(&dev, s.d_in, s.d_out, &wt).unwrap();
        let dyt = DeviceMatrix::from_host(&dev, s.d_out, s.tokens, &normal_bf16(4, s.tokens * s.d_out)).unwrap();
        for pass in Pass::ALL {
            if a.pass.as_ref().is_some_and(|p| p != pass.name()) {
                continue;
            }
            let (m, n, k) = s.mnk(pass);
            let flop = s.flops();
            // The dense peer's operands (cuBLASLt, column-major terms: dense_config).
            let (pa, pb) = match pass {
                Pass::Forward => (w.data(), x.data()),
                Pass::GradInput => (w.data(), dy.data()),
                Pass::GradWeight => (x.data(), dy.data()),
            };
            // 1. Our instance: every candidate in `select_reps` interleaved rounds (3 warm-up calls
            //    each first); the fastest median goes into the head-to-head. Forward and dX read B
            //    K-major and write D column-major (= Y, dX row-major); dW reads X N-major and writes
            //    dW row-major. A for dW stands in for S(dY)^T: a 2:4 matrix of the same shape
            //    (pruned random data; MVUE itself is benched separately).
            let (sparse, b_op, col) = match pass {
                Pass::Forward => (prune24_compress(&dev, &w).unwrap(), BOperand::KMajor(&x), true),
                Pass::GradInput => (prune24_compress(&dev, &wt).unwrap(), BOperand::KMajor(&dy), true),
                Pass::GradWeight => (prune24_compress(&dev, &dyt).unwrap(), BOperand::NMajor(&x), false),
            };
            let layout = if col { MatLayout::ColMajor } else { MatLayout::RowMajor };
            let mut d = if col { DeviceMatrix::<bf16>::poisoned(&dev, n, m) } else { DeviceMatrix::<bf16>::poisoned(&dev, m, n) }.unwrap();
            let sk = TileConfig::ALL
                .iter()
                .filter(|c| a.stream_k && !c.pingpong && c.cluster_m <= a.max_cluster)
                .flat_map(|c| a.tail_pieces.iter().map(move |&tail_pieces| TileConfig { schedule: Schedule::StreamK, tail_pieces, ..*c }));
            // The embedded shape table's pick for this shape (what a call without a config runs)
            // is a candidate too, when it is not one already (its raster group or stream-K split
            // may differ from the defaults).
            let b_n_major = matches!(b_op, BOperand::NMajor(_));
            let table_pick = twofour::shape_table::active(dev.name(), dev.compute_capability())
                .and_then(|t| t.lookup("sparse_gemm", &twofour::sparse_gemm::storage_layout(b_n_major, col), m, n, k));
            let mut candidates: Vec<TileConfig> = TileConfig::ALL
                .iter()
                .filter(|c| c.cluster_m <= a.max_cluster)
                .map(|c| TileConfig { schedule: Schedule::DataParallel, ..*c })
                .chain(sk)
                .flat_map(|c| a.group_ms.iter().map(move |&group_m| TileConfig { group_m, ..c }))
                .collect();
            if let Some(cfg) = table_pick.filter(|c| !candidates.contains(c)) {
                candidates.push(cfg);
            }
            candidates.retain(|cfg| a.config.as_ref().is_none_or(|sub| config_name(cfg).contains(sub.as_str())));
            // Interleaved like the head-to-head below: timed one after the other, the first
            // instances ran cooler and won picks they should not have.
            let sel = interleaved(&dev, 3, a.select_reps, candidates.len(), &mut flush, |i, _| {
                let opts = GemmOptions { d_layout: Some(layout), config: Some(candidates[i]), ..Default::default() };
                sparse_gemm(&dev, &sparse, b_op, &mut d, &opts)
            })
            .unwrap();
            let mut best: Option<(f64, TileConfig)> = None;
            let mut each_ms = Vec::new(); // (instance, ms) for --all-configs
            for (cfg, t) in candidates.iter().zip(&sel) {
                let ms = median(t);
                if a.all_configs {
                    let ctas = twofour::sparse_gemm::resident_ctas(&dev, *cfg, !col).unwrap_or(0);
                    eprintln!("  {} {} {} ({ctas} CTAs resident): {:.4} ms, {:.0} TFLOP/s", s.name, pass.name(), config_name(cfg), ms, flop / ms / 1e9);
                    each_ms.push(format!("\"{}\":{ms:.5}", config_name(cfg)));
                }
                if best.is_none_or(|b| ms < b.0) {
                    best = Some((ms, *cfg));
                }
            }
            // 2. cuSPARSELt on the same operands in the same layouts, planned with its search
            //    (MatmulSearch) unless --cslt-alg forces an algorithm.
            let (a_src, b_src, orders) = match pass {
                Pass::Forward => (&w, &x, (Order::Row, Order::Col, Order::Col)),
                Pass::GradInput => (&w, &dy, (Order::Col, Order::Col, Order::Col)),
                Pass::GradWeight => (&dy, &x, (Order::Col, Order::Row, Order::Row)),
            };
            let mut cslt_d = dev.stream().alloc_zeros::<bf16>(m * n).unwrap();
            // cuSPARSELt prunes A in place: a copy, kept alive as long as the plan.
            let mut a_copy = dev.stream().clone_dtod(a_src.data()).unwrap();
            let mut spmm = cslt.as_ref().and_then(|lib| {
                match lib.plan_alg(&dev, (m, n, k), orders, &mut a_copy, b_src.data(), &mut cslt_d, a.cslt_alg) {
                    Ok(spmm) => {
                        if let Ok((id, split_k, mode)) = lib.chosen(&spmm) {
                            println!("  cuSPARSELt {} {}: algorithm {id}, split-K {split_k} (mode {mode}), workspace {} B (default algorithm: {} B)", s.name, pass.name(), spmm.workspace_bytes().0, spmm.workspace_bytes().1);
                        }
                        Some(spmm)
                    }
                    Err(e) => {
                        println!("  cuSPARSELt {} {}: {e}", s.name, pass.name());
                        None
                    }
                }
            });
            // 3. Head-to-head: `reps` rounds, each one call of every contender (L2 flushed before
            //    each), the order rotating a round. Timing the contenders one after the other
            //    favoured whoever came first: on the H100 the same kernel runs up to ~15% slower
            //    after a few seconds of full load (docs/bench/notes.md, "Interleaved rounds").
            let mut c = dev.stream().alloc_zeros::<bf16>(m * n).unwrap();
            let cfg = dense_config(s, pass);
            let mut cslt_err: Option<String> = None;
            let ours_opts = best.map(|(_, cfg)| GemmOptions { d_layout: Some(layout), config: Some(cfg), ..Default::default() });
            let times = interleaved(&dev, 3, a.reps, 3, &mut flush, |i, _| match i {
                // SAFETY: buffer sizes match cfg's dimensions and leading dimensions.
                0 => unsafe { blas.matmul(cfg, pa, pb, &mut c, None, None) }.map_err(|e| twofour::Error::InvalidData { op: "cublasLt", detail: format!("{e:?}") }),
                1 => match &ours_opts {
                    Some(o) => sparse_gemm(&dev, &sparse, b_op, &mut d, o),
                    None => Ok(()),
                },
                _ => {
                    if let (Some(lib), Some(plan), None) = (cslt.as_ref(), spmm.as_mut(), cslt_err.as_ref()) {
                        if let Err(e) = lib.matmul(&dev, plan, b_src.data(), &mut cslt_d) {
                            cslt_err = Some(e);
                        }
                    }
                    Ok(())
                }
            });
            let times = match times {
                Ok(t) => t,
                Err(e) => {
                    // A fault (cuSPARSELt's kernel once raised an illegal address here) poisons the
                    // context: report it and stop with the records so far.
                    println!("  {} {}: {e} (stopping; the JSON holds the pairs before this one)", s.name, pass.name());
                    write_json(&a.json, &dev, commit, &records);
                    std::process::exit(1);
                }
            };
            let dense_tf = flop / median(&times[0]) / 1e9;
            let ours = best.map(|(_, cfg)| (median(&times[1]), cfg));
            let ours_tf = ours.map(|(ms, _)| flop / ms / 1e9);
            let cslt_tf = match (&spmm, &cslt_err) {
                (Some(_), None) => Some(flop / median(&times[2]) / 1e9),
                (_, Some(e)) => {
                    println!("  cuSPARSELt {} {}: {e}", s.name, pass.name());
                    None
                }
                _ => None,
            };
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
            println!(
                "{:<22} {:>4} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>7}  {}",
                s.name,
                pass.name(),
                m,
                n,
                k,
                fmt(ours_tf),
                format!("{dense_tf:.0}"),
                fmt(cslt_tf),
                ours_tf.map_or("-".into(), |o| format!("{:.2}", o / dense_tf)),
                ours.map_or("-".into(), |(_, c)| config_name(&c))
            );
            std::io::stdout().flush().ok();
            // With --all-configs, every instance's median ms too ("configs_ms"), for fitting
            // the stream-K cost model and the default's heuristics without parsing stderr.
            // Each contender's fastest and slowest call of the head-to-head (ms), so a reader
            // sees how far apart the medians are against the spread of one pair.
            let range = |t: &[f64]| {
                let lo = t.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = t.iter().copied().fold(0.0, f64::max);
                format!("[{lo:.5},{hi:.5}]")
            };
            let ranges_json = format!(
                ",\"ms_range\":{{\"cublas\":{}{}{}}}",
                range(&times[0]),
                if ours.is_some() { format!(",\"twofour\":{}", range(&times[1])) } else { String::new() },
                if cslt_tf.is_some() { format!(",\"cusparselt\":{}", range(&times[2])) } else { String::new() }
            );
            let each_json = if each_ms.is_empty() { String::new() } else { format!(",\"configs_ms\":{{{}}}", each_ms.join(",")) };
            records.push(format!(
                "{{\"name\":\"{}\",\"layout\":\"{}\",\"m\":{m},\"n\":{n},\"k\":{k},\"twofour_tflops\":{},\"cublas_tflops\":{dense_tf:.1},\"cusparselt_tflops\":{},\"twofour_config\":{}{ranges_json}{each_json}}}",
                s.name,
                pass.name(),
                ours_tf.map_or("null".into(), |v| format!("{v:.1}")),
                cslt_tf.map_or("null".into(), |v| format!("{v:.1}")),
                ours.map_or("null".into(), |(_, c)| format!("\"{}\"", config_name(&c)))
            ));
        }
        write_json(&a.json, &dev, commit, &records);
    }
    write_json(&a.json, &dev, commit, &records);
}

/// Writes the records so far (atomically: temp file + rename), so a cut-off run keeps its numbers.
fn write_json(path: &Option<String>, dev: &Device, commit: &str, records: &[String]) {
    if let Some(path) = path {
        // The command as run (arguments are shape lists, paths and flags: no quotes to escape).
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
        let body = format!(
            "{{\"device\":\"{}\",\"date\":\"{}\",\"commit\":\"{commit}\",\"command\":\"gemm {}\",\"records\":[\n{}\n]}}\n",
            dev.name(),
            std::env::var("BENCH_DATE").unwrap_or_default(),
            args.join(" ").replace(['"', '\\'], ""),
            records.join(",\n")
        );
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)).expect("writing the JSON");
    }
}
