//! GPU timing the way the benches and the tuner need it: CUDA events around each call, warm-up,
//! median of repeats, L2 flushed before each timed call.

use crate::device::Device;
use crate::error::During;
use crate::Result;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;

/// Writing this many bytes evicts the 50 MB L2 of an H100 (60 MB on an H200).
pub const FLUSH_BYTES: usize = 128 << 20;

/// Times `f` on the device's stream: `warmup` untimed calls, then `reps` calls each between two
/// events, with the L2 flushed before each (when `flush` is given). Returns the times in ms.
pub fn time_calls(dev: &Device, warmup: usize, reps: usize, mut flush: Option<&mut CudaSlice<u8>>, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let stream = dev.stream();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        if let Some(buf) = flush.as_deref_mut() {
            stream.memset_zeros(buf).during("flushing L2")?;
        }
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("recording an event")?;
        f()?;
        let stop = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("recording an event")?;
        stop.synchronize().during("waiting for a timed call")?;
        times.push(start.elapsed_ms(&stop).during("reading an event")? as f64);
    }
    Ok(times)
}

/// Criterion's `iter_custom` on the GPU: `iters` calls of `f` between two CUDA events, the
/// elapsed device time.
pub fn time_iters(dev: &Device, iters: u64, mut f: impl FnMut() -> Result<()>) -> Result<std::time::Duration> {
    let stream = dev.stream();
    let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("recording an event")?;
    for _ in 0..iters {
        f()?;
    }
    let stop = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("recording an event")?;
    stop.synchronize().during("waiting for timed calls")?;
    Ok(std::time::Duration::from_secs_f64(start.elapsed_ms(&stop).during("reading an event")? as f64 / 1e3))
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}
