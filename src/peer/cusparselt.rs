//! A minimal cuSPARSELt driver for benchmarks: plan D = A (2:4) * B in bf16 with f32 compute, let
//! `cusparseLtMatmulSearch` pick the best algorithm, then run it. Loaded with `dlopen`
//! (`libcusparseLt.so.0` on the library path, or PyTorch's copy), so nothing links against it.

use super::cusparselt_sys as sys;
use crate::device::Device;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

/// Where PyTorch's wheel puts the library on the lent GPU machines.
const TORCH_PATH: &str = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cusparselt/lib/libcusparseLt.so.0";

/// Storage order of a cuSPARSELt operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Row,
    Col,
}

impl Order {
    fn raw(self) -> sys::cusparseOrder_t {
        match self {
            Order::Row => sys::cusparseOrder_t_CUSPARSE_ORDER_ROW,
            Order::Col => sys::cusparseOrder_t_CUSPARSE_ORDER_COL,
        }
    }
    fn ld(self, rows: usize, cols: usize) -> i64 {
        match self {
            Order::Row => cols as i64,
            Order::Col => rows as i64,
        }
    }
}

/// The loaded library and one handle.
pub struct CuSparseLt {
    lib: Arc<sys::CusparseLt>,
    handle: Box<sys::cusparseLtHandle_t>,
}

/// A planned product with A pruned and compressed, its workspace, and the chosen algorithm.
/// Dropping it destroys the plan and the descriptors (drop it before its `CuSparseLt`).
pub struct SpMM {
    lib: Arc<sys::CusparseLt>,
    plan: Box<sys::cusparseLtMatmulPlan_t>,
    // Kept alive (boxed, so their addresses are stable) for as long as the plan refers to them:
    // the matrix and matmul descriptors and the algorithm selection. (The matmul descriptor was
    // once freed after planning: the plan reads it at every call, and the timed calls then
    // faulted with an illegal address once the freed memory was reused.)
    descs: Vec<Box<sys::cusparseLtMatDescriptor_t>>,
    _mm: Box<sys::cusparseLtMatmulDescriptor_t>,
    alg: Box<sys::cusparseLtMatmulAlgSelection_t>,
    a_compressed: CudaSlice<u8>,
    workspace: CudaSlice<u8>,
    /// Workspace bytes the default algorithm asked for (before any search).
    default_workspace: usize,
}

impl CuSparseLt {
    /// Loads the library and creates a handle; `Err` says why (not installed, init failed).
    pub fn load() -> Result<Self, String> {
        let mut errors = Vec::new();
        for name in ["libcusparseLt.so.0", "libcusparseLt.so", TORCH_PATH] {
            // SAFETY: loading a shared library runs its initializers; cuSPARSELt's are benign.
            match unsafe { sys::CusparseLt::new(name) } {
                Ok(lib) => {
                    let mut handle = Box::new(sys::cusparseLtHandle_t { data: [0; 512] });
                    // SAFETY: handle points to writable storage of the right type.
                    let status = unsafe { lib.cusparseLtInit(&mut *handle) };
                    if status != sys::cusparseStatus_t_CUSPARSE_STATUS_SUCCESS {
                        return Err(format!("cusparseLtInit failed with status {status}"));
                    }
                    return Ok(Self { lib: Arc::new(lib), handle });
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        Err(format!("cuSPARSELt not found ({})", errors.join("; ")))
    }

    fn check(&self, status: sys::cusparseStatus_t, what: &str) -> Result<(), String> {
        if status == sys::cusparseStatus_t_CUSPARSE_STATUS_SUCCESS {
            return Ok(());
        }
        // SAFETY: returns a static C string for any status.
        let name = unsafe { CStr::from_ptr(self.lib.cusparseLtGetErrorName(status)) }.to_string_lossy().into_owned();
        Err(format!("{what}: {name}"))
    }

    /// The library version (e.g. 800 for 0.8.0).
    pub fn version(&self) -> Result<i32, String> {
        let mut v = 0;
        // SAFETY: handle initialized in load().
        self.check(unsafe { self.lib.cusparseLtGetVersion(&*self.handle, &mut v) }, "cusparseLtGetVersion")?;
        Ok(v)
    }

    /// Plans D (m x n) = A (m x k) * B (k x n), all bf16 with f32 compute. `a` is pruned to 2:4 in
    /// place (cuSPARSELt's own pruning) and compressed. `forced`: that algorithm (a config id, as
    /// `chosen` reports it: no search, so a profile's first launch is its kernel); `None`: the best
    /// algorithm is searched with `b` and `d` as the real operands.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_alg(
        &self,
        dev: &Device,
        (m, n, k): (usize, usize, usize),
        (a_order, b_order, d_order): (Order, Order, Order),
        a: &mut CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        d: &mut CudaSlice<bf16>,
        forced: Option<i32>,
    ) -> Result<SpMM, String> {
        let h = &*self.handle;
        let bf = sys::cudaDataType_t_CUDA_R_16BF;
        let new_desc = || Box::new(sys::cusparseLtMatDescriptor_t { data: [0; 512] });
        let (mut da, mut db, mut dd) = (new_desc(), new_desc(), new_desc());
        // SAFETY (this block and below): every pointer is to a live boxed descriptor or a device
        // buffer whose size matches the dimensions given to cuSPARSELt.
        unsafe {
            self.check(
                self.lib.cusparseLtStructuredDescriptorInit(h, &mut *da, m as i64, k as i64, a_order.ld(m, k), 16, bf, a_order.raw(), sys::cusparseLtSparsity_t_CUSPARSELT_SPARSITY_50_PERCENT),
                "structured descriptor of A",
            )?;
            self.check(self.lib.cusparseLtDenseDescriptorInit(h, &mut *db, k as i64, n as i64, b_order.ld(k, n), 16, bf, b_order.raw()), "descriptor of B")?;
            self.check(self.lib.cusparseLtDenseDescriptorInit(h, &mut *dd, m as i64, n as i64, d_order.ld(m, n), 16, bf, d_order.raw()), "descriptor of D")?;
        }
        let mut mm = Box::new(sys::cusparseLtMatmulDescriptor_t { data: [0; 512] });
        let mut alg = Box::new(sys::cusparseLtMatmulAlgSelection_t { data: [0; 512] });
        let mut plan = Box::new(sys::cusparseLtMatmulPlan_t { data: [0; 512] });
        let op = sys::cusparseOperation_t_CUSPARSE_OPERATION_NON_TRANSPOSE;
        let stream = dev.stream();
        let mut raw_stream = stream.cu_stream() as sys::cudaStream_t;
        unsafe {
            self.check(self.lib.cusparseLtMatmulDescriptorInit(h, &mut *mm, op, op, &*da, &*db, &*dd, &*dd, sys::cusparseComputeType_CUSPARSE_COMPUTE_32F), "matmul descriptor")?;
            self.check(self.lib.cusparseLtMatmulAlgSelectionInit(h, &mut *alg, &*mm, sys::cusparseLtMatmulAlg_t_CUSPARSELT_MATMUL_ALG_DEFAULT), "algorithm selection")?;
            if let Some(id) = forced {
                let id = id as std::os::raw::c_int;
                self.check(
                    self.lib.cusparseLtMatmulAlgSetAttribute(h, &mut *alg, sys::cusparseLtMatmulAlgAttribute_t_CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id as *const std::os::raw::c_int as *const c_void, std::mem::size_of::<std::os::raw::c_int>()),
                    "setting the algorithm",
                )?;
            }
            self.check(self.lib.cusparseLtMatmulPlanInit(h, &mut *plan, &*mm, &*alg), "plan")?;
            let (pa, _ga) = a.device_ptr_mut(stream);
            self.check(self.lib.cusparseLtSpMMAPrune(h, &*mm, pa as *const c_void, pa as *mut c_void, sys::cusparseLtPruneAlg_t_CUSPARSELT_PRUNE_SPMMA_TILE, raw_stream), "prune")?;
        }
        let (mut size, mut buf_size, mut ws_size) = (0usize, 0usize, 0usize);
        unsafe {
            self.check(self.lib.cusparseLtSpMMACompressedSize(h, &*plan, &mut size, &mut buf_size), "compressed size")?;
            self.check(self.lib.cusparseLtMatmulGetWorkspace(h, &*plan, &mut ws_size), "workspace size")?;
        }
        let mut a_compressed = stream.alloc_zeros::<u8>(size.max(1)).map_err(|e| e.to_string())?;
        let mut scratch = stream.alloc_zeros::<u8>(buf_size.max(1)).map_err(|e| e.to_string())?;
        let workspace = stream.alloc_zeros::<u8>(ws_size.max(1)).map_err(|e| e.to_string())?;
        unsafe {
            let (pa, _ga) = a.device_ptr(stream);
            let (pc, _gc) = a_compressed.device_ptr_mut(stream);
            let (ps, _gs) = scratch.device_ptr_mut(stream);
            self.check(self.lib.cusparseLtSpMMACompress(h, &*plan, pa as *const c_void, pc as *mut c_void, ps as *mut c_void, raw_stream), "compress")?;
        }
        let mut spmm = SpMM { lib: self.lib.clone(), plan, descs: vec![da, db, dd], _mm: mm, alg, a_compressed, workspace, default_workspace: ws_size };
        if forced.is_some() {
            return Ok(spmm);
        }
        // Search: cuSPARSELt times its algorithms on these operands and keeps the fastest in the plan.
        let (alpha, beta) = (1f32, 0f32);
        unsafe {
            let (pc, _gc) = spmm.a_compressed.device_ptr(stream);
            let (pb, _gb) = b.device_ptr(stream);
            let (pd, _gd) = d.device_ptr_mut(stream);
            let (pw, _gw) = spmm.workspace.device_ptr_mut(stream);
            self.check(
                self.lib.cusparseLtMatmulSearch(h, &mut *spmm.plan, &alpha as *const f32 as *const c_void, pc as *const c_void, pb as *const c_void, &beta as *const f32 as *const c_void, pd as *const c_void, pd as *mut c_void, pw as *mut c_void, &mut raw_stream, 1),
                "algorithm search",
            )?;
        }
        // The workspace was sized for the plan's first (default) algorithm; the one the search
        // keeps may need more (its split-K partials). Sized before the search only, cuSPARSELt's
        // timed calls faulted now and then with an illegal address (GPT-2 small fc2 fwd, XL fc2
        // dx: docs/bench/notes.md): query again and grow it.
        let mut ws_after = 0usize;
        // SAFETY: the handle and the plan are live.
        unsafe { self.check(self.lib.cusparseLtMatmulGetWorkspace(h, &*spmm.plan, &mut ws_after), "workspace size after the search")? };
        if ws_after > spmm.workspace.len() {
            spmm.workspace = stream.alloc_zeros::<u8>(ws_after).map_err(|e| e.to_string())?;
        }
        Ok(spmm)
    }

    /// The algorithm the search kept in `spmm`'s plan: (configuration id of
    /// CUSPARSELT_MATMUL_ALG_CONFIG_ID, split-K factor, split-K mode: 1 one kernel, 2 two kernels),
    /// so a profile can name the kernel the timed calls launch.
    pub fn chosen(&self, spmm: &SpMM) -> Result<(i32, i32, i32), String> {
        let mut v = [0i32; 3];
        let attrs = [
            sys::cusparseLtMatmulAlgAttribute_t_CUSPARSELT_MATMUL_ALG_CONFIG_ID,
            sys::cusparseLtMatmulAlgAttribute_t_CUSPARSELT_MATMUL_SPLIT_K,
            sys::cusparseLtMatmulAlgAttribute_t_CUSPARSELT_MATMUL_SPLIT_K_MODE,
        ];
        for (out, attr) in v.iter_mut().zip(attrs) {
            // SAFETY: the handle and the selection live as long as `self` and `spmm`; the
            // attribute is an int (cusparseLt.h), written into `out`.
            unsafe {
                self.check(
                    self.lib.cusparseLtMatmulAlgGetAttribute(&*self.handle, &*spmm.alg, attr, out as *mut i32 as *mut c_void, std::mem::size_of::<i32>()),
                    "reading the chosen algorithm",
                )?;
            }
        }
        Ok((v[0], v[1], v[2]))
    }

    /// Runs a planned product on `b` into `d`.
    pub fn matmul(&self, dev: &Device, spmm: &mut SpMM, b: &CudaSlice<bf16>, d: &mut CudaSlice<bf16>) -> Result<(), String> {
        let stream = dev.stream();
        let mut raw_stream = stream.cu_stream() as sys::cudaStream_t;
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: as in plan(); the plan's buffers live in `spmm`.
        unsafe {
            let (pc, _gc) = spmm.a_compressed.device_ptr(stream);
            let (pb, _gb) = b.device_ptr(stream);
            let (pd, _gd) = d.device_ptr_mut(stream);
            let (pw, _gw) = spmm.workspace.device_ptr_mut(stream);
            self.check(
                self.lib.cusparseLtMatmul(&*self.handle, &*spmm.plan, &alpha as *const f32 as *const c_void, pc as *const c_void, pb as *const c_void, &beta as *const f32 as *const c_void, pd as *const c_void, pd as *mut c_void, pw as *mut c_void, &mut raw_stream, 1),
                "matmul",
            )
        }
    }
}

impl SpMM {
    /// Bytes of workspace the planned product holds, and what its default algorithm asked for.
    pub fn workspace_bytes(&self) -> (usize, usize) {
        (self.workspace.len(), self.default_workspace)
    }
}

impl Drop for SpMM {
    fn drop(&mut self) {
        // SAFETY: the plan and descriptors were initialised by plan_alg and are destroyed once.
        unsafe {
            self.lib.cusparseLtMatmulPlanDestroy(&*self.plan);
            for d in &self.descs {
                self.lib.cusparseLtMatDescriptorDestroy(&**d);
            }
        }
    }
}

impl Drop for CuSparseLt {
    fn drop(&mut self) {
        // SAFETY: the handle was initialized by cusparseLtInit.
        unsafe { self.lib.cusparseLtDestroy(&*self.handle) };
    }
}
