//! Checkpoints: the weights as safetensors under the names of Hugging Face's GPT-2 (so PyTorch
//! loads them; its Conv1D layers store weights as in x out, so linear weights are transposed on
//! the way out and back), plus a second file with the AdamW state, the step and the data position.
//! Both are written to temporary files and renamed into place, weights last-but-one and state last,
//! so a crash during a save leaves the previous checkpoint whole.

use crate::reference::{AdamW, Config, ParamLayout};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// What can go wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {detail}")]
    Bad { path: String, detail: String },
}

fn bad(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Bad { path: path.display().to_string(), detail: detail.into() }
}

/// (name, offset, shape as stored, transposed?) for every tensor, in Hugging Face GPT-2 naming.
fn tensors(c: &Config) -> Vec<(String, usize, Vec<usize>, bool)> {
    let p = ParamLayout::new(c);
    let ch = c.channels;
    let mut v = vec![("wte.weight".to_string(), p.wte, vec![c.vocab, ch], false), ("wpe.weight".to_string(), p.wpe, vec![c.max_seq, ch], false)];
    for l in 0..c.layers {
        let h = |s: &str| format!("h.{l}.{s}");
        // Ours: out x in (Y = X W^T). Hugging Face Conv1D: in x out.
        v.push((h("ln_1.weight"), p.ln1w + l * ch, vec![ch], false));
        v.push((h("ln_1.bias"), p.ln1b + l * ch, vec![ch], false));
        v.push((h("attn.c_attn.weight"), p.qkvw + l * 3 * ch * ch, vec![ch, 3 * ch], true));
        v.push((h("attn.c_attn.bias"), p.qkvb + l * 3 * ch, vec![3 * ch], false));
        v.push((h("attn.c_proj.weight"), p.attprojw + l * ch * ch, vec![ch, ch], true));
        v.push((h("attn.c_proj.bias"), p.attprojb + l * ch, vec![ch], false));
        v.push((h("ln_2.weight"), p.ln2w + l * ch, vec![ch], false));
        v.push((h("ln_2.bias"), p.ln2b + l * ch, vec![ch], false));
        let fr = c.fc_rows(); // 4C, or 8C (up then gate) with SwiGLU
        v.push((h("mlp.c_fc.weight"), p.fcw + l * fr * ch, vec![ch, fr], true));
        v.push((h("mlp.c_fc.bias"), p.fcb + l * fr, vec![fr], false));
        v.push((h("mlp.c_proj.weight"), p.fcprojw + l * 4 * ch * ch, vec![4 * ch, ch], true));
        v.push((h("mlp.c_proj.bias"), p.fcprojb + l * ch, vec![ch], false));
    }
    v.push(("ln_f.weight".to_string(), p.lnfw, vec![ch], false));
    v.push(("ln_f.bias".to_string(), p.lnfb, vec![ch], false));
    v
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_atomic(path: &Path, data: Vec<(String, Vec<usize>, Vec<u8>)>) -> Result<(), CheckpointError> {
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let out = safetensors::serialize(views, None).map_err(|e| bad(path, e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| bad(path, format!("writing: {e}")))
}

/// Saves `dir/model.safetensors` and `dir/state.safetensors`.
pub fn save(dir: &Path, c: &Config, params: &[f32], opt: &AdamW, data_position: usize) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut model = Vec::new();
    for (name, off, shape, transposed) in tensors(c) {
        let n: usize = shape.iter().product();
        let mut v = params[off..off + n].to_vec();
        if transposed {
            let (rows, cols) = (shape[0], shape[1]); // stored in x out; ours is out x in = cols x rows
            for i in 0..rows {
                for j in 0..cols {
                    v[i * cols + j] = params[off + j * rows + i];
                }
            }
        }
        model.push((name, shape, bytes(&v)));
    }
    write_atomic(&dir.join("model.safetensors"), model)?;
    let meta = vec![c.vocab as f32, c.max_seq as f32, c.layers as f32, c.heads as f32, c.channels as f32, opt.step as f32, data_position as f32, c.swiglu as u8 as f32];
    write_atomic(
        &dir.join("state.safetensors"),
        vec![("adam.m".into(), vec![opt.m.len()], bytes(&opt.m)), ("adam.v".into(), vec![opt.v.len()], bytes(&opt.v)), ("meta".into(), vec![meta.len()], bytes(&meta))],
    )
}

/// Loads a checkpoint saved by `save`: (config, params, optimizer, data position).
pub fn load(dir: &Path) -> Result<(Config, Vec<f32>, AdamW, usize), CheckpointError> {
    let read = |name: &str| -> Result<Vec<u8>, CheckpointError> { std::fs::read(dir.join(name)).map_err(|e| bad(&dir.join(name), e.to_string())) };
    let state_bytes = read("state.safetensors")?;
    let state = safetensors::SafeTensors::deserialize(&state_bytes).map_err(|e| bad(&dir.join("state.safetensors"), format!("corrupt: {e}")))?;
    let f32s = |st: &safetensors::SafeTensors, n: &str, path: &Path| -> Result<Vec<f32>, CheckpointError> {
        let t = st.tensor(n).map_err(|e| bad(path, format!("missing {n}: {e}")))?;
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let sp = dir.join("state.safetensors");
    let meta = f32s(&state, "meta", &sp)?;
    if meta.len() != 8 {
        return Err(bad(&sp, "meta has the wrong length"));
    }
    let c = Config { vocab: meta[0] as usize, max_seq: meta[1] as usize, layers: meta[2] as usize, heads: meta[3] as usize, channels: meta[4] as usize, swiglu: meta[7] != 0.0 };
    let p = ParamLayout::new(&c);
    let opt = AdamW { m: f32s(&state, "adam.m", &sp)?, v: f32s(&state, "adam.v", &sp)?, step: meta[5] as u32 };
    if opt.m.len() != p.total || opt.v.len() != p.total {
        return Err(bad(&sp, "optimizer state does not match the model size"));
    }
    let model_bytes = read("model.safetensors")?;
    let mp = dir.join("model.safetensors");
    let model = safetensors::SafeTensors::deserialize(&model_bytes).map_err(|e| bad(&mp, format!("corrupt: {e}")))?;
    let mut params = vec![0f32; p.total];
    for (name, off, shape, transposed) in tensors(&c) {
        let v = f32s(&model, &name, &mp)?;
        if v.len() != shape.iter().product::<usize>() {
            return Err(bad(&mp, format!("{name} has {} values, expected {:?}", v.len(), shape)));
        }
        if transposed {
            let (rows, cols) = (shape[0], shape[1]);
            for i in 0..rows {
                for j in 0..cols {
                    params[off + j * rows + i] = v[i * cols + j];
                }
            }
        } else {
            params[off..off + v.len()].copy_from_slice(&v);
        }
    }
    Ok((c, params, opt, meta[6] as usize))
}
