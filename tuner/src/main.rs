//! `twofour-tune`: finds the fastest `TileConfig` of the sparse GEMM for each shape and layout of a
//! model on this GPU, and the fastest launch shape of the memory-bound sparse-training kernels
//! (mask search and apply on each weight, MVUE on each output gradient, SwiGLU forward and backward
//! on each fc1 output in both layouts), and writes a `ShapeTable` the library then uses on its own
//! (`TWOFOUR_SHAPE_TABLE=path`, or embed it as tables/<gpu>.json).
//!
//! For every (shape, pass) it enumerates the compiled tile instances x schedules x raster groups,
//! drops the ones that cannot apply (a raster group wider than the M tiles), checks each
//! candidate's output once against the default configuration's (itself tested against the CPU
//! reference), times every candidate in interleaved rounds (one call of each a round: warm-up,
//! CUDA events, median, two rotating B operands so L2 does not flatter small shapes) and keeps
//! the best. The table is written atomically after every shape,
//! so an interrupted run resumes where it stopped.

mod launch;

use clap::Parser;
use half::bf16;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use twofour::reference::philox::normal_bf16;
use twofour::shape_table::{ShapeTable, TableEntry};
use twofour::shapes::{parse_shapes, LinearShape, Pass};
use twofour::sparse_gemm::storage_layout;
use cudarc::driver::CudaSlice;
use twofour::timing::{median, FLUSH_BYTES};
use twofour::launch::LaunchShape;
use twofour::{prune24_compress, sparse_gemm, BOperand, Device, DeviceMatrix, Error, GatedLayout, GemmOptions, MatLayout, Schedule, TileConfig};

#[derive(Parser)]
#[command(name = "twofour-tune", version, about = "Tune twofour's sparse GEMM for a model's shapes on this GPU")]
struct Args {
    /// Model preset: gpt2-small, gpt2-medium, gpt2-large, gpt2-xl, gpt2 (all four), llama-7b.
    #[arg(long)]
    model: Option<String>,
    /// Custom model: d_model and d_ff of its FFN (with --tokens).
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    d_ff: Option<usize>,
    /// Tokens per GEMM (batch x sequence).
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    /// Extra shapes: name:tokens:d_in:d_out[,...].
    #[arg(long)]
    shapes: Option<String>,
    /// A file with one name:tokens:d_in:d_out per line.
    #[arg(long)]
    shapes_file: Option<PathBuf>,
    /// The table to write (and to resume from).
    #[arg(long, default_value = "twofour-shapes.json")]
    out: PathBuf,
    /// Ignore entries already in the table.
    #[arg(long)]
    fresh: bool,
    /// Stop after this many seconds (the table keeps what was tuned).
    #[arg(long)]
    budget_s: Option<f64>,
    /// Timed repeats per candidate.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Timed repeats per launch-shape candidate (those kernels run for tens of microseconds, so
    /// more repeats are cheap and their medians need them).
    #[arg(long, default_value_t = 31)]
    launch_reps: usize,
    /// Shapes held out of the table: tune them exhaustively and compare with what the table's
    /// fallback (nearest tuned shape) picks. name:tokens:d_in:d_out[,...]
    #[arg(long)]
    holdout: Option<String>,
    /// Write a PNG of the speedup tuning bought per shape.
    #[arg(long)]
    report: Option<PathBuf>,
    /// What to tune: any of gemm, mask, mvue, gated (comma-separated).
    #[arg(long, default_value = "gemm,mask,mvue,gated")]
    kernels: String,
}

fn preset(name: &str, tokens: usize) -> Result<Vec<LinearShape>, String> {
    let ffn = |m: &str, d: usize, ff: usize| vec![LinearShape::new(format!("{m}.fc1"), tokens, d, ff), LinearShape::new(format!("{m}.fc2"), tokens, ff, d)];
    Ok(match name {
        "gpt2-small" => ffn(name, 768, 3072),
        "gpt2-medium" => ffn(name, 1024, 4096),
        "gpt2-large" => ffn(name, 1280, 5120),
        "gpt2-xl" => ffn(name, 1600, 6400),
        "gpt2" => {
            let mut all = Vec::new();
            for m in ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"] {
                all.extend(preset(m, tokens)?);
            }
            all
        }
        "llama-7b" => ffn(name, 4096, 11008),
        _ => return Err(format!("unknown model {name:?}: use gpt2-small, gpt2-medium, gpt2-large, gpt2-xl, gpt2, llama-7b, or --d-model/--d-ff")),
    })
}

/// All candidate configurations for an M x N problem.
fn candidates(m: usize) -> Vec<TileConfig> {
    let m_tiles = m.div_ceil(TileConfig::BM);
    // Groups larger than the M tiles give the same raster as a smaller one: nothing new to measure.
    let groups: Vec<u32> = [0u32, 4, 8, 16, 32].into_iter().filter(|&g| g as usize <= m_tiles).collect();
    let mut v = Vec::new();
    for base in TileConfig::ALL {
        v.extend(groups.iter().map(|&group_m| TileConfig { group_m, schedule: Schedule::DataParallel, ..base }));
        // Stream-K (whole waves data-parallel, the last partial wave's tiles split into K pieces) for the
        // cooperative instances, clusters included, at the same raster groups: it targets tile
        // counts that leave SMs idle in the last wave (GPT-2 XL dW, GPT-2 small dW). The library's
        // Auto never picks it by itself; a tuned table may. (The raster matters here too: GPT-2
        // large fc1 dW at 16k ran 4% faster at group 8 than at the automatic 23, fifteenth session.)
        if !base.pingpong {
            v.extend(groups.iter().map(|&group_m| TileConfig { group_m, schedule: Schedule::StreamK, ..base }));
        }
    }
    v
}

/// Device operands of one (shape, pass), B twice for rotation.
struct Problem {
    a: twofour::Sparse24,
    b: [DeviceMatrix<bf16>; 2],
    d: DeviceMatrix<bf16>,
    n_major: bool,
    col: bool,
}

/// A device buffer of `rows x cols` random bf16 values, filled by tiling one random block.
fn random(dev: &Device, rows: usize, cols: usize, seed: u64) -> twofour::Result<DeviceMatrix<bf16>> {
    const BLOCK: usize = 1 << 22;
    let n = rows * cols;
    let block = normal_bf16(seed, BLOCK.min(n));
    let mut host = Vec::with_capacity(n);
    while host.len() < n {
        let take = (n - host.len()).min(block.len());
        host.extend_from_slice(&block[..take]);
    }
    DeviceMatrix::from_host(dev, rows, cols, &host)
}

fn problem(dev: &Device, s: &LinearShape, pass: Pass) -> twofour::Result<Problem> {
    let (m, n, k) = s.mnk(pass);
    let a = prune24_compress(dev, &random(dev, m, k, 1)?)?;
    let n_major = pass == Pass::GradWeight;
    let (br, bc) = if n_major { (k, n) } else { (n, k) };
    let b = [random(dev, br, bc, 2)?, random(dev, br, bc, 3)?];
    let col = !n_major;
    let d = if col { DeviceMatrix::poisoned(dev, n, m)? } else { DeviceMatrix::poisoned(dev, m, n)? };
    Ok(Problem { a, b, d, n_major, col })
}

impl Problem {
    fn run(&mut self, dev: &Device, cfg: TileConfig, which: usize) -> twofour::Result<()> {
        let opts = GemmOptions { d_layout: Some(if self.col { MatLayout::ColMajor } else { MatLayout::RowMajor }), config: Some(cfg), ..Default::default() };
        let b = if self.n_major { BOperand::NMajor(&self.b[which]) } else { BOperand::KMajor(&self.b[which]) };
        sparse_gemm(dev, &self.a, b, &mut self.d, &opts)
    }

    /// The first 2^20 elements of D (a sample: downloading all of a 16384 x 6400 D per candidate
    /// would cost more than timing it).
    fn output(&mut self, dev: &Device, cfg: TileConfig) -> twofour::Result<Vec<f64>> {
        self.run(dev, cfg, 0)?;
        let n = self.d.data().len().min(1 << 20);
        let v = dev.stream().clone_dtoh(&self.d.data().slice(0..n)).map_err(|e| Error::Driver { during: "reading D".into(), source: e })?;
        Ok(v.iter().map(|x| x.to_f64()).collect())
    }
}


/// Exhaustive search of one (shape, pass): (best config, its ms, default ms).
fn tune(dev: &Device, s: &LinearShape, pass: Pass, reps: usize, bar: &ProgressBar, flush: &mut CudaSlice<u8>) -> twofour::Result<(TileConfig, f64, f64)> {
    let (m, n, _) = s.mnk(pass);
    let sms = dev.context().attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap_or(132) as usize;
    let mut p = problem(dev, s, pass)?;
    let default = TileConfig::default_for(m, n, sms);
    let reference = p.output(dev, default)?;
    // Every candidate's output is checked first; then all of them (the default first) are timed
    // against each other in interleaved rounds (why: `timing::interleaved`).
    let mut cands = vec![default];
    for cfg in candidates(m) {
        bar.set_message(format!("{} {} checking bn{} {:?} g{}", s.name, pass.name(), cfg.bn, cfg.schedule, cfg.group_m));
        let err = twofour::reference::rel_error(p.output(dev, cfg)?, reference.iter().copied());
        if err.is_nan() || err >= 1e-2 {
            return Err(Error::InvalidData { op: "twofour-tune", detail: format!("{cfg:?} on {} {}: output differs from the default configuration's (relative {err:e})", s.name, pass.name()) });
        }
        cands.push(cfg);
    }
    bar.set_message(format!("{} {} timing {} candidates", s.name, pass.name(), cands.len()));
    let ms = interleaved_medians(dev, reps, flush, cands.len(), |i, which| p.run(dev, cands[i], which))?;
    bar.inc((cands.len() - 1) as u64);
    let default_ms = ms[0];
    // The table records the schedule that was measured: Auto means data-parallel today
    // (`TileConfig::wants_stream_k`), and an entry written as Auto would change meaning with it.
    let mut best = (TileConfig { schedule: Schedule::DataParallel, ..default }, default_ms);
    for (cfg, &t) in cands.iter().zip(&ms).skip(1) {
        if t < best.1 {
            best = (*cfg, t);
        }
    }
    Ok((best.0, best.1, default_ms))
}

/// Median ms of each of `n` candidates over `reps` interleaved rounds (`timing::interleaved`, 2
/// warm-up calls each): `run(i, which)` runs candidate i on input `which`, alternating 0 / 1
/// between rounds (two inputs, so no call finds its operands in L2 from the previous one). Each
/// timed call follows an L2 flush (`flush`, memset on the stream first): the GPU is busy with the
/// flush while the host queues the call, so the events time the kernel rather than the host's
/// launch latency. Without the flush the 15-100 us launch-shape kernels measured 2-4x the
/// benches' numbers and their launch shapes ranked by noise.
pub(crate) fn interleaved_medians(dev: &Device, reps: usize, flush: &mut CudaSlice<u8>, n: usize, mut run: impl FnMut(usize, usize) -> twofour::Result<()>) -> twofour::Result<Vec<f64>> {
    let times = twofour::timing::interleaved(dev, 2, reps, n, flush, |i, r| run(i, (r + 1) % 2))?;
    Ok(times.iter().map(|t| median(t)).collect())
}

/// Builds one launch-tuning problem (allocates its operands) when called.
type MakeProblem<'a> = Box<dyn Fn() -> twofour::Result<launch::Problem> + 'a>;

/// The memory-bound kernels' problems of a model's linear layers, deduplicated against the table.
fn launch_problems(dev: &Device, shapes: &[LinearShape], kinds: &[&str], table: &ShapeTable) -> twofour::Result<Vec<(String, launch::Problem)>> {
    let rnd = |r: usize, c: usize, seed: u64| random(dev, r, c, seed);
    let mut v: Vec<(String, launch::Problem)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in shapes {
        let (t, din, dout) = (s.tokens, s.d_in, s.d_out);
        if t % 32 != 0 || din % 32 != 0 || dout % 32 != 0 {
            continue;
        }
        let mut cand: Vec<(String, MakeProblem<'_>)> = Vec::new();
        if kinds.contains(&"mask") {
            cand.push((format!("{} W", s.name), Box::new(move || launch::Problem::mask(dev, false, dout, din, &rnd))));
            cand.push((format!("{} W", s.name), Box::new(move || launch::Problem::mask(dev, true, dout, din, &rnd))));
        }
        if kinds.contains(&"mvue") {
            cand.push((format!("{} dY", s.name), Box::new(move || launch::Problem::mvue(dev, t, dout, &rnd))));
        }
        if kinds.contains(&"gated") && s.name.contains("fc1") && dout % 8 == 0 {
            for layout in [GatedLayout::TokenMajor, GatedLayout::FeatureMajor] {
                for backward in [false, true] {
                    cand.push((format!("{} H", s.name), Box::new(move || launch::Problem::gated(dev, backward, layout, t, dout, &rnd))));
                }
            }
        }
        for (name, make) in cand {
            let p = make()?;
            let k = p.key();
            if table.entries.iter().any(|e| e.kernel == k.kernel && e.layout == k.layout && (e.m, e.n) == (k.rows, k.cols)) || !seen.insert((k.kernel, k.layout.clone(), k.rows, k.cols)) {
                continue;
            }
            v.push((name, p));
        }
    }
    Ok(v)
}

/// Tunes the launch shapes; returns whether --budget-s stopped it.
fn tune_launches(dev: &Device, shapes: &[LinearShape], kinds: &[&str], table: &mut ShapeTable, args: &Args, start: Instant, flush: &mut CudaSlice<u8>) -> Result<bool, String> {
    if !kinds.iter().any(|k| *k != "gemm") {
        return Ok(false);
    }
    let problems = launch_problems(dev, shapes, kinds, table).map_err(|e| e.to_string())?;
    let total: usize = problems.iter().map(|(_, p)| LaunchShape::candidates(p.key().family).len()).sum();
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} launch shapes, ETA {eta} {msg}").map_err(|e| e.to_string())?;
    bar.set_style(style.progress_chars("=> "));
    for (name, mut p) in problems {
        if args.budget_s.is_some_and(|b| start.elapsed().as_secs_f64() > b) {
            bar.finish_and_clear();
            return Ok(true);
        }
        let k = p.key();
        let (best, ms, default_ms) = p
            .tune(dev, args.launch_reps, flush, |sh| {
                bar.set_message(format!("{} {} block {} cap {}", k.kernel, name, sh.block, sh.blocks_per_sm));
                bar.inc(1);
            })
            .map_err(|e| e.to_string())?;
        table.insert(TableEntry { kernel: k.kernel.into(), layout: k.layout.clone(), pass: format!("{name} {}", k.kernel), m: k.rows, n: k.cols, k: 0, config: None, launch: Some(best), ms, default_ms });
        table.save(&args.out).map_err(|e| e.to_string())?;
        say(&bar, format!("{:<14} {:<22} {:<20} {:>6}x{:<6} best {:>8.4} ms  default {:>8.4} ms  x{:.3}  block {} cap {}", k.kernel, name, k.layout, k.rows, k.cols, ms, default_ms, default_ms / ms, best.block, best.blocks_per_sm));
    }
    bar.finish_and_clear();
    Ok(false)
}

/// A line above the progress bar, or on stdout when there is no terminal (logs, CI).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("twofour-tune: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut shapes = Vec::new();
    if let Some(m) = &args.model {
        shapes.extend(preset(m, args.tokens)?);
    }
    if let (Some(d), Some(ff)) = (args.d_model, args.d_ff) {
        shapes.push(LinearShape::new("custom.fc1", args.tokens, d, ff));
        shapes.push(LinearShape::new("custom.fc2", args.tokens, ff, d));
    }
    if let Some(spec) = &args.shapes {
        shapes.extend(parse_shapes(spec)?);
    }
    if let Some(f) = &args.shapes_file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        shapes.extend(parse_shapes(&lines.join(","))?);
    }
    if shapes.is_empty() && args.holdout.is_none() {
        return Err("no shapes: give --model, --d-model/--d-ff, --shapes or --shapes-file".into());
    }
    let dev = Device::new(0).map_err(|e| e.to_string())?;
    let mut flush = dev.stream().alloc_zeros::<u8>(FLUSH_BYTES).map_err(|e| format!("allocating the L2 flush buffer: {e}"))?;
    let driver = std::fs::read_to_string("/sys/module/nvidia/version").unwrap_or_default().trim().to_string();
    let mut table = match ShapeTable::load(&args.out) {
        Ok(t) if t.mismatch(dev.name(), dev.compute_capability()).is_none() && !args.fresh => {
            println!("resuming {} ({} entries)", args.out.display(), t.entries.len());
            t
        }
        Ok(t) => {
            if let Some(why) = t.mismatch(dev.name(), dev.compute_capability()) {
                println!("starting a new table: {} does not fit ({why})", args.out.display());
            }
            ShapeTable::new(dev.name(), dev.compute_capability(), &driver)
        }
        Err(_) => ShapeTable::new(dev.name(), dev.compute_capability(), &driver),
    };
    let kinds: Vec<&str> = args.kernels.split(',').map(str::trim).collect();
    if let Some(bad) = kinds.iter().find(|k| !["gemm", "mask", "mvue", "gated"].contains(k)) {
        return Err(format!("--kernels: unknown kind {bad:?} (gemm, mask, mvue, gated)"));
    }
    let mut todo = Vec::new();
    for s in shapes.iter().filter(|_| kinds.contains(&"gemm")) {
        for pass in Pass::ALL {
            let (m, n, k) = s.mnk(pass);
            let layout = storage_layout(pass == Pass::GradWeight, pass != Pass::GradWeight);
            if !(k % 64 == 0 && n % 8 == 0 && m % 16 == 0) {
                println!("skip {} {}: {m}x{n}x{k} breaks the kernel's rules (M % 16, N % 8, K % 64)", s.name, pass.name());
            } else if table.exact("sparse_gemm", &layout, m, n, k).is_none() && !todo.iter().any(|(_, _, l, mnk)| *l == layout && *mnk == (m, n, k)) {
                todo.push((s.clone(), pass, layout, (m, n, k)));
            }
        }
    }
    let total: usize = todo.iter().map(|(_, _, _, (m, _, _))| candidates(*m).len()).sum();
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} configs, ETA {eta} {msg}").map_err(|e| e.to_string())?;
    bar.set_style(style.progress_chars("=> "));
    let start = Instant::now();
    let mut stopped = false;
    for (s, pass, layout, (m, n, k)) in todo {
        if args.budget_s.is_some_and(|b| start.elapsed().as_secs_f64() > b) {
            stopped = true;
            break;
        }
        let (cfg, ms, default_ms) = tune(&dev, &s, pass, args.reps, &bar, &mut flush).map_err(|e| e.to_string())?;
        table.insert(TableEntry { kernel: "sparse_gemm".into(), layout, pass: format!("{} {}", s.name, pass.name()), m, n, k, config: Some(cfg), launch: None, ms, default_ms });
        table.save(&args.out).map_err(|e| e.to_string())?;
        say(&bar, format!("{:<28} {:<3} {m:>6}x{n:>6}x{k:>6}  best {:>8.4} ms  default {:>8.4} ms  x{:.3}  bn{} s{}{} {:?} group {}", s.name, pass.name(), ms, default_ms, default_ms / ms, cfg.bn, cfg.stages, if cfg.pingpong { " pingpong" } else if cfg.cluster_m == 2 { " cluster2" } else { "" }, cfg.schedule, cfg.group_m));
    }
    bar.finish_and_clear();
    if !stopped {
        stopped = tune_launches(&dev, &shapes, &kinds, &mut table, &args, start, &mut flush)?;
    }
    let took = start.elapsed().as_secs_f64();
    let gains: Vec<f64> = table.entries.iter().map(|e| e.default_ms / e.ms).collect();
    let geo = (gains.iter().map(|g| g.ln()).sum::<f64>() / gains.len().max(1) as f64).exp();
    println!("tuned {} entries in {took:.1} s{}; geometric-mean speedup over the untuned default: {geo:.3}x; table: {}", table.entries.len(), if stopped { " (stopped by --budget-s; run again to resume)" } else { "" }, args.out.display());

    if let Some(spec) = &args.holdout {
        // Held-out shapes: exhaustive best vs the fallback's pick from the table.
        let bar = ProgressBar::hidden();
        for s in parse_shapes(spec)? {
            for pass in Pass::ALL {
                let (m, n, k) = s.mnk(pass);
                let layout = storage_layout(pass == Pass::GradWeight, pass != Pass::GradWeight);
                let Some(pick) = table.lookup("sparse_gemm", &layout, m, n, k) else { continue };
                let (best, _, _) = tune(&dev, &s, pass, args.reps, &bar, &mut flush).map_err(|e| e.to_string())?;
                let mut p = problem(&dev, &s, pass).map_err(|e| e.to_string())?;
                // The pick and the best timed against each other in interleaved rounds (the
                // search's own medians were taken under another stretch of load).
                let both = [pick, best];
                let ms = interleaved_medians(&dev, args.reps, &mut flush, 2, |i, which| p.run(&dev, both[i], which)).map_err(|e| e.to_string())?;
                let (pick_ms, best_ms) = (ms[0], ms[1]);
                println!("holdout {:<24} {:<3} fallback {:>8.4} ms vs exhaustive best {:>8.4} ms: {:.1}% slower (pick bn{} {:?} g{}; best bn{} {:?} g{})", s.name, pass.name(), pick_ms, best_ms, 100.0 * (pick_ms / best_ms - 1.0), pick.bn, pick.schedule, pick.group_m, best.bn, best.schedule, best.group_m);
            }
        }
    }
    if let Some(spec) = &args.holdout {
        // Held-out shapes, launch shapes: exhaustive best vs the fallback's (nearest tuned shape).
        let empty = ShapeTable::new(dev.name(), dev.compute_capability(), &driver);
        let held = parse_shapes(spec)?;
        for (name, mut p) in launch_problems(&dev, &held, &kinds, &empty).map_err(|e| e.to_string())? {
            let k = p.key();
            let Some(pick) = table.lookup_launch(k.kernel, &k.layout, k.rows, k.cols) else { continue };
            let (best, _, _) = p.tune(&dev, args.launch_reps, &mut flush, |_| {}).map_err(|e| e.to_string())?;
            let both = [pick, best];
            let ms = interleaved_medians(&dev, args.launch_reps, &mut flush, 2, |i, which| p.run(&dev, both[i], which)).map_err(|e| e.to_string())?;
            let (pick_ms, best_ms) = (ms[0], ms[1]);
            println!("holdout {:<14} {:<22} {:<20} fallback {:>8.4} ms vs exhaustive best {:>8.4} ms: {:.1}% slower (pick {}/{}; best {}/{})", k.kernel, name, k.layout, pick_ms, best_ms, 100.0 * (pick_ms / best_ms - 1.0), pick.block, pick.blocks_per_sm, best.block, best.blocks_per_sm);
        }
    }
    if let Some(png) = &args.report {
        twofour::plot::plot_tuning(&table, png).map_err(|e| e.to_string())?;
        println!("report: {}", png.display());
    }
    Ok(())
}
