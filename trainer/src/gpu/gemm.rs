//! Dense bf16 GEMMs through cuBLASLt for the GPU trainer: row-major operands mapped onto
//! cuBLASLt's column-major view, bf16 or f32 output (weight gradients accumulate in f32), optional
//! bias epilogue. Each distinct problem gets its descriptors and heuristic algorithm once; later
//! calls reuse them (so the same algorithm runs every step: reproducible).

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use twofour::{Error, Result};

fn lt_err(e: lt::CublasError) -> Error {
    Error::InvalidData { op: "cuBLASLt", detail: format!("{e:?}") }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    transa: bool,
    transb: bool,
    m: u64,
    n: u64,
    k: u64,
    lda: i64,
    ldb: i64,
    ldc: i64,
    out_f32: bool,
    epi: u8,
}

/// What the GEMM's epilogue adds (cuBLASLt epilogues; pointers to bf16 device memory).
#[derive(Clone, Copy, Debug)]
pub enum Epilogue {
    None,
    /// D = AB + bias[row].
    Bias(u64),
    /// aux = AB + bias (kept for the backward pass), D = gelu(aux) (tanh form); aux has D's shape,
    /// leading dimension `ld`.
    GeluAuxBias { bias: u64, aux: u64, ld: usize },
    /// D = AB * gelu'(aux): the GELU backward fused into the GEMM that makes its input gradient.
    DGelu { aux: u64, ld: usize },
    /// bias_out (f32, one per column of D) = the sum of B over the GEMM's k: a weight-gradient
    /// GEMM (k = tokens) that also makes the bias gradient.
    BGradB { bias_out: u64 },
}

impl Epilogue {
    fn code(&self) -> u8 {
        match self {
            Epilogue::None => 0,
            Epilogue::Bias(_) => 1,
            Epilogue::GeluAuxBias { .. } => 2,
            Epilogue::DGelu { .. } => 3,
            Epilogue::BGradB { .. } => 4,
        }
    }
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: HashMap<Key, Plan>,
    /// With `TWOFOUR_PROFILE=1`: seconds and calls per GEMM kind (each call synchronized).
    pub profile: Option<std::collections::BTreeMap<String, (f64, usize)>>,
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = lt::create_handle().map_err(lt_err)?;
        // SAFETY: filled by cuBLASLt before it is read.
        let workspace = unsafe { stream.alloc::<u8>(32 << 20) }.map_err(|e| Error::Driver { during: "allocating the cuBLASLt workspace".into(), source: e })?;
        let profile = (std::env::var("TWOFOUR_PROFILE").as_deref() == Ok("1")).then(Default::default);
        Ok(Self { handle, workspace, stream, plans: HashMap::new(), profile })
    }

    fn plan(&mut self, key: Key, epi_arg: Epilogue) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let bf = sys::cudaDataType_t::CUDA_R_16BF;
            let out = if key.out_f32 { sys::cudaDataType_t::CUDA_R_32F } else { bf };
            let (ar, ac) = if key.transa { (key.k, key.m) } else { (key.m, key.k) };
            let (br, bc) = if key.transb { (key.n, key.k) } else { (key.k, key.n) };
            let a = lt::create_matrix_layout(bf, ar, ac, key.lda).map_err(lt_err)?;
            let b = lt::create_matrix_layout(bf, br, bc, key.ldb).map_err(lt_err)?;
            let c = lt::create_matrix_layout(out, key.m, key.n, key.ldc).map_err(lt_err)?;
            let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F).map_err(lt_err)?;
            let set = |attr, v: i32| {
                // SAFETY: desc is live; the attribute takes a 4-byte value.
                unsafe { lt::set_matmul_desc_attribute(desc, attr, &v as *const i32 as *const c_void, 4) }.map_err(lt_err)
            };
            set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, key.transa as i32)?;
            set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, key.transb as i32)?;
            let epi = match key.epi {
                1 => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS),
                2 => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX_BIAS),
                3 => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DGELU),
                4 => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB),
                _ => None,
            };
            if key.epi >= 4 {
                set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, sys::cudaDataType_t::CUDA_R_32F as i32)?;
            }
            if let Some(e) = epi {
                set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, e as i32)?;
            }
            if let Some((_, ld)) = aux_of(&epi_arg) {
                let ld = ld as i64;
                // SAFETY: desc is live; the attribute takes an int64.
                unsafe { lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld as *const i64 as *const c_void, 8) }.map_err(lt_err)?;
            }
            let pref = lt::create_matmul_pref().map_err(lt_err)?;
            let size = self.workspace.len();
            // SAFETY: pref is live; the attribute takes a usize.
            unsafe {
                lt::set_matmul_pref_attribute(pref, sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &size as *const usize as *const c_void, std::mem::size_of::<usize>())
            }
            .map_err(lt_err)?;
            // SAFETY: every handle is live.
            let h = unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref) };
            // SAFETY: pref is no longer used.
            unsafe { lt::destroy_matmul_pref(pref) }.map_err(lt_err)?;
            let h = h.map_err(|e| Error::Unsupported { op: "cuBLASLt", detail: format!("no algorithm for {key:?}: {e:?}") })?;
            self.plans.insert(key, Plan { desc, a, b, c, algo: h.algo });
        }
        Ok(&self.plans[&key])
    }

    /// D (m x n, column-major, ld ldc) = op(A) op(B) + beta D (+ bias[m] per row), in cuBLASLt's
    /// column-major terms; A, B, bias bf16, D bf16 or f32 (`out_f32`). Raw device pointers: the
    /// trainer addresses layers inside big buffers.
    ///
    /// # Safety
    /// Every pointer must address a live allocation holding the matrix its layout describes,
    /// on this handle's stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(&mut self, transa: bool, transb: bool, m: usize, n: usize, k: usize, a: u64, lda: usize, b: u64, ldb: usize, d: u64, out_f32: bool, ldc: usize, beta: f32, epi: Epilogue) -> Result<()> {
        let key = Key { transa, transb, m: m as u64, n: n as u64, k: k as u64, lda: lda as i64, ldb: ldb as i64, ldc: ldc as i64, out_f32, epi: epi.code() };
        let stream = self.stream.clone();
        let (handle, ws_len) = (self.handle, self.workspace.len());
        let ws = self.workspace.device_ptr(&stream).0;
        let plan = self.plan(key, epi)?;
        let bias = match epi {
            Epilogue::Bias(b) | Epilogue::GeluAuxBias { bias: b, .. } | Epilogue::BGradB { bias_out: b } => Some(b),
            _ => None,
        };
        if let Some(p) = bias {
            // SAFETY: desc is live; the attribute takes a device pointer.
            unsafe { lt::set_matmul_desc_attribute(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p as *const u64 as *const c_void, 8) }.map_err(lt_err)?;
        }
        if let Some((p, _)) = aux_of(&epi) {
            // SAFETY: as above.
            unsafe { lt::set_matmul_desc_attribute(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p as *const u64 as *const c_void, 8) }.map_err(lt_err)?;
        }
        let alpha = 1.0f32;
        let t0 = self.profile.is_some().then(|| {
            let _ = stream.synchronize();
            std::time::Instant::now()
        });
        let plan = &self.plans[&key];
        // SAFETY: the caller's contract; the plan's layouts describe these matrices.
        let r = unsafe {
            lt::matmul(handle, plan.desc, &alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void, a as *const c_void, plan.a, b as *const c_void, plan.b, d as *const c_void, plan.c, d as *mut c_void, plan.c, &plan.algo, ws as *mut c_void, ws_len, stream.cu_stream() as sys::cudaStream_t)
        }
        .map_err(lt_err);
        if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
            let _ = stream.synchronize();
            let e = p.entry(format!("gemm {}{} -> {}{} (m {m} n {n} k {k})", if transa { "T" } else { "N" }, if transb { "T" } else { "N" }, if out_f32 { "f32" } else { "bf16" }, ["", " +bias", " +bias+gelu", " *gelu'", " +dbias"][key.epi as usize])).or_insert((0.0, 0));
            e.0 += t0.elapsed().as_secs_f64();
            e.1 += 1;
        }
        r
    }
}

fn aux_of(e: &Epilogue) -> Option<(u64, usize)> {
    match *e {
        Epilogue::GeluAuxBias { aux, ld, .. } | Epilogue::DGelu { aux, ld } => Some((aux, ld)),
        _ => None,
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: each handle was created here and is destroyed once.
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.c);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
