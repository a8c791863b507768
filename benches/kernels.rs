//! The sparse-training kernels on the GPU against their memory floor (bytes that must move /
//! device-to-device copy bandwidth measured in the same run), and the budget check of issue 5:
//! mask search + both compressions + MVUE against the three sparse GEMMs of GPT-2-medium's FFN
//! layers at 16384 tokens.
//!   kernels [--json PATH] [--reps N]

use half::bf16;
use twofour::reference::philox::normal_bf16;
use twofour::reference::Gate;
use twofour::timing::{interleaved, median, time_calls, FLUSH_BYTES};
use twofour::{
    apply_mask_compress_async, flip_rate, gated_backward, gated_forward, masked_decay, mvue24_compress_into, prune24_compress,
    sparse_gemm, transposable_mask_compress, transposable_mask_compress_async, BOperand, Device, DeviceMatrix, GatedLayout, GemmOptions, MatLayout, Sparse24,
};

struct Rec {
    kernel: String,
    shape: String,
    ms: f64,
    floor_ms: f64,
    peer_ms: Option<f64>,
}

/// A number from the peer JSON.
fn peer_num(peers: &Option<serde_json::Value>, key: &str) -> Option<f64> {
    peers.as_ref()?.get(key)?.as_f64()
}

fn main() {
    let mut json = None;
    let mut reps = 20;
    // --fused-configs: only the fused-epilogue GEMM, at every K-major instance (for tuning it).
    let fused_configs = std::env::args().any(|a| a == "--fused-configs");
    let v: Vec<String> = std::env::args().collect();
    for i in 0..v.len() {
        if v[i] == "--json" {
            json = v.get(i + 1).cloned();
        }
        if v[i] == "--reps" {
            reps = v.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(20);
        }
    }
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kernels bench skipped: {e}");
            return;
        }
    };
    // PyTorch peers measured just before in the same device call (scripts/peers/kernels_torch_bench.py).
    let peers: Option<serde_json::Value> = std::env::var("KERNELS_PEER_JSON").ok().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| serde_json::from_str(&t).ok());
    if let Some(p) = &peers {
        println!("PyTorch peers from KERNELS_PEER_JSON: torch {}", p.get("torch").and_then(|v| v.as_str()).unwrap_or("?"));
    }
    let mut flush = dev.stream().alloc_zeros::<u8>(FLUSH_BYTES).unwrap();
    let time = |flush: &mut _, f: &mut dyn FnMut() -> twofour::Result<()>| median(&time_calls(&dev, 3, reps, Some(flush), f).unwrap());

    // Copy bandwidth: 1 GiB device-to-device, bytes read + written.
    let src = dev.stream().alloc_zeros::<u8>(1 << 30).unwrap();
    let mut dst = dev.stream().alloc_zeros::<u8>(1 << 30).unwrap();
    let copy_ms = time(&mut flush, &mut || dev.stream().memcpy_dtod(&src, &mut dst).map_err(|e| twofour::Error::Driver { during: "copy".into(), source: e }));
    let bw = 2.0 * (1u64 << 30) as f64 / (copy_ms * 1e-3); // bytes/s
    drop((src, dst));
    println!("device: {}  copy bandwidth {:.2} TB/s (read + write)", dev.name(), bw / 1e12);
    let floor = |bytes: f64| bytes / bw * 1e3;
    let mut recs: Vec<Rec> = Vec::new();
    let mut push = |r: Rec| {
        println!("{:<28} {:<22} {:>9.4} ms  floor {:>8.4} ms  {:>5.2}x floor", r.kernel, r.shape, r.ms, r.floor_ms, r.ms / r.floor_ms);
        recs.push(r);
    };

    if !fused_configs {
    // Weights of FFN layers: (name, d_out, d_in).
    let weights = [("gpt2-small.fc1", 3072, 768), ("gpt2-medium.fc1", 4096, 1024), ("gpt2-medium.fc2", 1024, 4096), ("gpt2-xl.fc1", 6400, 1600), ("llama7b.up", 11008, 4096), ("llama7b.down", 4096, 11008)];
    for (name, r, c) in weights {
        let n = (r * c) as f64;
        let w = DeviceMatrix::from_host(&dev, r, c, &normal_bf16(1, r * c)).unwrap();
        let (mut sw, mut swt) = transposable_mask_compress(&dev, &w).unwrap();
        // Read W (2 B), write W and W^T values (1 + 1 B), metadata (1/8 + 1/8 B) and masks (1/8 + 1/8 B).
        // The asynchronous forms: the kernel's time, not a wait for its error flag (the recipe checks
        // the statuses once a step).
        let ms = time(&mut flush, &mut || transposable_mask_compress_async(&dev, &w, &mut sw, &mut swt, None).map(drop));
        // Peer: PyTorch's greedy (not optimal, not always 2:4) 4x4 tile pruning, same weight shape.
        let peer = peers.as_ref().and_then(|p| p.get("tile_prune_ms")?.get(format!("{r}x{c}"))?.as_f64());
        push(Rec { kernel: "transposable_mask_compress".into(), shape: format!("{name} {r}x{c}"), ms, floor_ms: floor(4.5 * n), peer_ms: peer });
        let ms = time(&mut flush, &mut || apply_mask_compress_async(&dev, &w, &mut sw, &mut swt, None).map(drop));
        push(Rec { kernel: "apply_mask_compress".into(), shape: format!("{name} {r}x{c}"), ms, floor_ms: floor(4.5 * n + n / 8.0), peer_ms: None });
        let ms = time(&mut flush, &mut || prune24_compress(&dev, &w).map(|_| ()));
        push(Rec { kernel: "prune24_compress".into(), shape: format!("{name} {r}x{c}"), ms, floor_ms: floor(3.25 * n), peer_ms: None });
    }
    // MVUE of dY for the FFN layers at 16384 tokens: read 2 B, write 1 + 1/8 + 1/8 B per element.
    for (name, t, f) in [("gpt2-medium.fc1 dY", 16384, 4096), ("gpt2-medium.fc2 dY", 16384, 1024), ("llama7b.up dY", 16384, 11008)] {
        let dy = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(2, t * f)).unwrap();
        let mut out = Sparse24::alloc(&dev, f, t).unwrap();
        let mut step = 0u32;
        let ms = time(&mut flush, &mut || {
            step += 1;
            mvue24_compress_into(&dev, &dy, 5, step, &mut out)
        });
        push(Rec { kernel: "mvue24_compress".into(), shape: format!("{name} {t}x{f}"), ms, floor_ms: floor(3.25 * (t * f) as f64), peer_ms: None });
    }
    // Gated activations on LLaMA-7B's fc1 output, 16384 x 2*11008: forward reads 4 B and writes
    // 2 B per output element, backward reads 6 B and writes 4 B. Peer (the brief, same H100): SwiGLU
    // forward 1.04 ms eager PyTorch, 0.44 ms torch.compile; with KERNELS_PEER_JSON (the runner
    // measures scripts/peers/kernels_torch_bench.py first, same device call) the numbers of this run.
    let (t, f) = (16384usize, 11008usize);
    let h_tm = DeviceMatrix::from_host(&dev, t, 2 * f, &normal_bf16(3, t * 2 * f)).unwrap();
    let dy_tm = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(4, t * f)).unwrap();
    let mut y = DeviceMatrix::<bf16>::poisoned(&dev, t, f).unwrap();
    let mut dh = DeviceMatrix::<bf16>::poisoned(&dev, t, 2 * f).unwrap();
    let n = (t * f) as f64;
    for gate in [Gate::SwiGlu, Gate::GeGlu] {
        let ms = time(&mut flush, &mut || gated_forward(&dev, gate, GatedLayout::TokenMajor, &h_tm, &mut y));
        let peer = (gate == Gate::SwiGlu).then(|| peer_num(&peers, "swiglu_fwd_compile_ms").unwrap_or(0.44));
        push(Rec { kernel: format!("{gate:?} forward (token-major)"), shape: format!("{t}x2*{f}"), ms, floor_ms: floor(6.0 * n), peer_ms: peer });
        let ms = time(&mut flush, &mut || gated_backward(&dev, gate, GatedLayout::TokenMajor, &h_tm, &dy_tm, &mut dh));
        let peer = if gate == Gate::SwiGlu { peer_num(&peers, "swiglu_bwd_compile_ms") } else { None };
        push(Rec { kernel: format!("{gate:?} backward (token-major)"), shape: format!("{t}x2*{f}"), ms, floor_ms: floor(10.0 * n), peer_ms: peer });
    }
    // The backward fused with MVUE of its output (fc1's S(dH^T) for the dW GEMM): on top of the
    // backward's 10 B per output element it writes S(dH^T): per dH element 1 B of kept values (two
    // bf16 of every four), 1/8 B metadata, 1/8 B mask; two dH elements an output element: 2.5 B. The
    // "peer" is the unfused pair: gated_backward, then mvue24_compress reading dH again.
    let mut s_dht = twofour::Sparse24::alloc(&dev, 2 * f, t).unwrap();
    let ms = time(&mut flush, &mut || twofour::gated_backward_mvue(&dev, Gate::SwiGlu, &h_tm, &dy_tm, &mut dh, 9, 1, &mut s_dht));
    let separate = time(&mut flush, &mut || {
        gated_backward(&dev, Gate::SwiGlu, GatedLayout::TokenMajor, &h_tm, &dy_tm, &mut dh)?;
        mvue24_compress_into(&dev, &dh, 9, 1, &mut s_dht)
    });
    push(Rec { kernel: "SwiGlu backward + MVUE of dH (fused; peer = separate kernels)".into(), shape: format!("{t}x2*{f}"), ms, floor_ms: floor(12.5 * n), peer_ms: Some(separate) });
    drop((h_tm, dy_tm, y, dh, s_dht));
    let h_fm = DeviceMatrix::from_host(&dev, 2 * f, t, &normal_bf16(3, t * 2 * f)).unwrap();
    let mut y = DeviceMatrix::<bf16>::poisoned(&dev, f, t).unwrap();
    let ms = time(&mut flush, &mut || gated_forward(&dev, Gate::SwiGlu, GatedLayout::FeatureMajor, &h_fm, &mut y));
    push(Rec { kernel: "SwiGlu forward (feature-major)".into(), shape: format!("2*{f}x{t}"), ms, floor_ms: floor(6.0 * n), peer_ms: None });
    drop((h_fm, y));
    // Masked decay (read grad, w: 4 + 4 B, mask 1/8 B; write grad 4 B) and flip rate on LLaMA up.
    let (r, c) = (11008usize, 4096usize);
    let w16 = DeviceMatrix::from_host(&dev, r, c, &normal_bf16(6, r * c)).unwrap();
    let (sw, _) = transposable_mask_compress(&dev, &w16).unwrap();
    let sp = prune24_compress(&dev, &w16).unwrap();
    let w32 = DeviceMatrix::from_host(&dev, r, c, &vec![0.5f32; r * c]).unwrap();
    let mut g32 = DeviceMatrix::from_host(&dev, r, c, &vec![0.25f32; r * c]).unwrap();
    let ms = time(&mut flush, &mut || masked_decay(&dev, &mut g32, &w32, &sw, 6e-5));
    push(Rec { kernel: "masked_decay".into(), shape: format!("{r}x{c}"), ms, floor_ms: floor(12.125 * (r * c) as f64), peer_ms: None });
    let ms = time(&mut flush, &mut || flip_rate(&dev, &sw, &sp).map(|_| ()));
    push(Rec { kernel: "flip_rate".into(), shape: format!("{r}x{c}"), ms, floor_ms: floor((r * c) as f64 / 4.0), peer_ms: None });
    drop((w16, sw, sp, w32, g32));

    }

    // Budget check at GPT-2 medium, 16384 tokens: per step and FFN layer, recompress W and W^T
    // (mask search every 40 steps: counted in full here, the worst case) + MVUE of dY, against
    // the layer's three sparse GEMMs.
    let t = 16384usize;
    let (mut overhead, mut gemms) = (0.0, 0.0);
    let mut mvue_all = 0.0; // both layers' standalone MVUE
    let mut mvue_fc1 = 0.0; // the standalone MVUE of fc1's dY, replaced below by the fused kernel's extra time
    for (d_in, d_out) in [(1024usize, 4096usize), (4096, 1024)] {
        let w = DeviceMatrix::from_host(&dev, d_out, d_in, &normal_bf16(7, d_in * d_out)).unwrap();
        let x = DeviceMatrix::from_host(&dev, t, d_in, &normal_bf16(8, t * d_in)).unwrap();
        let dy = DeviceMatrix::from_host(&dev, t, d_out, &normal_bf16(9, t * d_out)).unwrap();
        let (mut sw, mut swt) = transposable_mask_compress(&dev, &w).unwrap();
        let mut s_dyt = Sparse24::alloc(&dev, d_out, t).unwrap();
        mvue24_compress_into(&dev, &dy, 1, 1, &mut s_dyt).unwrap();
        let mut y = DeviceMatrix::<bf16>::poisoned(&dev, t, d_out).unwrap();
        let mut dx = DeviceMatrix::<bf16>::poisoned(&dev, t, d_in).unwrap();
        let mut dw = DeviceMatrix::<bf16>::poisoned(&dev, d_out, d_in).unwrap();
        let col = GemmOptions { d_layout: Some(MatLayout::ColMajor), ..Default::default() };
        // The layer's five kernels in interleaved rounds (timing::interleaved), so the overhead
        // and the GEMMs it is divided by are timed under the same power state.
        let ms: Vec<f64> = interleaved(&dev, 3, reps, 5, &mut flush, |i, _| match i {
            0 => transposable_mask_compress_async(&dev, &w, &mut sw, &mut swt, None).map(drop),
            1 => mvue24_compress_into(&dev, &dy, 1, 1, &mut s_dyt),
            2 => sparse_gemm(&dev, &sw, BOperand::KMajor(&x), &mut y, &col),
            3 => sparse_gemm(&dev, &swt, BOperand::KMajor(&dy), &mut dx, &col),
            _ => sparse_gemm(&dev, &s_dyt, BOperand::NMajor(&x), &mut dw, &GemmOptions::default()),
        })
        .unwrap()
        .iter()
        .map(|t| median(t))
        .collect();
        overhead += ms[0] + ms[1];
        mvue_all += ms[1];
        if d_out == 4096 {
            mvue_fc1 = ms[1];
        }
        gemms += ms[2] + ms[3] + ms[4];
    }
    println!("budget (GPT-2 medium FFN, 16384 tokens): mask search + both compressions + MVUE {overhead:.3} ms vs three sparse GEMMs x 2 layers {gemms:.3} ms = {:.1}%", 100.0 * overhead / gemms);
    recs.push(Rec { kernel: "budget: mask+compress+mvue / 3 sparse GEMMs (gpt2-medium FFN, 16k tokens)".into(), shape: format!("{:.1}%", 100.0 * overhead / gemms), ms: overhead, floor_ms: gemms, peer_ms: None });
    if !fused_configs {
    // The same budget when fc1 is gated (SwiGLU: fc1's output H is 16384 x 4096, its dY = dH comes
    // out of the gated backward) and its MVUE is fused into that backward: fc1's MVUE then costs
    // only what gated_backward_mvue adds to gated_backward.
    let (f, t) = (2048usize, 16384usize);
    let h = DeviceMatrix::from_host(&dev, t, 2 * f, &normal_bf16(21, t * 2 * f)).unwrap();
    let dy = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(22, t * f)).unwrap();
    let mut dh = DeviceMatrix::<bf16>::poisoned(&dev, t, 2 * f).unwrap();
    let mut s_dht = Sparse24::alloc(&dev, 2 * f, t).unwrap();
    let plain = time(&mut flush, &mut || gated_backward(&dev, Gate::SwiGlu, GatedLayout::TokenMajor, &h, &dy, &mut dh));
    let fused = time(&mut flush, &mut || twofour::gated_backward_mvue(&dev, Gate::SwiGlu, &h, &dy, &mut dh, 1, 1, &mut s_dht));
    let fused_overhead = overhead - mvue_fc1 + (fused - plain).max(0.0);
    println!(
        "budget with fc1's MVUE fused into its SwiGLU backward ({:.3} ms fused vs {:.3} ms plain backward, instead of {:.3} ms MVUE): {fused_overhead:.3} ms = {:.1}%",
        fused,
        plain,
        mvue_fc1,
        100.0 * fused_overhead / gemms
    );
    recs.push(Rec { kernel: "budget, fc1 MVUE fused into its SwiGLU backward / 3 sparse GEMMs (gpt2-medium FFN, 16k tokens)".into(), shape: format!("{:.1}%", 100.0 * fused_overhead / gemms), ms: fused_overhead, floor_ms: gemms, peer_ms: None });
    drop((h, dy, dh, s_dht));
    // GPT-2 medium's own activation: fc1 -> GELU -> fc2. fc1's dY = gelu'(X) dA comes out of the
    // GELU backward (a pass the sparse layer needs anyway: the sparse GEMM has no dGELU epilogue),
    // so fused, fc1's MVUE costs only what gelu_backward_mvue adds to gelu_backward. Floors per dY
    // element: 6 B (read X and dA, write dY) plain, + 1.25 B (S(dY^T): kept values, metadata, mask).
    let f = 4096usize;
    let x = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(23, t * f)).unwrap();
    let da = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(24, t * f)).unwrap();
    let mut dy = DeviceMatrix::<bf16>::poisoned(&dev, t, f).unwrap();
    let mut s_dyt = Sparse24::alloc(&dev, f, t).unwrap();
    let n = (t * f) as f64;
    let plain = time(&mut flush, &mut || twofour::gelu_backward(&dev, &x, &da, &mut dy));
    recs.push(Rec { kernel: "GELU backward (token-major)".into(), shape: format!("gpt2-medium.fc1 {t}x{f}"), ms: plain, floor_ms: floor(6.0 * n), peer_ms: None });
    // Both register budgets of the fused kernel (cuda/gated.cu); the budget takes the faster.
    let unrolled = time(&mut flush, &mut || twofour::gelu_backward_mvue_variant(&dev, &x, &da, &mut dy, 1, 1, &mut s_dyt, false));
    let rolled = time(&mut flush, &mut || twofour::gelu_backward_mvue_variant(&dev, &x, &da, &mut dy, 1, 1, &mut s_dyt, true));
    println!("gelu_backward_mvue: MVUE pair loop unrolled (16 warps an SM) {unrolled:.4} ms, rolled (24 warps) {rolled:.4} ms");
    let fused = unrolled.min(rolled);
    let separate = time(&mut flush, &mut || {
        twofour::gelu_backward(&dev, &x, &da, &mut dy)?;
        mvue24_compress_into(&dev, &dy, 1, 1, &mut s_dyt)
    });
    recs.push(Rec { kernel: "GELU backward + MVUE of dY (fused; peer = separate kernels)".into(), shape: format!("gpt2-medium.fc1 {t}x{f}"), ms: fused, floor_ms: floor(7.25 * n), peer_ms: Some(separate) });
    let gelu_overhead = overhead - mvue_fc1 + (fused - plain).max(0.0);
    println!(
        "budget with fc1's MVUE fused into its GELU backward ({fused:.4} ms fused vs {plain:.4} ms plain, {separate:.4} ms separate; instead of {mvue_fc1:.4} ms MVUE): {gelu_overhead:.4} ms = {:.1}%",
        100.0 * gelu_overhead / gemms
    );
    recs.push(Rec { kernel: "budget, fc1 MVUE fused into its GELU backward / 3 sparse GEMMs (gpt2-medium FFN, 16k tokens)".into(), shape: format!("{:.1}%", 100.0 * gelu_overhead / gemms), ms: gelu_overhead, floor_ms: gemms, peer_ms: None });
    drop((x, da, dy, s_dyt));

    }

    // MVUE where the CUDA cores idle: fc2's dX GEMM (dA = dY W2: A = W2^T compressed, 4096 x 1024;
    // B = fc2's dY, 16384 x 1024) with fc1's GELU backward and MVUE in its epilogue
    // (sparse_gemm_gelu_backward), at the table's instance, the ping-pong one (one warpgroup's
    // epilogue runs under the other's main loop) and the one with epilogue warpgroups (the
    // epilogue of a tile runs under the next tile's main loop). fc1's MVUE then costs what the MVUE epilogue
    // adds to the best GELU path without it (the fused GEMM + GELU, or the GEMM then
    // gelu_backward). Floor: bytes that must move (dY, W2^T's values and metadata, X, dH; + 1.25 B
    // an element of dH for S(dH^T)).
    let (d, f) = (1024usize, 4096usize);
    let w2 = DeviceMatrix::from_host(&dev, d, f, &normal_bf16(25, d * f)).unwrap();
    let (_, w2t) = transposable_mask_compress(&dev, &w2).unwrap();
    let dy2 = DeviceMatrix::from_host(&dev, t, d, &normal_bf16(26, t * d)).unwrap();
    let x = DeviceMatrix::from_host(&dev, t, f, &normal_bf16(27, t * f)).unwrap();
    let mut da = DeviceMatrix::<bf16>::poisoned(&dev, t, f).unwrap();
    let mut dh = DeviceMatrix::<bf16>::poisoned(&dev, t, f).unwrap();
    let mut s_dht = Sparse24::alloc(&dev, f, t).unwrap();
    let col = GemmOptions { d_layout: Some(MatLayout::ColMajor), ..Default::default() };
    let n = (t * f) as f64;
    let gemm_bytes = 2.0 * (t * d) as f64 + (f * d) as f64 * (1.0 + 1.0 / 8.0) + 4.0 * n;
    let shape = format!("gpt2-medium.fc2 dX {t}x{f}x{d}");
    let mut best = (f64::INFINITY, f64::INFINITY, String::new());
    use twofour::FusedEpilogue;
    let mut configs: Vec<(String, FusedEpilogue)> = if fused_configs {
        twofour::TileConfig::ALL.iter().map(|c| (format!("{c:?}"), FusedEpilogue::Consumers(Some(*c)))).collect()
    } else {
        vec![("table".into(), FusedEpilogue::Consumers(None)), ("ping-pong".into(), FusedEpilogue::Consumers(Some(twofour::TileConfig::ALL[5])))]
    };
    configs.push(("epilogue-warpgroup".into(), FusedEpilogue::EpilogueWarpgroups { group_m: 0 }));
    // Every contender in interleaved rounds (timing::interleaved): the plain GEMM, gelu_backward,
    // the three kernels, then each instance without and with MVUE.
    let ms: Vec<f64> = interleaved(&dev, 3, reps, 3 + 2 * configs.len(), &mut flush, |i, _| match i {
        0 => sparse_gemm(&dev, &w2t, BOperand::KMajor(&dy2), &mut da, &col),
        1 => twofour::gelu_backward(&dev, &x, &da, &mut dh),
        2 => {
            sparse_gemm(&dev, &w2t, BOperand::KMajor(&dy2), &mut da, &col)?;
            twofour::gelu_backward(&dev, &x, &da, &mut dh)?;
            mvue24_compress_into(&dev, &dh, 1, 1, &mut s_dht)
        }
        j => {
            let mvue = (j - 3) % 2 == 1;
            twofour::sparse_gemm_gelu_backward(&dev, &w2t, &dy2, &x, &mut dh, if mvue { Some((1, 1, &mut s_dht)) } else { None }, configs[(j - 3) / 2].1)
        }
    })
    .unwrap()
    .iter()
    .map(|t| median(t))
    .collect();
    let (gemm_ms, gelu_ms, three) = (ms[0], ms[1], ms[2]);
    for (c, (label, _)) in configs.iter().enumerate() {
        let (gelu_only, with_mvue) = (ms[3 + 2 * c], ms[4 + 2 * c]);
        println!("sparse_gemm_gelu_backward ({label} instance): GEMM + GELU {gelu_only:.4} ms, + MVUE {with_mvue:.4} ms; plain GEMM {gemm_ms:.4} + gelu_backward {gelu_ms:.4}, three kernels {three:.4} ms");
        recs.push(Rec { kernel: format!("sparse GEMM + GELU backward in its epilogue, {label} instance (peer = GEMM then gelu_backward)"), shape: shape.clone(), ms: gelu_only, floor_ms: floor(gemm_bytes), peer_ms: Some(gemm_ms + gelu_ms) });
        recs.push(Rec { kernel: format!("sparse GEMM + GELU backward + MVUE in its epilogue, {label} instance (peer = three kernels)"), shape: shape.clone(), ms: with_mvue, floor_ms: floor(gemm_bytes + 1.25 * n), peer_ms: Some(three) });
        if with_mvue < best.0 {
            best = (with_mvue, gelu_only, label.clone());
        }
    }
    let mvue_in_gemm = (best.0 - best.1.min(gemm_ms + gelu_ms)).max(0.0);
    let epi_overhead = overhead - mvue_fc1 + mvue_in_gemm;
    println!(
        "budget with fc1's MVUE in fc2's dX GEMM epilogue ({} instance: {:.4} ms with MVUE, {:.4} ms without, GEMM then gelu_backward {:.4}; MVUE adds {mvue_in_gemm:.4} ms instead of {mvue_fc1:.4}): {epi_overhead:.4} ms = {:.1}%",
        best.2,
        best.0,
        best.1,
        gemm_ms + gelu_ms,
        100.0 * epi_overhead / gemms
    );
    recs.push(Rec { kernel: "budget, fc1 MVUE in fc2's dX GEMM epilogue / 3 sparse GEMMs (gpt2-medium FFN, 16k tokens)".into(), shape: format!("{:.1}%", 100.0 * epi_overhead / gemms), ms: epi_overhead, floor_ms: gemms, peer_ms: None });
    drop((w2, w2t, dy2, x, da, dh, s_dht));

    // The optimizer's pass with the recompression in it (adamw_masked_compress_async): masked decay
    // + AdamW on f32 master weights and W, W^T recompressed under the stored mask, against the
    // trainer's plain AdamW (gpt_adamw: the same state, its bf16 copy out) then apply_mask_compress
    // on that copy. Floor: 16 B read (W, grad, m, v) + 12 B written (W, m, v) + 1/8 B mask read
    // + 2.375 B of compressed W and W^T. The budget with it: the search every 40 steps (the
    // paper's refresh) and the recompression's cost on top of the plain AdamW, per step.
    let mut mask_terms = 0.0;
    for (name, r, c) in [("gpt2-medium.fc1", 4096usize, 1024usize), ("gpt2-medium.fc2", 1024, 4096)] {
        let nel = r * c;
        let w16 = DeviceMatrix::from_host(&dev, r, c, &normal_bf16(31, nel)).unwrap();
        let (mut sw, mut swt) = transposable_mask_compress(&dev, &w16).unwrap();
        let f32s = |seed: u64, scale: f32| DeviceMatrix::from_host(&dev, r, c, &normal_bf16(seed, nel).iter().map(|x| x.to_f32().abs() * scale).collect::<Vec<f32>>()).unwrap();
        let (mut w, mut m, mut v, g) = (f32s(32, 0.02), f32s(33, 1e-3), f32s(34, 1e-6), f32s(35, 0.05));
        let mut shadow = DeviceMatrix::<bf16>::poisoned(&dev, r, c).unwrap();
        let k = twofour::reference::AdamWStep { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, c1: 0.5, c2: 0.3, gscale: 1.0, lambda: 2e-4 };
        let adamw = dev.function("gpt_adamw").unwrap();
        let n64 = nel as i64;
        let plain_step = |w: &mut DeviceMatrix<f32>, m: &mut DeviceMatrix<f32>, v: &mut DeviceMatrix<f32>, shadow: &mut DeviceMatrix<bf16>| -> twofour::Result<()> {
            use cudarc::driver::PushKernelArg;
            let cfg = cudarc::driver::LaunchConfig { grid_dim: (nel.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let mut b = dev.stream().launch_builder(&adamw);
            b.arg(w.data_mut()).arg(shadow.data_mut()).arg(m.data_mut()).arg(v.data_mut()).arg(g.data()).arg(&n64);
            b.arg(&k.lr).arg(&k.beta1).arg(&k.beta2).arg(&k.eps).arg(&k.weight_decay).arg(&k.c1).arg(&k.c2).arg(&k.gscale);
            // SAFETY: five buffers of nel elements, one thread an element (the trainer's launch).
            unsafe { b.launch(cfg) }.map_err(|e| twofour::Error::Driver { during: "gpt_adamw".into(), source: e })?;
            Ok(())
        };
        // The fused step, the plain AdamW, the plain AdamW then apply_mask_compress, and the mask
        // search, in interleaved rounds (timing::interleaved).
        let ms: Vec<f64> = interleaved(&dev, 3, reps, 4, &mut flush, |i, _| match i {
            0 => twofour::adamw_masked_compress_async(&dev, &mut w, &mut m, &mut v, &g, &k, &mut sw, &mut swt).map(drop),
            1 => plain_step(&mut w, &mut m, &mut v, &mut shadow),
            2 => {
                plain_step(&mut w, &mut m, &mut v, &mut shadow)?;
                apply_mask_compress_async(&dev, &shadow, &mut sw, &mut swt, None).map(drop)
            }
            _ => transposable_mask_compress_async(&dev, &w16, &mut sw, &mut swt, None).map(drop),
        })
        .unwrap()
        .iter()
        .map(|t| median(t))
        .collect();
        let (fused, plain, two, search) = (ms[0], ms[1], ms[2], ms[3]);
        println!("adamw_masked_compress {name} {r}x{c}: {fused:.4} ms; gpt_adamw {plain:.4} ms, + apply_mask_compress {two:.4} ms; search {search:.4} ms");
        recs.push(Rec { kernel: "adamw_masked_compress (peer = gpt_adamw then apply_mask_compress)".into(), shape: format!("{name} {r}x{c}"), ms: fused, floor_ms: floor(30.5 * nel as f64), peer_ms: Some(two) });
        recs.push(Rec { kernel: "gpt_adamw (the trainer's plain AdamW)".into(), shape: format!("{name} {r}x{c}"), ms: plain, floor_ms: floor(28.0 * nel as f64 + 2.0 * nel as f64), peer_ms: None });
        mask_terms += search / 40.0 + (fused - plain).max(0.0);
        drop((w16, sw, swt, w, m, v, g, shadow));
    }
    // `overhead` holds both layers' searches (every step) and both MVUEs: swap the searches for
    // the amortized search + recompression in AdamW.
    let searches = overhead - mvue_all;
    for (label, mvue_fc1_cost) in [("standalone MVUE", mvue_fc1), ("fc1's MVUE in fc2's dX GEMM epilogue", mvue_in_gemm)] {
        let total = mask_terms + (mvue_all - mvue_fc1) + mvue_fc1_cost;
        println!("budget with the recompression in AdamW and the search every 40 steps ({label}): {total:.4} ms = {:.1}% (mask terms {mask_terms:.4} ms instead of {searches:.4})", 100.0 * total / gemms);
        recs.push(Rec { kernel: format!("budget, recompression in AdamW + search every 40 steps, {label} / 3 sparse GEMMs (gpt2-medium FFN, 16k tokens)"), shape: format!("{:.1}%", 100.0 * total / gemms), ms: total, floor_ms: gemms, peer_ms: None });
    }

    // The sm_80 path (mma.sp, cp.async, ldmatrix) on this GPU, against the wgmma.sp kernel on the
    // same forward GEMM (D^T = W X^T, f32 out for both). floor_ms: the time at the sparse
    // tensor-core peak (1979 dense-equivalent TFLOP/s on an H100 SXM). Not an A100 number.
    for (name, m, n, k) in [("gpt2-medium.fc1 fwd", 4096usize, 16384usize, 1024usize), ("llama7b.up fwd", 11008, 16384, 4096)] {
        let w = DeviceMatrix::from_host(&dev, m, k, &normal_bf16(11, m * k)).unwrap();
        let sw = prune24_compress(&dev, &w).unwrap();
        let x = DeviceMatrix::from_host(&dev, n, k, &normal_bf16(12, n * k)).unwrap();
        let mut d = DeviceMatrix::<f32>::poisoned(&dev, m, n).unwrap();
        let ms80 = time(&mut flush, &mut || twofour::sparse_gemm_sm80(&dev, &sw, &x, &mut d));
        let mut y = DeviceMatrix::<f32>::poisoned(&dev, m, n).unwrap();
        let ms90 = time(&mut flush, &mut || sparse_gemm(&dev, &sw, BOperand::KMajor(&x), &mut y, &GemmOptions::default()));
        let tf = |ms: f64| 2.0 * (m * n * k) as f64 / (ms * 1e9);
        println!("sparse_gemm_sm80 {name} {m}x{n}x{k}: {ms80:.4} ms ({:.0} TFLOP/s) vs wgmma.sp {ms90:.4} ms ({:.0} TFLOP/s)", tf(ms80), tf(ms90));
        recs.push(Rec { kernel: "sparse_gemm_sm80 (mma.sp; peer = wgmma.sp kernel)".into(), shape: format!("{name} {m}x{n}x{k}"), ms: ms80, floor_ms: 2.0 * (m * n * k) as f64 / 1979e9, peer_ms: Some(ms90) });
    }

    if let Some(path) = json {
        let body: Vec<String> = recs
            .iter()
            .map(|r| format!("{{\"kernel\":\"{}\",\"shape\":\"{}\",\"ms\":{:.5},\"floor_ms\":{:.5},\"peer_ms\":{}}}", r.kernel, r.shape, r.ms, r.floor_ms, r.peer_ms.map_or("null".into(), |p| format!("{p}"))))
            .collect();
        let text = format!(
            "{{\"device\":\"{}\",\"date\":\"{}\",\"commit\":\"{}\",\"copy_tb_s\":{:.3},\"records\":[\n{}\n]}}\n",
            dev.name(),
            std::env::var("BENCH_DATE").unwrap_or_default(),
            option_env!("TWOFOUR_COMMIT").unwrap_or("unknown"),
            bw / 1e12,
            body.join(",\n")
        );
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)).expect("writing the JSON");
    }
}
