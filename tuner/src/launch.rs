//! Launch-shape tuning of the memory-bound kernels (mask search and apply, MVUE, gated
//! activations): every `LaunchShape` candidate runs on random operands, its output is checked bit
//! for bit against the default shape's (the default itself is tested against the CPU reference),
//! and it is timed with two rotating inputs so L2 does not flatter small operands.

use half::bf16;
use twofour::launch::{Family, LaunchShape};
use twofour::reference::Gate;
use cudarc::driver::CudaSlice;
use twofour::{Device, DeviceMatrix, Error, GatedLayout, Result, Sparse24};

/// One kernel on one operand shape, with its inputs (two, rotated) and outputs.
pub enum Problem {
    Mask { apply: bool, w: [DeviceMatrix<bf16>; 2], out_w: Sparse24, out_wt: Sparse24 },
    Mvue { dy: [DeviceMatrix<bf16>; 2], out: Sparse24 },
    Gated { backward: bool, layout: GatedLayout, h: [DeviceMatrix<bf16>; 2], dy: DeviceMatrix<bf16>, out: DeviceMatrix<bf16> },
}

/// (table kernel name, table layout, rows, cols) of a problem.
pub struct Key {
    pub kernel: &'static str,
    pub layout: String,
    pub rows: usize,
    pub cols: usize,
    pub family: Family,
}

impl Problem {
    /// Mask search (apply = false) or apply on a rows x cols weight.
    pub fn mask(dev: &Device, apply: bool, rows: usize, cols: usize, random: &dyn Fn(usize, usize, u64) -> Result<DeviceMatrix<bf16>>) -> Result<Self> {
        let w = [random(rows, cols, 11)?, random(rows, cols, 12)?];
        let mut out_w = Sparse24::alloc(dev, rows, cols)?;
        let mut out_wt = Sparse24::alloc(dev, cols, rows)?;
        if apply {
            // A valid stored mask to apply: the search's, on the first input.
            twofour::transposable_mask_compress_into(dev, &w[0], &mut out_w, &mut out_wt)?;
        }
        Ok(Problem::Mask { apply, w, out_w, out_wt })
    }

    /// MVUE of a tokens x feats output gradient.
    pub fn mvue(dev: &Device, tokens: usize, feats: usize, random: &dyn Fn(usize, usize, u64) -> Result<DeviceMatrix<bf16>>) -> Result<Self> {
        Ok(Problem::Mvue { dy: [random(tokens, feats, 21)?, random(tokens, feats, 22)?], out: Sparse24::alloc(dev, feats, tokens)? })
    }

    /// SwiGLU forward or backward over tokens x F outputs, H in `layout`.
    pub fn gated(dev: &Device, backward: bool, layout: GatedLayout, tokens: usize, f: usize, random: &dyn Fn(usize, usize, u64) -> Result<DeviceMatrix<bf16>>) -> Result<Self> {
        let (hr, hc, yr, yc) = match layout {
            GatedLayout::TokenMajor => (tokens, 2 * f, tokens, f),
            GatedLayout::FeatureMajor => (2 * f, tokens, f, tokens),
        };
        let h = [random(hr, hc, 31)?, random(hr, hc, 32)?];
        let dy = random(yr, yc, 33)?;
        let out = if backward { DeviceMatrix::poisoned(dev, hr, hc)? } else { DeviceMatrix::poisoned(dev, yr, yc)? };
        Ok(Problem::Gated { backward, layout, h, dy, out })
    }

    pub fn key(&self) -> Key {
        match self {
            Problem::Mask { apply, w, .. } => Key { kernel: if *apply { "mask24_apply" } else { "mask24_search" }, layout: "row-major".into(), rows: w[0].rows(), cols: w[0].cols(), family: Family::Mask24 },
            Problem::Mvue { dy, .. } => Key { kernel: "mvue24", layout: "row-major".into(), rows: dy[0].rows(), cols: dy[0].cols(), family: Family::Mvue24 },
            Problem::Gated { backward, layout, dy, .. } => {
                let (t, f) = match layout {
                    GatedLayout::TokenMajor => (dy.rows(), dy.cols()),
                    GatedLayout::FeatureMajor => (dy.cols(), dy.rows()),
                };
                Key { kernel: if *backward { "gated_backward" } else { "gated_forward" }, layout: twofour::gated::table_layout(Gate::SwiGlu, *layout), rows: t, cols: f, family: Family::Gated }
            }
        }
    }

    /// Queues one call. The mask kernels' statuses are dropped unchecked here (timing must not
    /// wait on the GPU); `output` checks them.
    pub(crate) fn run(&mut self, dev: &Device, shape: LaunchShape, which: usize) -> Result<()> {
        match self {
            Problem::Mask { apply: false, w, out_w, out_wt } => twofour::transposable_mask_compress_async(dev, &w[which], out_w, out_wt, Some(shape)).map(drop),
            Problem::Mask { apply: true, w, out_w, out_wt } => twofour::apply_mask_compress_async(dev, &w[which], out_w, out_wt, Some(shape)).map(drop),
            Problem::Mvue { dy, out } => twofour::mvue24_compress_with(dev, &dy[which], 7, 3, out, Some(shape)),
            Problem::Gated { backward: false, layout, h, out, .. } => twofour::gated_forward_with(dev, Gate::SwiGlu, *layout, &h[which], out, Some(shape)),
            Problem::Gated { backward: true, layout, h, dy, out } => twofour::gated_backward_with(dev, Gate::SwiGlu, *layout, &h[which], dy, out, Some(shape)),
        }
    }

    /// Every output word, for the bit-for-bit check.
    fn output(&mut self, dev: &Device, shape: LaunchShape) -> Result<Vec<u32>> {
        match self {
            Problem::Mask { apply: false, w, out_w, out_wt } => twofour::transposable_mask_compress_with(dev, &w[0], out_w, out_wt, Some(shape))?,
            Problem::Mask { apply: true, w, out_w, out_wt } => twofour::apply_mask_compress_with(dev, &w[0], out_w, out_wt, Some(shape))?,
            _ => self.run(dev, shape, 0)?,
        }
        let words = |h: twofour::Sparse24Host| -> Vec<u32> { h.values.iter().map(|x| x.to_bits() as u32).chain(h.meta).chain(h.mask.words().iter().copied()).collect() };
        Ok(match self {
            Problem::Mask { out_w, out_wt, .. } => {
                let mut v = words(out_w.to_host(dev)?);
                v.extend(words(out_wt.to_host(dev)?));
                v
            }
            Problem::Mvue { out, .. } => words(out.to_host(dev)?),
            Problem::Gated { out, .. } => dev.download(out.data())?.iter().map(|x| x.to_bits() as u32).collect(),
        })
    }

    /// Best launch shape: (shape, its ms, the default's ms). Candidates are checked against the
    /// default's output bit for bit, then all of them (the default first) timed in interleaved
    /// rounds, as the GEMM's tile configs are (`crate::interleaved_medians`).
    pub fn tune(&mut self, dev: &Device, reps: usize, flush: &mut CudaSlice<u8>, mut progress: impl FnMut(LaunchShape)) -> Result<(LaunchShape, f64, f64)> {
        let key = self.key();
        let default = LaunchShape::default_for(key.family);
        let reference = self.output(dev, default)?;
        let mut shapes = vec![default];
        for shape in LaunchShape::candidates(key.family) {
            progress(shape);
            if self.output(dev, shape)? != reference {
                return Err(Error::InvalidData { op: "twofour-tune", detail: format!("{} {}x{} with {shape:?}: output differs from the default launch's (a launch shape must never change a result)", key.kernel, key.rows, key.cols) });
            }
            shapes.push(shape);
        }
        let ms = crate::interleaved_medians(dev, reps, flush, shapes.len(), |i, which| self.run(dev, shapes[i], which))?;
        let mut best = (default, ms[0]);
        for (shape, &t) in shapes.iter().zip(&ms).skip(1) {
            if t < best.1 {
                best = (*shape, t);
            }
        }
        Ok((best.0, best.1, ms[0]))
    }
}
