//! `Device`: one GPU, its context, the stream twofour works on, and the loaded kernels.

use crate::error::{During, Error};
use crate::kernels;
use crate::Result;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use std::sync::{Arc, Mutex};

/// Which compiled image of the kernels to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// The fatbin: the driver picks the sm_90a or sm_80 cubin, or JIT-compiles compute_80 PTX.
    Native,
    /// compute_80 PTX only, JIT-compiled: the Ampere (mma.sp) code path on any GPU. Also chosen
    /// by setting the environment variable `TWOFOUR_FORCE_AMPERE=1`.
    Ampere,
}

/// A GPU with twofour's kernels loaded.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    name: String,
    cc: (i32, i32),
    image: KernelImage,
    /// The stream-K GEMM's workspace, grown to the largest size asked for and kept: allocating it
    /// per call cost a fresh mapping of the memory pool every time.
    stream_k: Mutex<StreamKWorkspace>,
}

/// Partial tiles of the stream-K GEMM and the flags that say they are written. A flag holds the
/// epoch (launch number) of its last write, so no launch has to clear them: a waiter compares with
/// its own launch's epoch.
#[derive(Default)]
struct StreamKWorkspace {
    partials: Option<CudaSlice<f32>>,
    flags: Option<CudaSlice<u32>>,
    epoch: u32,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({}, sm_{}{}, {:?})", self.name, self.cc.0, self.cc.1, self.image)
    }
}

impl Device {
    /// Opens GPU `ordinal` with the native kernels (or the Ampere image if
    /// `TWOFOUR_FORCE_AMPERE=1`).
    pub fn new(ordinal: usize) -> Result<Self> {
        let forced = std::env::var("TWOFOUR_FORCE_AMPERE").is_ok_and(|v| v == "1");
        Self::with_image(ordinal, if forced { KernelImage::Ampere } else { KernelImage::Native })
    }

    /// Opens GPU `ordinal` with a chosen kernel image.
    pub fn with_image(ordinal: usize, image: KernelImage) -> Result<Self> {
        // cudarc panics when libcuda cannot be loaded; ask first so a machine without a driver
        // gets a typed error.
        // SAFETY: only tries to dlopen libcuda under its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoGpu("the CUDA driver library (libcuda.so) was not found".into()));
        }
        let count = CudaContext::device_count().map_err(|e| Error::NoGpu(format!("the CUDA driver reports: {e}")))?;
        if count <= 0 {
            return Err(Error::NoGpu("the CUDA driver found no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::NoGpu(format!("GPU {ordinal} was asked for but only {count} present")));
        }
        let ctx = CudaContext::new(ordinal).during("creating a CUDA context")?;
        let name = ctx.name().during("reading the GPU name")?;
        let cc = ctx.compute_capability().during("reading the compute capability")?;
        if cc.0 < 8 {
            return Err(Error::GpuTooOld { name, major: cc.0, minor: cc.1 });
        }
        let ptx = match image {
            KernelImage::Native => Ptx::from_binary(kernels::FATBIN.to_vec()),
            KernelImage::Ampere => Ptx::from_src(kernels::PTX_SM80),
        };
        let module = ctx.load_module(ptx).during("loading twofour's kernels")?;
        let stream = ctx.default_stream();
        Ok(Self { ctx, stream, module, name, cc, image, stream_k: Mutex::new(StreamKWorkspace::default()) })
    }

    /// Runs `f(partials, flags, epoch)` with at least `partials` f32 (not cleared) and `flags` u32
    /// of the stream-K workspace, and this launch's epoch: a flag equals it only once this launch
    /// wrote it. Queued on the stream, so consecutive GEMMs are ordered; the buffers grow when
    /// needed (new flags start at 0, which no epoch equals) and are kept for later calls.
    pub fn with_stream_k_workspace<R>(&self, partials: usize, flags: usize, f: impl FnOnce(u64, u64, u32) -> Result<R>) -> Result<R> {
        use cudarc::driver::DevicePtrMut;
        let mut guard = self.stream_k.lock().unwrap_or_else(|e| e.into_inner());
        let w = &mut *guard;
        let pbuf = match w.partials.take() {
            Some(b) if b.len() >= partials => b,
            smaller => {
                drop(smaller); // free it before allocating the larger one
                self.stream.alloc_zeros::<f32>(partials.max(1)).during("allocating the stream-K workspace")?
            }
        };
        let fbuf = match w.flags.take() {
            Some(b) if b.len() >= flags && w.epoch < u32::MAX => b,
            smaller => {
                drop(smaller);
                w.epoch = 0; // fresh flags are all 0, below every epoch
                self.stream.alloc_zeros::<u32>(flags.max(1)).during("allocating the stream-K flags")?
            }
        };
        w.epoch += 1;
        let epoch = w.epoch;
        let stream = &self.stream;
        let pbuf = w.partials.insert(pbuf);
        let (pp, _gp) = pbuf.device_ptr_mut(stream);
        let fbuf = w.flags.insert(fbuf);
        let (pf, _gf) = fbuf.device_ptr_mut(stream);
        f(pp, pf, epoch)
    }

    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Which kernel image is loaded.
    pub fn image(&self) -> KernelImage {
        self.image
    }

    /// The stream every twofour call is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().during("waiting for the GPU")
    }

    /// A kernel of the embedded module by name (the trainer launches its own `gpt_*` kernels).
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module.load_function(name).during(format!("looking up kernel {name}"))
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).during("copying data to the GPU")
    }

    /// Copies a device buffer back to the host.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, data: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(data).during("copying data from the GPU")
    }

    /// A new buffer of `len` elements with every byte 0xFF: NaN for bf16/f32, all-ones for
    /// integers (invalid 2:4 metadata). Outputs are allocated this way in tests so that an element
    /// a kernel forgot to write cannot pass for a right answer.
    pub fn alloc_poisoned<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the buffer is filled right after allocation, on the same stream.
        let mut buf = unsafe { self.stream.alloc::<T>(len.max(1)) }.during("allocating GPU memory")?;
        poison(&self.stream, &mut buf)?;
        Ok(buf)
    }
}

/// Fills a buffer with 0xFF bytes.
pub(crate) fn poison<T: DeviceRepr>(stream: &CudaStream, buf: &mut CudaSlice<T>) -> Result<()> {
    use cudarc::driver::DevicePtrMut;
    let bytes = buf.num_bytes();
    let (ptr, _sync) = buf.device_ptr_mut(stream);
    // SAFETY: ptr is a live allocation of `bytes` bytes owned by `buf`, on `stream`; every
    // bit pattern is a valid value of the plain-data types twofour stores.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xff, bytes, stream.cu_stream()) }.during("poisoning a buffer")
}
