//! Learning-rate schedule and gradient clipping.

/// Linear warm-up over `warmup` steps to `max_lr`, then cosine decay to `min_lr` at `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, max_lr: f32, min_lr: f32) -> f32 {
    if step < warmup {
        return max_lr * (step + 1) as f32 / warmup as f32;
    }
    if step >= total {
        return min_lr;
    }
    let ratio = (step - warmup) as f32 / (total - warmup).max(1) as f32;
    min_lr + 0.5 * (1.0 + (std::f32::consts::PI * ratio).cos()) * (max_lr - min_lr)
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grads.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let s = max_norm / norm;
        grads.iter_mut().for_each(|g| *g *= s);
    }
    norm
}
