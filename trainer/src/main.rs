//! `twofour-train`: trains a GPT-2-style model on the embedded Shakespeare corpus (or your tokens).
//!
//! On a GPU (sm_80+) it runs the GPU path (cuBLASLt GEMMs + twofour's `gpt_*` kernels, see
//! `twofour_trainer::gpu`), by default GPT-2 124M; without one it says so and trains the tiny model
//! on the CPU reference, so the same command works on any machine. `--bench` times steps on
//! random tokens and prints tokens/s and MFU as JSON.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use twofour_trainer::data::{self, Batches};
use twofour_trainer::gpu::{self, GpuModel};
use twofour_trainer::reference::{backward, forward, init_params, AdamW, Config};
use twofour_trainer::{checkpoint, schedule};

#[derive(Parser)]
#[command(name = "twofour-train", version, about = "Train a GPT-2-style model: on the GPU path, or the CPU reference without a GPU")]
struct Args {
    /// tiny, 124m, 350m, 774m or 1558m (default: 124m on a GPU, tiny on the CPU).
    #[arg(long)]
    model: Option<String>,
    /// SwiGLU MLP instead of GELU (fc makes 8C: up and gate).
    #[arg(long)]
    swiglu: bool,
    /// Training tokens: an llm.c shard, a nanoGPT .bin or a text file (default: the embedded corpus).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sequences per micro-batch (default: 16 on a GPU, 4 on the CPU).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (default: 1024 on a GPU, 32 on the CPU).
    #[arg(long)]
    seq: Option<usize>,
    /// Optimizer steps (default: 300 on a GPU, 100 on the CPU).
    #[arg(long)]
    steps: Option<usize>,
    /// Micro-batches accumulated per step.
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Peak learning rate (default: 6e-4 on a GPU, 3e-3 on the CPU).
    #[arg(long)]
    lr: Option<f32>,
    /// Warm-up steps (default: 5% of the steps).
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Validation every N steps (default: every 10% of the run).
    #[arg(long)]
    val_every: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where checkpoints, the loss plot and the log go.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Tokens to sample at the end.
    #[arg(long, default_value_t = 48)]
    sample: usize,
    /// Stop (and checkpoint) after this many steps of the --steps schedule; resume later.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Only sample from the checkpoint in --out (no training).
    #[arg(long)]
    sample_only: bool,
    /// Use the CPU reference even when a GPU is present (and allow non-tiny models on it: slow).
    #[arg(long)]
    force_cpu: bool,
    /// Benchmark: time --steps steps (after 3 warm-up steps) on random tokens, print JSON.
    #[arg(long)]
    bench: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twofour-train: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(name: &str, seq: usize) -> Result<Config, String> {
    let c = match name {
        "tiny" => Config::TINY,
        "124m" => Config::GPT2_124M,
        "350m" => Config::GPT2_350M,
        "774m" => Config::GPT2_774M,
        "1558m" => Config::GPT2_1558M,
        _ => return Err(format!("unknown model {name:?}: tiny, 124m, 350m, 774m, 1558m")),
    };
    if seq > c.max_seq {
        return Err(format!("--seq {seq} exceeds the model's context of {}", c.max_seq));
    }
    Ok(c)
}

/// Where the steps run.
enum Backend {
    Cpu { params: Vec<f32>, opt: AdamW },
    Gpu(Box<GpuModel>),
}

/// Dense bf16 tensor-core peak used for MFU (llm.c's convention: H100 SXM 989 TFLOP/s; A100 312).
fn peak_flops(dev_name: &str) -> f64 {
    if dev_name.contains("A100") {
        312e12
    } else {
        989e12
    }
}

/// Training FLOPs per token, llm.c's formula (the peer script uses the same): 6N + 6 L C T.
fn flops_per_token(c: &Config, params: usize, t: usize) -> f64 {
    6.0 * params as f64 + 6.0 * (c.layers * c.channels * t) as f64
}

fn run(a: Args) -> Result<(), String> {
    if a.sample_only {
        let (c, params, _, _) = checkpoint::load(&a.out).map_err(|e| e.to_string())?;
        let text = match twofour::Device::new(0).ok().filter(|_| !a.force_cpu && gpu::check_config(&c, c.max_seq).is_ok()) {
            Some(dev) => sample_gpu(dev, &c, &params, a.sample.max(1), a.seed),
            None => sample(&c, &params, a.sample.max(1), a.seed).map_err(|e| e.to_string()),
        }?;
        println!("{text}");
        return Ok(());
    }
    let dev = if a.force_cpu {
        println!("--force-cpu: training on the CPU reference path.");
        None
    } else {
        match twofour::Device::new(0) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("No GPU ({e}).\nTraining the tiny model on the CPU reference path.");
                None
            }
        }
    };
    let on_gpu = dev.is_some();
    let model = a.model.clone().unwrap_or_else(|| if on_gpu { "124m".into() } else { "tiny".into() });
    let batch = a.batch.unwrap_or(if on_gpu { 16 } else { 4 });
    let seq = a.seq.unwrap_or(if on_gpu { 1024 } else { 32 });
    let steps = a.steps.unwrap_or(if on_gpu { 300 } else { 100 });
    let lr_max = a.lr.unwrap_or(if on_gpu { 6e-4 } else { 3e-3 });
    let warmup = a.warmup.unwrap_or((steps / 20).max(1));
    let val_every = a.val_every.unwrap_or((steps / 10).max(1));
    let mut c = Config { swiglu: a.swiglu, ..config(&model, seq)? };
    if !on_gpu && model != "tiny" && !a.force_cpu {
        return Err(format!("the {model} model on the CPU reference would take hours per step; use --model tiny (or --force-cpu)"));
    }
    if a.bench {
        let dev = dev.ok_or("--bench needs a GPU")?;
        return bench(dev, &model, c, batch, seq, steps.min(50), a.accum);
    }
    let (train, val) = match &a.data {
        None => data::default_split().map_err(|e| e.to_string())?,
        Some(p) => {
            let t = data::load_tokens(p).map_err(|e| e.to_string())?;
            let cut = t.len() * 9 / 10;
            (t[..cut].to_vec(), t[cut..].to_vec())
        }
    };
    println!("data: {} train / {} validation tokens ({})", train.len(), val.len(), a.data.as_ref().map_or("embedded Shakespeare".into(), |p| p.display().to_string()));
    let mut batches = Batches::new(train, batch, seq).map_err(|e| e.to_string())?;
    let mut val_batches = Batches::new(val, batch, seq).map_err(|e| e.to_string())?;
    let (params, opt, start) = if a.resume {
        let (cc, p, o, pos) = checkpoint::load(&a.out).map_err(|e| e.to_string())?;
        c = cc;
        batches.position = pos;
        let step = o.step as usize;
        println!("resumed {} at step {step}", a.out.display());
        (p, o, step)
    } else {
        let p = init_params(&c, a.seed);
        let n = p.len();
        (p, AdamW::new(n), 0)
    };
    let n_params = params.len();
    let (mut be, dev_name) = match dev {
        Some(d) => {
            let name = d.name().to_string();
            let mut g = GpuModel::new(d, c, batch, seq, &params).map_err(|e| e.to_string())?;
            g.load_state(&params, &opt.m, &opt.v, opt.step).map_err(|e| e.to_string())?;
            println!("GPU path on {name}");
            (Backend::Gpu(Box::new(g)), Some(name))
        }
        None => (Backend::Cpu { params, opt }, None),
    };
    println!("model: {model}, {} layers, {} heads, {} channels, {:.2} M parameters; {batch} x {seq} tokens x {} micro-batches a step", c.layers, c.heads, c.channels, n_params as f64 / 1e6, a.accum);
    std::fs::create_dir_all(&a.out).map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    if !a.resume {
        let _ = std::fs::remove_file(a.out.join("losses.tsv"));
    }

    let bar = ProgressBar::new(steps as u64);
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} ETA {eta} {msg}").map_err(|e| e.to_string())?.progress_chars("=> "));
    bar.set_position(start as u64);
    let (mut train_curve, mut val_curve) = (Vec::new(), Vec::new());
    let tokens_per_step = batch * seq * a.accum;
    let fpt = flops_per_token(&c, n_params, seq);
    let end = a.stop_after.map_or(steps, |s| s.min(steps));
    for step in start..end {
        let t0 = Instant::now();
        let lr = schedule::lr_at(step, steps, warmup, lr_max, lr_max / 10.0);
        let (loss, norm) = train_step(&mut be, &c, &mut batches, a.accum, lr, a.weight_decay, a.clip).map_err(|e| e.to_string())?;
        let tok_s = tokens_per_step as f64 / t0.elapsed().as_secs_f64();
        train_curve.push((step + 1, loss));
        let mfu = dev_name.as_deref().map(|n| format!("  MFU {:.1}%", 100.0 * tok_s * fpt / peak_flops(n))).unwrap_or_default();
        bar.set_message(format!("loss {loss:.4}  |g| {norm:.2}  lr {lr:.2e}  {tok_s:.0} tok/s{mfu}"));
        bar.inc(1);
        if (step + 1) % val_every == 0 || step + 1 == steps {
            let mut vl = 0f32;
            for _ in 0..2 {
                let (x, y) = val_batches.next_batch();
                vl += eval_loss(&mut be, &c, &x, &y, batch, seq).map_err(|e| e.to_string())? / 2.0;
            }
            val_batches.position = 0;
            val_curve.push((step + 1, vl));
            bar.suspend(|| println!("step {:>5}  train loss {loss:.4}  val loss {vl:.4}  {tok_s:.0} tok/s{mfu}", step + 1));
        }
        // One line per step, appended: a resumed run continues the same file.
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(a.out.join("losses.tsv")) {
            let _ = writeln!(f, "{}\t{}", step + 1, loss);
        }
    }
    bar.finish_and_clear();
    let (params, opt) = match &be {
        Backend::Cpu { params, opt } => (params.clone(), AdamW { m: opt.m.clone(), v: opt.v.clone(), step: opt.step }),
        Backend::Gpu(g) => {
            let (p, m, v) = g.state().map_err(|e| e.to_string())?;
            (p, AdamW { m, v, step: g.step })
        }
    };
    checkpoint::save(&a.out, &c, &params, &opt, batches.position).map_err(|e| e.to_string())?;
    println!("checkpoint: {}/model.safetensors (+ state.safetensors)", a.out.display());
    if !train_curve.is_empty() {
        let png = a.out.join("loss.png");
        let path = if on_gpu { "GPU path" } else { "CPU reference" };
        twofour::plot::plot_losses(&format!("twofour-train, {model} model, {path}"), &train_curve, &val_curve, &png).map_err(|e| e.to_string())?;
        println!("loss plot: {}", png.display());
    }
    if a.sample > 0 {
        let text = match be {
            Backend::Gpu(g) => {
                let dev = twofour::Device::new(0).map_err(|e| e.to_string())?;
                drop(g);
                sample_gpu(dev, &c, &params, a.sample, a.seed)?
            }
            Backend::Cpu { .. } => sample(&c, &params, a.sample, a.seed).map_err(|e| e.to_string())?,
        };
        println!("sample: {text:?}");
    }
    Ok(())
}

/// One optimizer step over `accum` micro-batches; returns (mean loss, gradient norm).
fn train_step(be: &mut Backend, c: &Config, batches: &mut Batches, accum: usize, lr: f32, wd: f32, clip: f32) -> twofour::Result<(f32, f32)> {
    let mut loss = 0f32;
    match be {
        Backend::Cpu { params, opt } => {
            let mut grads = vec![0f32; params.len()];
            for _ in 0..accum {
                let (x, y) = batches.next_batch();
                let (l, acts) = forward(c, params, &x, &y, batches.batch, batches.seq);
                let g = backward(c, params, &acts);
                for (acc, gi) in grads.iter_mut().zip(&g) {
                    *acc += gi / accum as f32;
                }
                loss += l / accum as f32;
            }
            let norm = schedule::clip_grad_norm(&mut grads, clip);
            opt.update(params, &grads, lr, 0.9, 0.95, 1e-8, wd);
            Ok((loss, norm))
        }
        Backend::Gpu(g) => {
            g.zero_grads()?;
            for _ in 0..accum {
                let (x, y) = batches.next_batch();
                loss += g.forward(&x, &y, Some(1.0 / accum as f32))? / accum as f32;
                g.backward()?;
            }
            let norm = g.update(lr, 0.9, 0.95, 1e-8, wd, clip)?;
            Ok((loss, norm))
        }
    }
}

fn eval_loss(be: &mut Backend, c: &Config, x: &[u16], y: &[u16], b: usize, t: usize) -> twofour::Result<f32> {
    match be {
        Backend::Cpu { params, .. } => Ok(forward(c, params, x, y, b, t).0),
        Backend::Gpu(g) => g.forward(x, y, None),
    }
}

/// `--bench`: random tokens, 3 warm-up steps, then `steps` timed steps; one JSON line.
fn bench(dev: twofour::Device, model: &str, c: Config, batch: usize, seq: usize, steps: usize, accum: usize) -> Result<(), String> {
    let name = dev.name().to_string();
    let params = init_params(&c, 1);
    let n_params = params.len();
    let mut g = GpuModel::new(dev, c, batch, seq, &params).map_err(|e| e.to_string())?;
    let n = batch * seq;
    let toks: Vec<u16> = twofour::reference::philox::normal_bf16(5, n + 1).iter().map(|x| (x.to_bits() as usize * 40503 % c.vocab) as u16).collect();
    let (x, y) = (toks[..n].to_vec(), toks[1..].to_vec());
    let step = |g: &mut GpuModel| -> twofour::Result<f32> {
        g.zero_grads()?;
        let mut l = 0.0;
        for _ in 0..accum {
            l = g.forward(&x, &y, Some(1.0 / accum as f32))?;
            g.backward()?;
        }
        g.update(3e-4, 0.9, 0.95, 1e-8, 0.1, 1.0)?;
        Ok(l)
    };
    for _ in 0..3 {
        step(&mut g).map_err(|e| e.to_string())?;
    }
    g.synchronize().map_err(|e| e.to_string())?;
    g.reset_profile();
    let mut times = Vec::new();
    let mut last = 0.0;
    for _ in 0..steps.max(1) {
        let t0 = Instant::now();
        last = step(&mut g).map_err(|e| e.to_string())?;
        g.synchronize().map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64());
    }
    if let Some(r) = g.profile_report() {
        eprintln!("per-kernel time over the timed steps (each launch synchronized, TWOFOUR_PROFILE=1):\n{r}");
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    let tokens = (n * accum) as f64;
    let tok_s = tokens / med;
    let mfu = tok_s * flops_per_token(&c, n_params, seq) / peak_flops(&name);
    println!(
        "{{\"model\":\"{model}\",\"params\":{n_params},\"tokens_per_step\":{},\"batch\":{batch},\"seq\":{seq},\"step_ms\":{:.2},\"tok_s\":{:.0},\"mfu\":{:.4},\"loss\":{last:.4},\"device\":\"{name}\"}}",
        n * accum,
        med * 1e3,
        tok_s,
        mfu
    );
    Ok(())
}

/// Samples on the GPU: a b = 1, t = max_seq model; causal, so padding after the context does not
/// change the logits at its last position.
fn sample_gpu(dev: twofour::Device, c: &Config, params: &[f32], n: usize, seed: u64) -> Result<String, String> {
    let t = c.max_seq;
    let mut g = GpuModel::new(dev, *c, 1, t, params).map_err(|e| e.to_string())?;
    let mut toks = vec![data::EOT];
    for i in 0..n {
        let ctx: Vec<u16> = toks.iter().rev().take(t).rev().cloned().collect();
        let mut x = ctx.clone();
        x.resize(t, 0);
        g.forward(&x, &vec![0u16; t], None).map_err(|e| e.to_string())?;
        let logits = g.logits().map_err(|e| e.to_string())?;
        let row = &logits[(ctx.len() - 1) * c.vocab..ctx.len() * c.vocab];
        toks.push(draw(row, i, seed));
    }
    data::detokenize(&toks[1..]).map_err(|e| e.to_string())
}

/// The uniform of sampling step `i`: Philox at counter (i, 0, "samp", 0) under the seed.
fn sample_uniform(i: usize, seed: u64) -> f64 {
    let r = twofour::reference::philox::philox4x32([i as u32, 0, 0x73616d70, 0], [seed as u32, (seed >> 32) as u32]);
    twofour::reference::philox::unit_f32(r[0]) as f64
}

/// The token whose interval of the running sum of `probs` holds `u` (the last one when rounding
/// leaves the sum short of u).
fn pick_token(probs: impl ExactSizeIterator<Item = f64>, u: f64) -> u16 {
    let last = probs.len().saturating_sub(1);
    let mut acc = 0f64;
    for (j, p) in probs.enumerate() {
        acc += p;
        if u < acc {
            return j as u16;
        }
    }
    last as u16
}

/// A token drawn from softmax(logits) (temperature 1), as `sample` draws from the reference's
/// probabilities.
fn draw(logits: &[f32], i: usize, seed: u64) -> u16 {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - mx) as f64).exp()).sum();
    pick_token(logits.iter().map(|&x| ((x - mx) as f64).exp() / sum), sample_uniform(i, seed))
}

/// Samples tokens from the model (temperature 1), starting from the end-of-text token.
fn sample(c: &Config, params: &[f32], n: usize, seed: u64) -> Result<String, data::DataError> {
    let mut toks = vec![data::EOT];
    for i in 0..n {
        let ctx: Vec<u16> = toks.iter().rev().take(c.max_seq).rev().cloned().collect();
        let (_, acts) = forward(c, params, &ctx, &[], 1, ctx.len());
        let probs = &acts.probs[(ctx.len() - 1) * c.vocab..ctx.len() * c.vocab];
        toks.push(pick_token(probs.iter().map(|&p| p as f64), sample_uniform(i, seed)));
    }
    data::detokenize(&toks[1..])
}
