//! safetensors files for the `twofour` command-line tool: read 2-D weights in bf16/f16/f32, write
//! files atomically (temp file + rename, so a crash never leaves a half-written file in place).

use crate::error::invalid;
use crate::Result;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::Path;

/// One tensor of a file, owned.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// The values as bf16 (from BF16, F16 or F32), or `None` for other dtypes.
    pub fn to_bf16(&self) -> Option<Vec<bf16>> {
        let d = &self.data;
        Some(match self.dtype {
            Dtype::BF16 => d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|b| bf16::from_f32(f16::from_le_bytes([b[0], b[1]]).to_f32())).collect(),
            Dtype::F32 => d.chunks_exact(4).map(|b| bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
            _ => return None,
        })
    }

    /// Zeroes element i wherever `keep(i)` is false, in the tensor's own dtype.
    pub fn zero_where(&mut self, keep: impl Fn(usize) -> bool) {
        let width = self.data.len() / self.shape.iter().product::<usize>().max(1);
        for (i, chunk) in self.data.chunks_exact_mut(width).enumerate() {
            if !keep(i) {
                chunk.fill(0);
            }
        }
    }

    /// Is it a matrix (2-D)?
    pub fn matrix(&self) -> Option<(usize, usize)> {
        (self.shape.len() == 2).then(|| (self.shape[0], self.shape[1]))
    }
}

/// Reads every tensor of a safetensors file.
pub fn load(path: &Path) -> Result<Vec<Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| invalid("safetensors", format!("cannot read {}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| invalid("safetensors", format!("{} is not a valid safetensors file: {e}", path.display())))?;
    let mut out: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Tensor { name, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes tensors to `path` atomically: a temporary file in the same folder, then a rename.
pub fn save(path: &Path, tensors: &[Tensor]) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|v| (t.name.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid("safetensors", format!("bad tensor for {}: {e}", path.display())))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| invalid("safetensors", format!("serializing {}: {e}", path.display())))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| invalid("safetensors", format!("writing {}: {e}", path.display())))
}

/// Tensor `name` is selected by `patterns` (substring match; empty patterns select FFN weights:
/// names with "mlp", "fc" or "_proj" and ending in "weight").
pub fn selected(name: &str, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        name.ends_with("weight") && (name.contains("mlp") || name.contains("fc") || name.contains("_proj"))
    } else {
        patterns.iter().any(|p| name.contains(p.as_str()))
    }
}
