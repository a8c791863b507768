//! `LaunchShape`: the launch shape of twofour's memory-bound kernels (mask search, MVUE, gated
//! activations): threads a block and how many blocks a multiprocessor gets before the grid-stride
//! loops take over. It never changes a result (every shape walks the same tiles with the same
//! arithmetic; tests/launch.rs checks each against the default bit for bit), only the speed, so
//! the tuner (`twofour-tune`) picks it per shape and the library looks it up in the shape table.

use crate::device::Device;
use crate::shape_table;
use cudarc::driver::LaunchConfig;
use serde::{Deserialize, Serialize};

/// One launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LaunchShape {
    /// Threads a block (a multiple of 32; the mask and MVUE kernels are compiled for 64, 128, 256).
    pub block: u32,
    /// Cap on the grid, in blocks per multiprocessor; 0: no cap (one work item per thread or warp).
    pub blocks_per_sm: u32,
}

/// The tunable kernel families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// transposable_mask_compress / apply_mask_compress: one warp per 32 x 32 tile.
    Mask24,
    /// mvue24_compress: one warp per 32 features x 64 tokens.
    Mvue24,
    /// gated_forward / gated_backward: 8 elements a thread.
    Gated,
}

impl LaunchShape {
    /// The untuned choice (what the kernels used before the tuner knew them).
    pub fn default_for(family: Family) -> Self {
        match family {
            Family::Mask24 | Family::Mvue24 => Self { block: 128, blocks_per_sm: 0 },
            Family::Gated => Self { block: 256, blocks_per_sm: 16 },
        }
    }

    /// Every shape the tuner tries for a family.
    pub fn candidates(family: Family) -> Vec<Self> {
        let blocks: &[u32] = match family {
            Family::Mask24 | Family::Mvue24 => &[64, 128, 256],
            Family::Gated => &[128, 256, 512],
        };
        let caps: &[u32] = &[0, 4, 8, 16, 32];
        blocks.iter().flat_map(|&block| caps.iter().map(move |&blocks_per_sm| Self { block, blocks_per_sm })).collect()
    }

    /// Blocks to launch for `items` work items of which one block takes `per_block`.
    pub fn grid(self, items: usize, per_block: usize, sms: usize) -> u32 {
        let need = items.div_ceil(per_block.max(1)).max(1);
        let cap = if self.blocks_per_sm == 0 { need } else { (self.blocks_per_sm as usize * sms).max(1) };
        need.min(cap) as u32
    }

    /// The kernel-name suffix of a per-warp-tile kernel compiled for this block size.
    pub fn warps_suffix(self) -> &'static str {
        match self.block {
            64 => "_w2",
            256 => "_w8",
            _ => "_w4",
        }
    }

    /// Threads a block, rounded to a compiled instance for the per-warp-tile kernels.
    pub fn tile_block(self) -> u32 {
        match self.block {
            64 | 256 => self.block,
            _ => 128,
        }
    }
}

/// The shape the library uses for `kernel` (a table kernel name, e.g. "mask24_search") on a
/// rows x cols operand: the active shape table's (exact or nearest tuned shape), else the default.
pub fn resolve(dev: &Device, family: Family, kernel: &str, layout: &str, rows: usize, cols: usize) -> LaunchShape {
    shape_table::active(dev.name(), dev.compute_capability())
        .and_then(|t| t.lookup_launch(kernel, layout, rows, cols))
        .unwrap_or_else(|| LaunchShape::default_for(family))
}

/// A grid-stride launch of `blocks` blocks of `threads` threads capped at what is resident at
/// once: the driver's occupancy answer for `func` (cached per device and kernel image, under
/// `name`) times the SMs.
pub(crate) fn resident_grid(dev: &Device, name: &str, func: &cudarc::driver::CudaFunction, threads: u32, blocks: usize) -> crate::Result<LaunchConfig> {
    let per_sm = once_per_device(dev, name, || {
        use crate::error::During;
        Ok(func.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None).during(format!("querying {name}'s residency"))?.max(1) as usize)
    })?;
    Ok(LaunchConfig { grid_dim: (blocks.min(sms(dev) * per_sm).max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// A per-device fact about a kernel that never changes (how many of its blocks or clusters fit),
/// computed once per (device, kernel image, key) and remembered: occupancy queries cost a host
/// computation on every call otherwise. The image is part of the key because the same kernel
/// compiled for another image (the forced Ampere path's PTX) uses other registers.
pub(crate) fn once_per_device(dev: &Device, key: &str, compute: impl FnOnce() -> crate::Result<usize>) -> crate::Result<usize> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<(usize, String), usize>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let k = (dev.context().ordinal(), format!("{:?} {key}", dev.image()));
    if let Some(&n) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
        return Ok(n);
    }
    let n = compute()?;
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(k, n);
    Ok(n)
}

/// Multiprocessors of the device (132 on an H100 SXM when the query fails).
pub fn sms(dev: &Device) -> usize {
    dev.context().attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map(|x| x as usize).unwrap_or(132)
}
