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

/// Times `n` contenders against each other: `warmup` untimed calls of each, then `reps` rounds of
/// one call of every contender (`call(i, round)` runs contender i), the L2 flushed before each
/// timed call and the first contender rotating a round. Returns each contender's times (ms).
///
/// Why not one contender after the other: on the H100 the same kernel runs up to ~15% slower
/// after a few seconds of full load (docs/bench/notes.md, "Interleaved rounds"), so whoever was
/// timed first was favoured. Interleaved, every contender sees the same power state.
pub fn interleaved(dev: &Device, warmup: usize, reps: usize, n: usize, flush: &mut CudaSlice<u8>, mut call: impl FnMut(usize, usize) -> Result<()>) -> Result<Vec<Vec<f64>>> {
    for i in 0..n {
        time_calls(dev, warmup, 0, None, || call(i, 0))?;
    }
    let mut times = vec![Vec::with_capacity(reps); n];
    for r in 0..reps {
        for j in 0..n {
            let i = (r + j) % n;
            times[i].extend(time_calls(dev, 0, 1, Some(&mut *flush), || call(i, r))?);
        }
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
