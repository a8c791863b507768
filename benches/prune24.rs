//! Criterion bench of 2:4 prune + compress on the GPU, timed with CUDA events (iter_custom).
//! Memory floor: read rows*cols*2 bytes, write rows*cols (values) + rows*cols/8 (meta) +
//! rows*cols/8 (mask) bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use twofour::reference::philox::normal_bf16;
use twofour::{prune24_compress, prune24_compress_into, Device, DeviceMatrix};

fn bench(c: &mut Criterion) {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("prune24 bench skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group(format!("prune24_compress/{}", dev.name()));
    // (name, rows, cols): FFN weights of GPT-2 medium, GPT-2 XL, LLaMA-7B.
    for (name, rows, cols) in [("gpt2-medium-fc1", 4096, 1024), ("gpt2-xl-fc1", 6400, 1600), ("llama7b-up", 11008, 4096)] {
        let w = DeviceMatrix::from_host(&dev, rows, cols, &normal_bf16(7, rows * cols)).unwrap();
        let mut out = prune24_compress(&dev, &w).unwrap();
        group.throughput(Throughput::Bytes((rows * cols * 2 + rows * cols + rows * cols / 4) as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| twofour::timing::time_iters(&dev, iters, || prune24_compress_into(&dev, &w, &mut out)).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
