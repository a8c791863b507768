//! The CPU reference of the GPT-2 model: forward, backward and AdamW in plain f32 loops (f64
//! where a long sum would lose precision), written for clarity in the manner of llm.c's
//! train_gpt2.c. The GPU trainer is checked against these functions, layer by layer.
//!
//! Layout (all row-major): B sequences of T tokens, C channels, NH heads, V vocabulary, L layers.
//! Parameters live in one flat vector (`ParamLayout` names the pieces), so gradients and the
//! optimizer state are flat vectors of the same layout.

/// Model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub vocab: usize,
    pub max_seq: usize,
    pub layers: usize,
    pub heads: usize,
    pub channels: usize,
    /// SwiGLU MLP (fc makes up and gate halves of 4C each, y = silu(gate) * up) instead of GELU.
    pub swiglu: bool,
}

impl Config {
    /// Rows of the fc weight: 4C, or 8C (up and gate) with SwiGLU.
    pub fn fc_rows(&self) -> usize {
        if self.swiglu { 8 * self.channels } else { 4 * self.channels }
    }

    /// GPT-2 124M.
    pub const GPT2_124M: Config = Config { vocab: 50257, max_seq: 1024, layers: 12, heads: 12, channels: 768, swiglu: false };
    /// GPT-2 350M.
    pub const GPT2_350M: Config = Config { vocab: 50257, max_seq: 1024, layers: 24, heads: 16, channels: 1024, swiglu: false };
    /// GPT-2 774M.
    pub const GPT2_774M: Config = Config { vocab: 50257, max_seq: 1024, layers: 36, heads: 20, channels: 1280, swiglu: false };
    /// GPT-2 1.5B.
    pub const GPT2_1558M: Config = Config { vocab: 50257, max_seq: 1024, layers: 48, heads: 25, channels: 1600, swiglu: false };
    /// A model small enough to train on a CPU in minutes (GPT-2's vocabulary; one head of 64, so
    /// the GPU path takes it too).
    pub const TINY: Config = Config { vocab: 50257, max_seq: 64, layers: 2, heads: 1, channels: 64, swiglu: false };
}

/// Offsets of the parameter tensors in the flat vector, in GPT-2's order.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub wte: usize,
    pub wpe: usize,
    pub ln1w: usize,
    pub ln1b: usize,
    pub qkvw: usize,
    pub qkvb: usize,
    pub attprojw: usize,
    pub attprojb: usize,
    pub ln2w: usize,
    pub ln2b: usize,
    pub fcw: usize,
    pub fcb: usize,
    pub fcprojw: usize,
    pub fcprojb: usize,
    pub lnfw: usize,
    pub lnfb: usize,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(c: &Config) -> Self {
        let (v, t, l, ch) = (c.vocab, c.max_seq, c.layers, c.channels);
        let fr = c.fc_rows();
        let sizes = [v * ch, t * ch, l * ch, l * ch, l * 3 * ch * ch, l * 3 * ch, l * ch * ch, l * ch, l * ch, l * ch, l * fr * ch, l * fr, l * ch * 4 * ch, l * ch, ch, ch];
        let mut off = [0usize; 17];
        for i in 0..16 {
            off[i + 1] = off[i] + sizes[i];
        }
        Self {
            wte: off[0],
            wpe: off[1],
            ln1w: off[2],
            ln1b: off[3],
            qkvw: off[4],
            qkvb: off[5],
            attprojw: off[6],
            attprojb: off[7],
            ln2w: off[8],
            ln2b: off[9],
            fcw: off[10],
            fcb: off[11],
            fcprojw: off[12],
            fcprojb: off[13],
            lnfw: off[14],
            lnfb: off[15],
            total: off[16],
        }
    }
}

/// GPT-2's initialization: N(0, 0.02), residual projections scaled by 1/sqrt(2L), LayerNorm
/// weights 1 and biases 0. Deterministic in `seed`.
pub fn init_params(c: &Config, seed: u64) -> Vec<f32> {
    let p = ParamLayout::new(c);
    let normal = twofour::reference::philox::normal_bf16(seed, p.total);
    let mut w: Vec<f32> = normal.iter().map(|x| 0.02 * x.to_f32()).collect();
    let scale = 1.0 / (2.0 * c.layers as f32).sqrt();
    for i in p.attprojw..p.attprojb {
        w[i] *= scale;
    }
    for i in p.fcprojw..p.fcprojb {
        w[i] *= scale;
    }
    let fill = |w: &mut Vec<f32>, a: usize, b: usize, v: f32| w[a..b].iter_mut().for_each(|x| *x = v);
    fill(&mut w, p.ln1w, p.ln1b, 1.0);
    fill(&mut w, p.ln1b, p.qkvw, 0.0);
    fill(&mut w, p.qkvb, p.attprojw, 0.0);
    fill(&mut w, p.attprojb, p.ln2w, 0.0);
    fill(&mut w, p.ln2w, p.ln2b, 1.0);
    fill(&mut w, p.ln2b, p.fcw, 0.0);
    fill(&mut w, p.fcb, p.fcprojw, 0.0);
    fill(&mut w, p.fcprojb, p.lnfw, 0.0);
    fill(&mut w, p.lnfw, p.lnfb, 1.0);
    fill(&mut w, p.lnfb, p.total, 0.0);
    w
}

// ---- the layers: forward and backward (llm.c's CPU kernels, in Rust) ----

/// LayerNorm (eps 1e-5) of n rows of c, statistics in f64; keeps mean and 1/std per row.
pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, c: usize) {
    for i in 0..n {
        let x = &inp[i * c..(i + 1) * c];
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + 1e-5).sqrt();
        for j in 0..c {
            out[i * c + j] = ((x[j] as f64 - m) * s) as f32 * w[j] + b[j];
        }
        mean[i] = m as f32;
        rstd[i] = s as f32;
    }
}

/// LayerNorm backward: dinp, dw and db accumulate (+=).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(dinp: &mut [f32], dw: &mut [f32], db: &mut [f32], dout: &[f32], inp: &[f32], w: &[f32], mean: &[f32], rstd: &[f32], n: usize, c: usize) {
    for i in 0..n {
        let (x, d) = (&inp[i * c..(i + 1) * c], &dout[i * c..(i + 1) * c]);
        let (m, s) = (mean[i], rstd[i]);
        let (mut dnorm_mean, mut dnorm_norm_mean) = (0f64, 0f64);
        for j in 0..c {
            let norm = (x[j] - m) * s;
            let dnorm = (w[j] * d[j]) as f64;
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm as f64;
        }
        dnorm_mean /= c as f64;
        dnorm_norm_mean /= c as f64;
        for j in 0..c {
            let norm = (x[j] - m) * s;
            let dnorm = w[j] * d[j];
            db[j] += d[j];
            dw[j] += norm * d[j];
            dinp[i * c + j] += s * (dnorm - dnorm_mean as f32 - norm * dnorm_norm_mean as f32);
        }
    }
}

/// out (n x oc) = inp (n x ic) W^T (W: oc x ic) + bias.
fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, ic: usize, oc: usize) {
    for i in 0..n {
        let x = &inp[i * ic..(i + 1) * ic];
        for o in 0..oc {
            let row = &w[o * ic..(o + 1) * ic];
            let mut s = bias.map_or(0.0, |b| b[o] as f64);
            for k in 0..ic {
                s += (x[k] * row[k]) as f64;
            }
            out[i * oc + o] = s as f32;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_backward(dinp: &mut [f32], dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], n: usize, ic: usize, oc: usize) {
    for i in 0..n {
        for o in 0..oc {
            let d = dout[i * oc + o];
            for k in 0..ic {
                dinp[i * ic + k] += w[o * ic + k] * d;
            }
        }
    }
    for o in 0..oc {
        for i in 0..n {
            let d = dout[i * oc + o];
            for k in 0..ic {
                dw[o * ic + k] += inp[i * ic + k] * d;
            }
        }
    }
    if let Some(db) = db {
        for i in 0..n {
            for o in 0..oc {
                db[o] += dout[i * oc + o];
            }
        }
    }
}

/// Causal self-attention. qkv: (B, T, 3C); out: (B, T, C); att: softmax weights (B, NH, T, T).
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                let q = &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
                let a = &mut att[((bi * nh + h) * t + ti) * t..][..t];
                let mut maxv = f32::NEG_INFINITY;
                for t2 in 0..=ti {
                    let k = &qkv[(bi * t + t2) * 3 * c + c + h * hs..][..hs];
                    let s: f32 = q.iter().zip(k).map(|(x, y)| x * y).sum::<f32>() * scale;
                    a[t2] = s;
                    maxv = maxv.max(s);
                }
                let mut sum = 0f32;
                for t2 in 0..=ti {
                    a[t2] = (a[t2] - maxv).exp();
                    sum += a[t2];
                }
                for t2 in 0..t {
                    a[t2] = if t2 <= ti { a[t2] / sum } else { 0.0 };
                }
                let o = &mut out[(bi * t + ti) * c + h * hs..][..hs];
                o.iter_mut().for_each(|x| *x = 0.0);
                for t2 in 0..=ti {
                    let v = &qkv[(bi * t + t2) * 3 * c + 2 * c + h * hs..][..hs];
                    for i in 0..hs {
                        o[i] += a[t2] * v[i];
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], b: usize, t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let mut datt = vec![0f32; t];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                let a = &att[((bi * nh + h) * t + ti) * t..][..t];
                let d = &dout[(bi * t + ti) * c + h * hs..][..hs];
                // through out = a . V
                for t2 in 0..=ti {
                    let voff = (bi * t + t2) * 3 * c + 2 * c + h * hs;
                    datt[t2] = 0.0;
                    for i in 0..hs {
                        datt[t2] += qkv[voff + i] * d[i];
                        dqkv[voff + i] += a[t2] * d[i];
                    }
                }
                // through the softmax: dpre = a * (datt - sum(a * datt))
                let dot: f32 = (0..=ti).map(|t2| a[t2] * datt[t2]).sum();
                for t2 in 0..=ti {
                    let dpre = a[t2] * (datt[t2] - dot) * scale;
                    let qoff = (bi * t + ti) * 3 * c + h * hs;
                    let koff = (bi * t + t2) * 3 * c + c + h * hs;
                    for i in 0..hs {
                        dqkv[qoff + i] += qkv[koff + i] * dpre;
                        dqkv[koff + i] += qkv[qoff + i] * dpre;
                    }
                }
            }
        }
    }
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = 0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh());
    }
}

fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for i in 0..inp.len() {
        let x = inp[i];
        let th = (GELU_C * (x + 0.044715 * x * x * x)).tanh();
        let sech2 = 1.0 - th * th;
        let local = 0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] += local * dout[i];
    }
}

/// y = silu(gate) * up, per token; fch is n x 8C with up = [0, 4C), gate = [4C, 8C).
fn swiglu_forward(out: &mut [f32], fch: &[f32], n: usize, h: usize) {
    for i in 0..n {
        for j in 0..h {
            let (u, g) = (fch[i * 2 * h + j], fch[i * 2 * h + h + j]);
            out[i * h + j] = g / (1.0 + (-g).exp()) * u;
        }
    }
}

fn swiglu_backward(dfch: &mut [f32], fch: &[f32], dout: &[f32], n: usize, h: usize) {
    for i in 0..n {
        for j in 0..h {
            let (u, g) = (fch[i * 2 * h + j], fch[i * 2 * h + h + j]);
            let sg = 1.0 / (1.0 + (-g).exp());
            let d = dout[i * h + j];
            dfch[i * 2 * h + j] += d * g * sg;
            dfch[i * 2 * h + h + j] += d * u * sg * (1.0 + g * (1.0 - sg));
        }
    }
}

/// Activations of one forward pass, kept for the backward pass.
pub struct Activations {
    b: usize,
    t: usize,
    encoded: Vec<f32>,
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    att: Vec<f32>,
    residual2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    residual3: Vec<f32>,
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    /// Softmax probabilities (B, T, V).
    pub probs: Vec<f32>,
    inputs: Vec<u16>,
    targets: Vec<u16>,
}

/// Forward pass over `inputs` (B x T token ids); with targets, returns the mean cross-entropy loss.
pub fn forward(c: &Config, params: &[f32], inputs: &[u16], targets: &[u16], b: usize, t: usize) -> (f32, Activations) {
    let p = ParamLayout::new(c);
    let (ch, v, l, nh) = (c.channels, c.vocab, c.layers, c.heads);
    let n = b * t;
    let mut a = Activations {
        b,
        t,
        encoded: vec![0.0; n * ch],
        ln1: vec![0.0; l * n * ch],
        ln1_mean: vec![0.0; l * n],
        ln1_rstd: vec![0.0; l * n],
        qkv: vec![0.0; l * n * 3 * ch],
        atty: vec![0.0; l * n * ch],
        att: vec![0.0; l * b * nh * t * t],
        residual2: vec![0.0; l * n * ch],
        ln2: vec![0.0; l * n * ch],
        ln2_mean: vec![0.0; l * n],
        ln2_rstd: vec![0.0; l * n],
        fch: vec![0.0; l * n * c.fc_rows()],
        fch_gelu: vec![0.0; l * n * 4 * ch],
        residual3: vec![0.0; l * n * ch],
        lnf: vec![0.0; n * ch],
        lnf_mean: vec![0.0; n],
        lnf_rstd: vec![0.0; n],
        probs: vec![0.0; n * v],
        inputs: inputs.to_vec(),
        targets: targets.to_vec(),
    };
    for bi in 0..b {
        for ti in 0..t {
            let tok = inputs[bi * t + ti] as usize;
            for j in 0..ch {
                a.encoded[(bi * t + ti) * ch + j] = params[p.wte + tok * ch + j] + params[p.wpe + ti * ch + j];
            }
        }
    }
    let mut tmp = vec![0f32; n * ch];
    for li in 0..l {
        let residual: Vec<f32> = if li == 0 { a.encoded.clone() } else { a.residual3[(li - 1) * n * ch..li * n * ch].to_vec() };
        let s = |off: usize, len: usize| &params[off + li * len..off + (li + 1) * len];
        let (lo, lo3, lo4) = (li * n * ch, li * n * 3 * ch, li * n * 4 * ch);
        let (fr, lof) = (c.fc_rows(), li * n * c.fc_rows());
        layernorm_forward(&mut a.ln1[lo..lo + n * ch], &mut a.ln1_mean[li * n..(li + 1) * n], &mut a.ln1_rstd[li * n..(li + 1) * n], &residual, s(p.ln1w, ch), s(p.ln1b, ch), n, ch);
        matmul_forward(&mut a.qkv[lo3..lo3 + n * 3 * ch], &a.ln1[lo..lo + n * ch], s(p.qkvw, 3 * ch * ch), Some(s(p.qkvb, 3 * ch)), n, ch, 3 * ch);
        let att_len = b * nh * t * t;
        attention_forward(&mut a.atty[lo..lo + n * ch], &mut a.att[li * att_len..(li + 1) * att_len], &a.qkv[lo3..lo3 + n * 3 * ch], b, t, ch, nh);
        matmul_forward(&mut tmp, &a.atty[lo..lo + n * ch], s(p.attprojw, ch * ch), Some(s(p.attprojb, ch)), n, ch, ch);
        for i in 0..n * ch {
            a.residual2[lo + i] = residual[i] + tmp[i];
        }
        let r2 = a.residual2[lo..lo + n * ch].to_vec();
        layernorm_forward(&mut a.ln2[lo..lo + n * ch], &mut a.ln2_mean[li * n..(li + 1) * n], &mut a.ln2_rstd[li * n..(li + 1) * n], &r2, s(p.ln2w, ch), s(p.ln2b, ch), n, ch);
        matmul_forward(&mut a.fch[lof..lof + n * fr], &a.ln2[lo..lo + n * ch], s(p.fcw, fr * ch), Some(s(p.fcb, fr)), n, ch, fr);
        let fch = a.fch[lof..lof + n * fr].to_vec();
        if c.swiglu {
            swiglu_forward(&mut a.fch_gelu[lo4..lo4 + n * 4 * ch], &fch, n, 4 * ch);
        } else {
            gelu_forward(&mut a.fch_gelu[lo4..lo4 + n * 4 * ch], &fch);
        }
        matmul_forward(&mut tmp, &a.fch_gelu[lo4..lo4 + n * 4 * ch], s(p.fcprojw, 4 * ch * ch), Some(s(p.fcprojb, ch)), n, 4 * ch, ch);
        for i in 0..n * ch {
            a.residual3[lo + i] = r2[i] + tmp[i];
        }
    }
    let last = a.residual3[(l - 1) * n * ch..].to_vec();
    layernorm_forward(&mut a.lnf, &mut a.lnf_mean, &mut a.lnf_rstd, &last, &params[p.lnfw..p.lnfb], &params[p.lnfb..p.total], n, ch);
    // Tied head: logits = lnf wte^T, then softmax.
    let mut logits = vec![0f32; n * v];
    matmul_forward(&mut logits, &a.lnf, &params[p.wte..p.wpe], None, n, ch, v);
    let mut loss = 0f64;
    for i in 0..n {
        let row = &logits[i * v..(i + 1) * v];
        let maxv = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| ((x - maxv) as f64).exp()).sum();
        for j in 0..v {
            a.probs[i * v + j] = (((row[j] - maxv) as f64).exp() / sum) as f32;
        }
        if !targets.is_empty() {
            loss -= (a.probs[i * v + targets[i] as usize] as f64).ln();
        }
    }
    ((loss / n as f64) as f32, a)
}

/// Gradient of the mean loss with respect to every parameter (same flat layout).
pub fn backward(c: &Config, params: &[f32], a: &Activations) -> Vec<f32> {
    let p = ParamLayout::new(c);
    let (ch, v, l, nh) = (c.channels, c.vocab, c.layers, c.heads);
    let (b, t) = (a.b, a.t);
    let n = b * t;
    let mut g = vec![0f32; p.total];
    // d logits = (probs - onehot) / n
    let mut dlogits = a.probs.clone();
    for i in 0..n {
        dlogits[i * v + a.targets[i] as usize] -= 1.0;
    }
    dlogits.iter_mut().for_each(|x| *x /= n as f32);
    let mut dlnf = vec![0f32; n * ch];
    {
        let (gw, _) = g.split_at_mut(p.wpe);
        matmul_backward(&mut dlnf, &mut gw[p.wte..], None, &dlogits, &a.lnf, &params[p.wte..p.wpe], n, ch, v);
    }
    let mut dres = vec![0f32; n * ch];
    let last = &a.residual3[(l - 1) * n * ch..];
    {
        let (head, tail) = g.split_at_mut(p.lnfb);
        layernorm_backward(&mut dres, &mut head[p.lnfw..], &mut tail[..ch], &dlnf, last, &params[p.lnfw..p.lnfb], &a.lnf_mean, &a.lnf_rstd, n, ch);
    }
    // Gradient slices of layer li of a parameter at `off` with per-layer size `len`.
    fn gs(g: &mut [f32], off: usize, li: usize, len: usize) -> &mut [f32] {
        &mut g[off + li * len..off + (li + 1) * len]
    }
    for li in (0..l).rev() {
        let s = |off: usize, len: usize| &params[off + li * len..off + (li + 1) * len];
        let (lo, lo3, lo4) = (li * n * ch, li * n * 3 * ch, li * n * 4 * ch);
        let (fr, lof) = (c.fc_rows(), li * n * c.fc_rows());
        let residual: &[f32] = if li == 0 { &a.encoded } else { &a.residual3[(li - 1) * n * ch..li * n * ch] };
        // residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        let mut dfch_gelu = vec![0f32; n * 4 * ch];
        let mut dw = vec![0f32; 4 * ch * ch];
        let mut dbias = vec![0f32; ch];
        matmul_backward(&mut dfch_gelu, &mut dw, Some(&mut dbias), &dres, &a.fch_gelu[lo4..lo4 + n * 4 * ch], s(p.fcprojw, 4 * ch * ch), n, 4 * ch, ch);
        add(gs(&mut g, p.fcprojw, li, 4 * ch * ch), &dw);
        add(gs(&mut g, p.fcprojb, li, ch), &dbias);
        let mut dfch = vec![0f32; n * fr];
        if c.swiglu {
            swiglu_backward(&mut dfch, &a.fch[lof..lof + n * fr], &dfch_gelu, n, 4 * ch);
        } else {
            gelu_backward(&mut dfch, &a.fch[lof..lof + n * fr], &dfch_gelu);
        }
        let mut dln2 = vec![0f32; n * ch];
        let mut dw = vec![0f32; fr * ch];
        let mut dbias = vec![0f32; fr];
        matmul_backward(&mut dln2, &mut dw, Some(&mut dbias), &dfch, &a.ln2[lo..lo + n * ch], s(p.fcw, fr * ch), n, ch, fr);
        add(gs(&mut g, p.fcw, li, fr * ch), &dw);
        add(gs(&mut g, p.fcb, li, fr), &dbias);
        let mut dres2 = dres.clone();
        let (mut dlw, mut dlb) = (vec![0f32; ch], vec![0f32; ch]);
        layernorm_backward(&mut dres2, &mut dlw, &mut dlb, &dln2, &a.residual2[lo..lo + n * ch], s(p.ln2w, ch), &a.ln2_mean[li * n..(li + 1) * n], &a.ln2_rstd[li * n..(li + 1) * n], n, ch);
        add(gs(&mut g, p.ln2w, li, ch), &dlw);
        add(gs(&mut g, p.ln2b, li, ch), &dlb);
        // residual2 = residual + attproj(attention(qkv(ln1(residual))))
        let mut datty = vec![0f32; n * ch];
        let mut dw = vec![0f32; ch * ch];
        let mut dbias = vec![0f32; ch];
        matmul_backward(&mut datty, &mut dw, Some(&mut dbias), &dres2, &a.atty[lo..lo + n * ch], s(p.attprojw, ch * ch), n, ch, ch);
        add(gs(&mut g, p.attprojw, li, ch * ch), &dw);
        add(gs(&mut g, p.attprojb, li, ch), &dbias);
        let att_len = b * nh * t * t;
        let mut dqkv = vec![0f32; n * 3 * ch];
        attention_backward(&mut dqkv, &datty, &a.qkv[lo3..lo3 + n * 3 * ch], &a.att[li * att_len..(li + 1) * att_len], b, t, ch, nh);
        let mut dln1 = vec![0f32; n * ch];
        let mut dw = vec![0f32; 3 * ch * ch];
        let mut dbias = vec![0f32; 3 * ch];
        matmul_backward(&mut dln1, &mut dw, Some(&mut dbias), &dqkv, &a.ln1[lo..lo + n * ch], s(p.qkvw, 3 * ch * ch), n, ch, 3 * ch);
        add(gs(&mut g, p.qkvw, li, 3 * ch * ch), &dw);
        add(gs(&mut g, p.qkvb, li, 3 * ch), &dbias);
        let mut dres1 = dres2.clone();
        let (mut dlw, mut dlb) = (vec![0f32; ch], vec![0f32; ch]);
        layernorm_backward(&mut dres1, &mut dlw, &mut dlb, &dln1, residual, s(p.ln1w, ch), &a.ln1_mean[li * n..(li + 1) * n], &a.ln1_rstd[li * n..(li + 1) * n], n, ch);
        add(gs(&mut g, p.ln1w, li, ch), &dlw);
        add(gs(&mut g, p.ln1b, li, ch), &dlb);
        dres = dres1;
    }
    // encoded = wte[token] + wpe[position]
    for bi in 0..b {
        for ti in 0..t {
            let tok = a.inputs[bi * t + ti] as usize;
            for j in 0..ch {
                let d = dres[(bi * t + ti) * ch + j];
                g[p.wte + tok * ch + j] += d;
                g[p.wpe + ti * ch + j] += d;
            }
        }
    }
    g
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// AdamW state: first and second moments, step count.
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u32,
}

impl AdamW {
    pub fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], step: 0 }
    }

    /// One step (decoupled weight decay on every parameter, as llm.c's reference does).
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) {
        self.step += 1;
        let (c1, c2) = (1.0 - beta1.powi(self.step as i32), 1.0 - beta2.powi(self.step as i32));
        for i in 0..params.len() {
            let g = grads[i];
            self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * g;
            self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * g * g;
            let (mh, vh) = (self.m[i] / c1, self.v[i] / c2);
            params[i] -= lr * (mh / (vh.sqrt() + eps) + weight_decay * params[i]);
        }
    }
}
