//! The `twofour` command-line tool. `twofour demo` prunes, compresses and multiplies a random
//! matrix on the GPU and checks every step against the CPU reference.

use clap::{Parser, Subcommand};
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
