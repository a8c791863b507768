//! `ShapeTable`: the tile configuration the tuner (`twofour-tune`) found best per GEMM shape and
//! layout on one GPU and kernel build. The library consults, in order: a table named by the
//! `TWOFOUR_SHAPE_TABLE` environment variable, then the embedded table for the GPU (H100 today);
//! for a shape not in the table it takes the configuration of the nearest tuned shape of the same
//! layout (distance in log M, log N, log K), and without any table `TileConfig::default_for`.
//! A table made on another GPU or for another kernel build is rejected with a warning.

use crate::error::invalid;
use crate::launch::LaunchShape;
use crate::sparse_gemm::TileConfig;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::OnceLock;

/// Format version of the JSON file.
pub const TABLE_VERSION: u32 = 1;

/// The table shipped for the H100 (tables/h100.json, made by `twofour-tune`).
static EMBEDDED_H100: &str = include_str!("../tables/h100.json");

/// One tuned shape: a sparse GEMM (`config`) or a memory-bound kernel's launch shape (`launch`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// "sparse_gemm", or "mask24_search", "mask24_apply", "mvue24", "gated_forward",
    /// "gated_backward" (launch shapes; m, n = the operand's rows and columns, k = 0).
    pub kernel: String,
    /// How B is read and D written: `sparse_gemm::storage_layout` ("kmajor-colmajor" for a linear
    /// layer's forward and input gradient, "nmajor-rowmajor" for its weight gradient).
    pub layout: String,
    /// The linear-layer pass and shape name it was tuned for (informational).
    pub pass: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The GEMM's tile configuration (sparse_gemm entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<TileConfig>,
    /// The launch shape (the other kernels' entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchShape>,
    /// Median time of `config`, and of the untuned default, in ms.
    pub ms: f64,
    pub default_ms: f64,
}

/// A versioned table for one GPU and kernel build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShapeTable {
    pub version: u32,
    pub gpu: String,
    pub compute_capability: (i32, i32),
    pub driver: String,
    pub twofour_version: String,
    /// `kernels_hash()` of the build the table was measured with.
    pub kernels_hash: String,
    pub entries: Vec<TableEntry>,
}

/// FNV-1a 64 of what determines the kernels (build.rs: every cuda/ source, the nvcc flags, the
/// nvcc version), independent of the build folder: a table is only valid for the kernels it was
/// measured with.
pub fn kernels_hash() -> String {
    env!("TWOFOUR_KERNELS_HASH").to_string()
}

impl ShapeTable {
    /// An empty table for a GPU.
    pub fn new(gpu: &str, cc: (i32, i32), driver: &str) -> Self {
        Self {
            version: TABLE_VERSION,
            gpu: gpu.into(),
            compute_capability: cc,
            driver: driver.into(),
            twofour_version: env!("CARGO_PKG_VERSION").into(),
            kernels_hash: kernels_hash(),
            entries: Vec::new(),
        }
    }

    /// Parses a table; `Err` for malformed JSON or another format version.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let t: ShapeTable = serde_json::from_str(text).map_err(|e| invalid("ShapeTable", format!("{origin} is not a shape table: {e}")))?;
        if t.version != TABLE_VERSION {
            return Err(invalid("ShapeTable", format!("{origin} has format version {}, this twofour reads {TABLE_VERSION}; re-run twofour-tune", t.version)));
        }
        Ok(t)
    }

    /// Loads a table file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid("ShapeTable", format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes the table atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| invalid("ShapeTable", e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| invalid("ShapeTable", format!("writing {}: {e}", path.display())))
    }

    /// Why this table does not fit the running GPU and kernels, if it does not.
    pub fn mismatch(&self, gpu: &str, cc: (i32, i32)) -> Option<String> {
        if self.gpu != gpu || self.compute_capability != cc {
            return Some(format!("it was measured on {} (sm_{}{}), this is {gpu} (sm_{}{})", self.gpu, self.compute_capability.0, self.compute_capability.1, cc.0, cc.1));
        }
        if self.kernels_hash != kernels_hash() {
            return Some(format!("it was measured with another kernel build (hash {} vs {})", self.kernels_hash, kernels_hash()));
        }
        None
    }

    /// Replaces or adds an entry.
    pub fn insert(&mut self, e: TableEntry) {
        self.entries.retain(|x| !(x.kernel == e.kernel && x.layout == e.layout && (x.m, x.n, x.k) == (e.m, e.n, e.k)));
        self.entries.push(e);
    }

    /// The exact entry, if tuned.
    pub fn exact(&self, kernel: &str, layout: &str, m: usize, n: usize, k: usize) -> Option<&TableEntry> {
        self.entries.iter().find(|e| e.kernel == kernel && e.layout == layout && (e.m, e.n, e.k) == (m, n, k))
    }

    /// The configuration for a shape: the exact entry, else the nearest tuned shape of the same
    /// kernel and layout (Euclidean distance of log2 M, N, K), else `None`.
    pub fn lookup(&self, kernel: &str, layout: &str, m: usize, n: usize, k: usize) -> Option<TileConfig> {
        if let Some(c) = self.exact(kernel, layout, m, n, k).and_then(|e| e.config) {
            return Some(c);
        }
        let l = |x: usize| (x.max(1) as f64).log2();
        self.entries
            .iter()
            .filter(|e| e.kernel == kernel && e.layout == layout)
            .filter_map(|e| Some(((l(e.m) - l(m)).powi(2) + (l(e.n) - l(n)).powi(2) + (l(e.k) - l(k)).powi(2), e.config?)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
    }

    /// The launch shape for a rows x cols operand of `kernel`: the exact entry, else the nearest
    /// tuned shape of the same kernel and layout (log2 distance), else `None`.
    pub fn lookup_launch(&self, kernel: &str, layout: &str, rows: usize, cols: usize) -> Option<LaunchShape> {
        let l = |x: usize| (x.max(1) as f64).log2();
        self.entries
            .iter()
            .filter(|e| e.kernel == kernel && e.layout == layout)
            .filter_map(|e| Some(((l(e.m) - l(rows)).powi(2) + (l(e.n) - l(cols)).powi(2), e.launch?)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
    }
}

/// The table the library uses on a GPU: `TWOFOUR_SHAPE_TABLE`, else the embedded one, if it fits
/// the GPU and kernel build (a misfit is reported once on stderr and ignored).
pub fn active(gpu: &str, cc: (i32, i32)) -> Option<&'static ShapeTable> {
    static TABLE: OnceLock<Option<ShapeTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let (table, origin) = match std::env::var("TWOFOUR_SHAPE_TABLE") {
                Ok(p) => (ShapeTable::load(Path::new(&p)), p),
                Err(_) => (ShapeTable::parse(EMBEDDED_H100, "the embedded H100 table"), "the embedded H100 table".to_string()),
            };
            match table {
                Ok(t) => match t.mismatch(gpu, cc) {
                    None => Some(t),
                    Some(why) => {
                        if !t.entries.is_empty() || std::env::var("TWOFOUR_SHAPE_TABLE").is_ok() {
                            eprintln!("twofour: not using shape table {origin}: {why}; using the built-in heuristic (run twofour-tune to make a table for this GPU)");
                        }
                        None
                    }
                },
                Err(e) => {
                    eprintln!("twofour: ignoring shape table {origin}: {e}");
                    None
                }
            }
        })
        .as_ref()
}
