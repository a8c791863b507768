//! `twofour-train`: trains a GPT-2-style model on the embedded Shakespeare corpus (or your tokens).
//!
//! Status (issue 7): the CPU reference path trains end to end (data, model, AdamW with warm-up +
//! cosine schedule, clipping, accumulation, validation, checkpoints, resume, loss plot, samples).
//! The GPU path (cuBLASLt GEMMs and twofour's kernels) is not built yet: on a GPU machine the
//! trainer says so and runs the CPU reference too.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use twofour_trainer::data::{self, Batches};
use twofour_trainer::reference::{backward, forward, init_params, AdamW, Config};
use twofour_trainer::{checkpoint, schedule};

#[derive(Parser)]
#[command(name = "twofour-train", version, about = "Train a GPT-2-style model (CPU reference path; GPU path in progress)")]
struct Args {
    /// tiny, 124m, 350m, 774m or 1558m.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// SwiGLU MLP instead of GELU (fc makes 8C: up and gate).
    #[arg(long)]
    swiglu: bool,
    /// Training tokens: an llm.c shard, a nanoGPT .bin or a text file (default: the embedded corpus).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    seq: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Micro-batches accumulated per step.
    #[arg(long, default_value_t = 1)]
    accum: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Validation every N steps (2 batches).
    #[arg(long, default_value_t = 20)]
    val_every: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where checkpoints, the loss plot and the log go.
    #[arg(long, default_value = "runs/tiny")]
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
    /// Allow a non-tiny model on the CPU reference (very slow).
    #[arg(long)]
    force_cpu: bool,
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

fn run(a: Args) -> Result<(), String> {
    if a.sample_only {
        let (c, params, _, _) = checkpoint::load(&a.out).map_err(|e| e.to_string())?;
        println!("{}", sample(&c, &params, a.sample.max(1), a.seed).map_err(|e| e.to_string())?);
        return Ok(());
    }
    match twofour::Device::new(0) {
        Ok(dev) => println!("GPU {} found, but the GPU training path is not built yet (issue 7): training on the CPU reference.", dev.name()),
        Err(e) => println!("No GPU ({e}).\nTraining on the CPU reference path."),
    }
    let mut c = Config { swiglu: a.swiglu, ..config(&a.model, a.seq)? };
    if a.model != "tiny" && !a.force_cpu {
        return Err(format!("the {} model on the CPU reference would take hours per step; use --model tiny (or --force-cpu)", a.model));
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
    let mut batches = Batches::new(train, a.batch, a.seq).map_err(|e| e.to_string())?;
    let mut val_batches = Batches::new(val, a.batch, a.seq).map_err(|e| e.to_string())?;
    let (mut params, mut opt, start) = if a.resume {
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
    println!("model: {} layers, {} heads, {} channels, {:.2} M parameters", c.layers, c.heads, c.channels, params.len() as f64 / 1e6);
    std::fs::create_dir_all(&a.out).map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    if !a.resume {
        let _ = std::fs::remove_file(a.out.join("losses.tsv"));
    }

    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} ETA {eta} {msg}").map_err(|e| e.to_string())?.progress_chars("=> "));
    bar.set_position(start as u64);
    let (mut train_curve, mut val_curve) = (Vec::new(), Vec::new());
    let tokens_per_step = a.batch * a.seq * a.accum;
    let end = a.stop_after.map_or(a.steps, |s| s.min(a.steps));
    for step in start..end {
        let t0 = Instant::now();
        let mut grads = vec![0f32; params.len()];
        let mut loss = 0f32;
        for _ in 0..a.accum {
            let (x, y) = batches.next_batch();
            let (l, acts) = forward(&c, &params, &x, &y, a.batch, a.seq);
            let g = backward(&c, &params, &acts);
            for (acc, gi) in grads.iter_mut().zip(&g) {
                *acc += gi / a.accum as f32;
            }
            loss += l / a.accum as f32;
        }
        let norm = schedule::clip_grad_norm(&mut grads, a.clip);
        let lr = schedule::lr_at(step, a.steps, a.warmup, a.lr, a.lr / 10.0);
        opt.update(&mut params, &grads, lr, 0.9, 0.95, 1e-8, a.weight_decay);
        let tok_s = tokens_per_step as f64 / t0.elapsed().as_secs_f64();
        train_curve.push((step + 1, loss));
        bar.set_message(format!("loss {loss:.4}  |g| {norm:.2}  lr {lr:.2e}  {tok_s:.0} tok/s"));
        bar.inc(1);
        if (step + 1) % a.val_every == 0 || step + 1 == a.steps {
            let mut vl = 0f32;
            for _ in 0..2 {
                let (x, y) = val_batches.next_batch();
                vl += forward(&c, &params, &x, &y, a.batch, a.seq).0 / 2.0;
            }
            val_batches.position = 0;
            val_curve.push((step + 1, vl));
            bar.suspend(|| println!("step {:>5}  train loss {loss:.4}  val loss {vl:.4}", step + 1));
        }
        // One line per step, appended: a resumed run continues the same file.
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(a.out.join("losses.tsv")) {
            let _ = writeln!(f, "{}\t{}", step + 1, loss);
        }
    }
    bar.finish_and_clear();
    checkpoint::save(&a.out, &c, &params, &opt, batches.position).map_err(|e| e.to_string())?;
    println!("checkpoint: {}/model.safetensors (+ state.safetensors)", a.out.display());
    if !train_curve.is_empty() {
        let png = a.out.join("loss.png");
        twofour::plot::plot_losses(&format!("twofour-train, {} model, CPU reference", a.model), &train_curve, &val_curve, &png).map_err(|e| e.to_string())?;
        println!("loss plot: {}", png.display());
    }
    if a.sample > 0 {
        println!("sample: {:?}", sample(&c, &params, a.sample, a.seed).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// Samples tokens from the model (temperature 1), starting from the end-of-text token.
fn sample(c: &Config, params: &[f32], n: usize, seed: u64) -> Result<String, data::DataError> {
    let mut toks = vec![data::EOT];
    for i in 0..n {
        let ctx: Vec<u16> = toks.iter().rev().take(c.max_seq).rev().cloned().collect();
        let (_, acts) = forward(c, params, &ctx, &[], 1, ctx.len());
        let probs = &acts.probs[(ctx.len() - 1) * c.vocab..ctx.len() * c.vocab];
        let r = twofour::reference::philox::philox4x32([i as u32, 0, 0x73616d70, 0], [seed as u32, (seed >> 32) as u32]);
        let u = twofour::reference::philox::unit_f32(r[0]);
        let mut acc = 0f32;
        let mut next = probs.len() - 1;
        for (j, &p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                next = j;
                break;
            }
        }
        toks.push(next as u16);
    }
    data::detokenize(&toks[1..])
}
