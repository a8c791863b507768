//! The `twofour` command-line tool. `twofour demo` prunes, compresses and multiplies a random
//! matrix on the GPU and checks every step against the CPU reference.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use twofour::reference::{self, philox::normal_bf16};
use twofour::{prune24_compress, sparse_mma_naive, Device, DeviceMatrix, Error, MetaReading};

#[derive(Parser)]
#[command(name = "twofour", version, about = "2:4 structured sparsity on NVIDIA tensor cores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prune + compress a random matrix on the GPU, multiply it with mma.sp, check against the CPU.
    Demo {
        /// Rows of the sparse matrix (a multiple of 16).
        #[arg(long, default_value_t = 256)]
        m: usize,
        /// Columns of the result (a multiple of 8).
        #[arg(long, default_value_t = 128)]
        n: usize,
        /// Reduction dimension, the 2:4 axis (a multiple of 32).
        #[arg(long, default_value_t = 512)]
        k: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Show the GPU and the kernels' resource report.
    Info,
    /// Compare masks on a random matrix (CPU): kept L1 of the optimal transposable mask, the greedy
    /// 4x4 heuristic, and plain row-wise 2:4 (not transposable, an upper bound).
    MaskQuality {
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        #[arg(long, default_value_t = 1024)]
        cols: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Prune chosen weights of a safetensors file to transposable 2:4 (the GPU if present, else the
    /// CPU reference); reports kept L1 and time per tensor; writes OUT atomically.
    Prune {
        input: PathBuf,
        output: PathBuf,
        /// Substrings of the tensor names to prune (default: FFN weights).
        #[arg(long)]
        select: Vec<String>,
    },
    /// Check that the chosen tensors of a file are 2:4 along rows and transposable 2:4.
    Check {
        input: PathBuf,
        #[arg(long)]
        select: Vec<String>,
    },
    /// Compress the chosen (transposable 2:4) tensors into the tensor-core layout: NAME.values,
    /// NAME.meta, NAME.mask and the same for W^T as NAME.t.*; writes OUT atomically.
    Compress {
        input: PathBuf,
        output: PathBuf,
        #[arg(long)]
        select: Vec<String>,
    },
    /// Multiply one 2:4 tensor W with random activations on the GPU (Y = X W^T, wgmma.sp), report
    /// the time and the error against the f64 reference on a sample of tokens.
    Multiply {
        input: PathBuf,
        #[arg(long)]
        tensor: String,
        #[arg(long, default_value_t = 8192)]
        tokens: usize,
    },
    /// Draw the 90 transposable 4x4 patterns as a PNG.
    PlotPatterns { png: std::path::PathBuf },
    /// Plot a `gemm` bench JSON file (speedup over cuBLAS per shape and pass) as a PNG.
    PlotGemm {
        json: std::path::PathBuf,
        png: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { m, n, k, seed } => demo(m, n, k, seed),
        Command::Info => info(),
        Command::PlotGemm { json, png } => twofour::plot::plot_gemm(&json, &png),
        Command::PlotPatterns { png } => twofour::plot::plot_patterns(&png),
        Command::MaskQuality { rows, cols, seed } => mask_quality(rows, cols, seed),
        Command::Prune { input, output, select } => prune(&input, &output, &select),
        Command::Check { input, select } => check(&input, &select),
        Command::Compress { input, output, select } => compress(&input, &output, &select),
        Command::Multiply { input, tensor, tokens } => multiply(&input, &tensor, tokens),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::NoGpu(why)) => {
            eprintln!("twofour: no CUDA GPU here ({why}).");
            eprintln!("The GPU demo needs an NVIDIA GPU of compute capability 8.0+ and its driver.");
            eprintln!("Everything else (the CPU reference and its tests) runs without one: scripts/test.sh");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("twofour: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> twofour::Result<()> {
    println!("{}", twofour::kernels::PTXAS_REPORT);
    let dev = Device::new(0)?;
    let (ma, mi) = dev.compute_capability();
    println!("GPU 0: {} (compute capability {ma}.{mi}), kernels: {:?}", dev.name(), dev.image());
    Ok(())
}

fn demo(m: usize, n: usize, k: usize, seed: u64) -> twofour::Result<()> {
    let dev = Device::new(0)?;
    println!("GPU: {} (sm_{}{})", dev.name(), dev.compute_capability().0, dev.compute_capability().1);
    let w = normal_bf16(seed, m * k);
    let x = normal_bf16(seed + 1, n * k);

    let t = std::time::Instant::now();
    let w_gpu = DeviceMatrix::from_host(&dev, m, k, &w)?;
    let sparse = prune24_compress(&dev, &w_gpu)?;
    let got = sparse.to_host(&dev)?;
    let (pruned, mask) = reference::prune24_rows(&w, m, k)?;
    let want = reference::compress(&pruned, m, k, &mask)?;
    let same = got == want;
    println!("prune + compress {m} x {k} on the GPU: {} (values, metadata and mask bit-equal to the CPU reference)", verdict(same));

    let x_gpu = DeviceMatrix::from_host(&dev, n, k, &x)?;
    let mut d = DeviceMatrix::<f32>::poisoned(&dev, m, n)?;
    sparse_mma_naive(&dev, &sparse, &x_gpu, &mut d, MetaReading::Documented)?;
    let d = d.to_host(&dev)?;
    // D = W_pruned X^T: the reference multiplies the decompressed matrix densely in f64.
    let dense = reference::decompress(&got)?;
    let want_d = reference::linear_forward(&x, &dense, n, k, m)?; // n x m = D^T
    let (mut err, mut norm) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let (g, r) = (d[i * n + j] as f64, want_d[j * m + i] as f64);
            err += (g - r) * (g - r);
            norm += r * r;
        }
    }
    let rel = (err / norm).sqrt();
    let ok = rel.is_finite() && rel < 1e-4; // f32 accumulation of exact bf16 products
    println!("sparse GEMM (mma.sp) {m} x {n} x {k}: relative error {rel:.2e} vs f64 dense GEMM of the pruned matrix: {}", verdict(ok));
    println!("done in {:.2?}", t.elapsed());
    if same && ok {
        Ok(())
    } else {
        Err(twofour::Error::InvalidData { op: "demo", detail: "the GPU result differs from the CPU reference".into() })
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "MISMATCH"
    }
}

fn mask_quality(rows: usize, cols: usize, seed: u64) -> twofour::Result<()> {
    use twofour::reference::transposable::{greedy_mask, kept_l1};
    let w = normal_bf16(seed, rows * cols);
    let total: f64 = w.iter().map(|x| x.to_f64().abs()).sum();
    let (opt, _) = reference::transposable_mask(&w, rows, cols)?;
    let greedy = greedy_mask(&w, rows, cols)?;
    let (_, row24) = reference::prune24_rows(&w, rows, cols)?;
    let (lo, lg, lr) = (kept_l1(&w, &opt), kept_l1(&w, &greedy), kept_l1(&w, &row24));
    let short = (0..rows).flat_map(|r| (0..cols / 4).map(move |q| (r, q))).filter(|&(r, q)| (0..4).filter(|&j| greedy.get(r, 4 * q + j)).count() != 2).count();
    println!("random normal {rows} x {cols} (seed {seed}), kept share of total L1:");
    println!("  row-wise 2:4 (not transposable, upper bound): {:.4}", lr / total);
    println!("  optimal transposable (twofour):               {:.4}", lo / total);
    println!("  greedy 4x4 (Hubara et al.; PyTorch's tile):   {:.4}  ({} row groups keep fewer than 2)", lg / total, short);
    println!("  optimal keeps {:+.2}% more L1 than greedy", 100.0 * (lo / lg - 1.0));
    Ok(())
}

use twofour::tensors::{self, Tensor};

/// The selected 2-D tensors with their bf16 values; others are reported and skipped.
fn chosen(all: &[Tensor], select: &[String]) -> Vec<(usize, usize, usize, Vec<half::bf16>)> {
    let mut out = Vec::new();
    for (i, t) in all.iter().enumerate() {
        if !tensors::selected(&t.name, select) {
            continue;
        }
        match (t.matrix(), t.to_bf16()) {
            (Some((r, c)), Some(v)) if r % 4 == 0 && c % 4 == 0 => out.push((i, r, c, v)),
            (Some((r, c)), Some(_)) => println!("  skip {}: {r} x {c} is not a multiple of 4 both ways", t.name),
            _ => println!("  skip {}: not a 2-D bf16/f16/f32 tensor ({:?} {:?})", t.name, t.dtype, t.shape),
        }
    }
    out
}

fn prune(input: &std::path::Path, output: &std::path::Path, select: &[String]) -> twofour::Result<()> {
    let mut all = tensors::load(input)?;
    let dev = Device::new(0).ok();
    println!("pruning to transposable 2:4 on {}", dev.as_ref().map_or("the CPU reference (no GPU)".to_string(), |d| d.name().to_string()));
    let picked = chosen(&all, select);
    if picked.is_empty() {
        println!("no tensor selected (use --select NAME-SUBSTRING)");
    }
    for (i, r, c, v) in picked {
        let t0 = std::time::Instant::now();
        let mask = match (&dev, r % 32 == 0 && c % 32 == 0) {
            (Some(d), true) => {
                let (sw, _) = twofour::transposable_mask_compress(d, &DeviceMatrix::from_host(d, r, c, &v)?)?;
                sw.to_host(d)?.mask
            }
            _ => reference::transposable_mask(&v, r, c)?.0,
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let total: f64 = v.iter().map(|x| x.to_f64().abs()).sum();
        let kept = reference::transposable::kept_l1(&v, &mask);
        all[i].zero_where(|k| mask.get(k / c, k % c));
        println!("  {:<40} {r:>6} x {c:<6} kept L1 {:.4}  {ms:8.2} ms (incl. copies)", all[i].name, kept / total.max(f64::MIN_POSITIVE));
    }
    tensors::save(output, &all)?;
    println!("wrote {}", output.display());
    Ok(())
}

fn check(input: &std::path::Path, select: &[String]) -> twofour::Result<()> {
    let all = tensors::load(input)?;
    let mut bad = 0;
    for (i, r, c, v) in chosen(&all, select) {
        let mut m = twofour::BitMask::zeros(r, c);
        for (k, x) in v.iter().enumerate() {
            if x.to_f32() != 0.0 {
                m.set(k / c, k % c, true);
            }
        }
        // At most two non-zeros per group is 2:4 (a kept weight may be zero).
        let at_most_two = |m: &twofour::BitMask| (0..m.rows()).all(|rr| (0..m.cols() / 4).all(|q| (0..4).filter(|&j| m.get(rr, 4 * q + j)).count() <= 2));
        let rows24 = at_most_two(&m);
        let cols24 = at_most_two(&m.transpose());
        if !(rows24 && cols24) {
            bad += 1;
        }
        println!("  {:<40} {r:>6} x {c:<6} 2:4 rows: {:<5} transposable: {}", all[i].name, rows24, rows24 && cols24);
    }
    if bad > 0 {
        return Err(Error::InvalidData { op: "check", detail: format!("{bad} selected tensor(s) are not transposable 2:4; run `twofour prune` first") });
    }
    Ok(())
}

fn compress(input: &std::path::Path, output: &std::path::Path, select: &[String]) -> twofour::Result<()> {
    let all = tensors::load(input)?;
    let mut out = Vec::new();
    let u32_bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bf_bytes = |w: &[half::bf16]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (i, r, c, v) in chosen(&all, select) {
        let name = &all[i].name;
        // The mask of a pruned tensor: the transposable mask of its values keeps every non-zero
        // (the optimum keeps all non-zeros when at most two per row and column are non-zero).
        let (mask, _) = reference::transposable_mask(&v, r, c)?;
        if v.iter().enumerate().any(|(k, x)| x.to_f32() != 0.0 && !mask.get(k / c, k % c)) {
            return Err(Error::InvalidData { op: "compress", detail: format!("{name} is not transposable 2:4; run `twofour prune` first") });
        }
        for (suffix, s) in [("", reference::compress(&v, r, c, &mask)?), (".t", reference::compress_transposed(&v, r, c, &mask)?)] {
            let (rows, cols) = (s.rows, s.cols);
            out.push(Tensor { name: format!("{name}{suffix}.values"), dtype: safetensors::Dtype::BF16, shape: vec![rows, cols / 2], data: bf_bytes(&s.values) });
            out.push(Tensor { name: format!("{name}{suffix}.meta"), dtype: safetensors::Dtype::U32, shape: vec![s.meta.len()], data: u32_bytes(&s.meta) });
            out.push(Tensor { name: format!("{name}{suffix}.mask"), dtype: safetensors::Dtype::U32, shape: vec![rows, cols / 32], data: u32_bytes(s.mask.words()) });
        }
        println!("  compressed {name} ({r} x {c}) and its transpose");
    }
    tensors::save(output, &out)?;
    println!("wrote {}", output.display());
    Ok(())
}

fn multiply(input: &std::path::Path, tensor: &str, tokens: usize) -> twofour::Result<()> {
    let all = tensors::load(input)?;
    let t = all.iter().find(|t| t.name == tensor).ok_or_else(|| Error::InvalidData { op: "multiply", detail: format!("no tensor named {tensor} in {}", input.display()) })?;
    let (r, c) = t.matrix().ok_or_else(|| Error::InvalidData { op: "multiply", detail: format!("{tensor} is not 2-D") })?;
    let v = t.to_bf16().ok_or_else(|| Error::InvalidData { op: "multiply", detail: format!("{tensor} is not bf16/f16/f32") })?;
    let dev = Device::new(0)?;
    let (mask, _) = reference::transposable_mask(&v, r, c)?;
    let s = reference::compress(&v, r, c, &mask)?;
    let dense = reference::decompress(&s)?;
    if dense != v {
        return Err(Error::InvalidData { op: "multiply", detail: format!("{tensor} is not 2:4; run `twofour prune` first") });
    }
    let w = twofour::Sparse24::from_host(&dev, &s)?;
    let x = normal_bf16(3, tokens * c);
    let xd = DeviceMatrix::from_host(&dev, tokens, c, &x)?;
    let mut y = DeviceMatrix::<half::bf16>::poisoned(&dev, tokens, r)?;
    let layer = twofour::SparseLinear::new(c, r);
    layer.forward(&dev, &w, &xd, None, &mut y)?;
    let mut flush = dev.stream().alloc_zeros::<u8>(twofour::timing::FLUSH_BYTES).map_err(|e| Error::Driver { during: "allocating".into(), source: e })?;
    let times = twofour::timing::time_calls(&dev, 3, 20, Some(&mut flush), || layer.forward(&dev, &w, &xd, None, &mut y))?;
    let ms = twofour::timing::median(&times);
    let got = y.to_host(&dev)?;
    let sample = tokens.min(16);
    let want = reference::linear_forward(&x[..sample * c], &v, sample, c, r)?;
    let (mut e, mut n) = (0f64, 0f64);
    for (g, w) in got[..sample * r].iter().zip(&want) {
        e += (g.to_f64() - *w as f64).powi(2);
        n += (*w as f64).powi(2);
    }
    println!("Y = X W^T for {tensor} ({r} x {c}) with {tokens} random tokens on {}: {ms:.3} ms, {:.0} TFLOP/s dense-equivalent; relative error on {sample} tokens {:.2e}", dev.name(), 2.0 * (tokens * r * c) as f64 / ms / 1e9, (e / n).sqrt());
    Ok(())
}
