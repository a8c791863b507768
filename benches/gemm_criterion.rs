//! Criterion bench of the sparse GEMM (issue 4 asks for criterion benches next to the `gemm` bench
//! binary): the three GEMMs of a sparse linear layer on the wgmma.sp kernel, the forward GEMM on
//! the sm_80 path, and the same dense GEMM on cuBLASLt as the peer, timed with CUDA events
//! (`iter_custom`); throughput in dense-equivalent FLOP (2 M N K) so criterion reports FLOP/s.
//! The full shape sweep with cuSPARSELt and JSON output stays in `benches/gemm.rs`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use half::bf16;
use std::time::Duration;
use twofour::reference::philox::normal_bf16;
use twofour::timing::time_iters;
use twofour::{prune24_compress, sparse_gemm, sparse_gemm_sm80, BOperand, Device, DeviceMatrix, GemmOptions, MatLayout, SparseLinear};

/// Times `iters` calls of `f` between two CUDA events (twofour::timing::time_iters).
fn events(dev: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    time_iters(dev, iters, || {
        f();
        Ok(())
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gemm_criterion bench skipped: {e}");
            return;
        }
    };
    let blas = CudaBlasLT::new(dev.stream().clone()).expect("cuBLASLt");
    // (name, tokens, d_in, d_out): GPT-2 medium fc1 and LLaMA-7B up at 16384 tokens.
    for (name, t, d_in, d_out) in [("gpt2-medium.fc1", 16384usize, 1024usize, 4096usize), ("llama7b.up", 16384, 4096, 11008)] {
        let mut group = c.benchmark_group(format!("sparse_gemm/{name}/{}", dev.name()));
        group.throughput(Throughput::Elements((2 * t * d_in * d_out) as u64));
        let w = DeviceMatrix::from_host(&dev, d_out, d_in, &normal_bf16(1, d_out * d_in)).unwrap();
        let sw = prune24_compress(&dev, &w).unwrap();
        let x = DeviceMatrix::from_host(&dev, t, d_in, &normal_bf16(2, t * d_in)).unwrap();
        let dy = DeviceMatrix::from_host(&dev, t, d_out, &normal_bf16(3, t * d_out)).unwrap();
        let layer = SparseLinear::new(d_in, d_out);
        let mut y = DeviceMatrix::<bf16>::poisoned(&dev, t, d_out).unwrap();
        group.bench_function("fwd wgmma.sp", |b| b.iter_custom(|n| events(&dev, n, || layer.forward(&dev, &sw, &x, None, &mut y).unwrap())));
        // dX with W^T's compression of the same size, dW from MVUE's S(dY^T) stand-in (pruned dY^T).
        let swt = prune24_compress(&dev, &DeviceMatrix::from_host(&dev, d_in, d_out, &normal_bf16(4, d_in * d_out)).unwrap()).unwrap();
        let mut dx = DeviceMatrix::<bf16>::poisoned(&dev, t, d_in).unwrap();
        let col = GemmOptions { d_layout: Some(MatLayout::ColMajor), ..Default::default() };
        group.bench_function("dx wgmma.sp", |b| b.iter_custom(|n| events(&dev, n, || sparse_gemm(&dev, &swt, BOperand::KMajor(&dy), &mut dx, &col).unwrap())));
        let sdyt = prune24_compress(&dev, &DeviceMatrix::from_host(&dev, d_out, t, &normal_bf16(5, d_out * t)).unwrap()).unwrap();
        let mut dw = DeviceMatrix::<bf16>::poisoned(&dev, d_out, d_in).unwrap();
        group.bench_function("dw wgmma.sp", |b| b.iter_custom(|n| events(&dev, n, || sparse_gemm(&dev, &sdyt, BOperand::NMajor(&x), &mut dw, &GemmOptions::default()).unwrap())));
        let mut d32 = DeviceMatrix::<f32>::poisoned(&dev, d_out, t).unwrap();
        group.bench_function("fwd sm_80 mma.sp (f32 out)", |b| b.iter_custom(|n| events(&dev, n, || sparse_gemm_sm80(&dev, &sw, &x, &mut d32).unwrap())));
        // The dense peer: Y^T (d_out x t, column-major view) = W X^T on cuBLASLt, bf16.
        let mut yd = dev.alloc_poisoned::<bf16>(t * d_out).unwrap();
        let cfg = MatmulConfig { transa: true, transb: false, transc: false, m: d_out as u64, n: t as u64, k: d_in as u64, alpha: 1.0, lda: d_in as i64, ldb: d_in as i64, beta: 0.0, ldc: d_out as i64, stride_a: None, stride_b: None, stride_c: None, stride_bias: None, batch_size: None };
        group.bench_function("fwd cuBLASLt dense", |b| {
            // SAFETY: W is d_out x d_in, X t x d_in, Y t x d_out: the sizes the config describes.
            b.iter_custom(|n| events(&dev, n, || unsafe { blas.matmul(cfg, w.data(), x.data(), &mut yd, None, None) }.unwrap()))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
