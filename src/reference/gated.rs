//! Gated activations of a gated MLP: y = act(gate) * up, forward and backward, in f64.
//! SwiGLU uses act = SiLU (x sigmoid(x)); GEGLU uses GELU in GPT-2's tanh form
//! 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

use crate::error::shape;
use crate::Result;
use half::bf16;

/// Which gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Gate {
    SwiGlu,
    GeGlu,
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)

impl Gate {
    /// act(x) and act'(x).
    pub fn act(self, x: f64) -> (f64, f64) {
        match self {
            Gate::SwiGlu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
            Gate::GeGlu => {
                let inner = GELU_C * (x + 0.044715 * x * x * x);
                let t = inner.tanh();
                let d_inner = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
                (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner)
            }
        }
    }
}

fn check(op: &'static str, lens: &[usize]) -> Result<()> {
    if lens.iter().any(|&l| l != lens[0]) {
        return Err(shape(op, format!("operands must have equal lengths, got {lens:?}")));
    }
    Ok(())
}

/// y = act(gate) * up, elementwise.
pub fn gated_forward(gate_kind: Gate, up: &[bf16], gate: &[bf16]) -> Result<Vec<f32>> {
    check("gated_forward", &[up.len(), gate.len()])?;
    Ok(up.iter().zip(gate).map(|(&u, &g)| (gate_kind.act(g.to_f64()).0 * u.to_f64()) as f32).collect())
}

/// (d_up, d_gate) from dy: d_up = dy act(gate), d_gate = dy up act'(gate).
pub fn gated_backward(gate_kind: Gate, up: &[bf16], gate: &[bf16], dy: &[bf16]) -> Result<(Vec<f32>, Vec<f32>)> {
    check("gated_backward", &[up.len(), gate.len(), dy.len()])?;
    let mut du = Vec::with_capacity(up.len());
    let mut dg = Vec::with_capacity(up.len());
    for ((&u, &g), &d) in up.iter().zip(gate).zip(dy) {
        let (a, da) = gate_kind.act(g.to_f64());
        du.push((d.to_f64() * a) as f32);
        dg.push((d.to_f64() * u.to_f64() * da) as f32);
    }
    Ok((du, dg))
}

/// The backward of a non-gated GELU (GPT-2's MLP): dY = gelu'(x) dA, elementwise.
pub fn gelu_backward(x: &[bf16], da: &[bf16]) -> Result<Vec<f32>> {
    check("gelu_backward", &[x.len(), da.len()])?;
    Ok(x.iter().zip(da).map(|(&x, &d)| (Gate::GeGlu.act(x.to_f64()).1 * d.to_f64()) as f32).collect())
}
