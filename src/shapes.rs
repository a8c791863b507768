//! The transformer GEMM shapes twofour is measured on: one list for the benches, the tuner and
//! the docs.

/// A linear layer: `tokens` x `d_in` activations times a `d_out` x `d_in` weight.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinearShape {
    pub name: String,
    pub tokens: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// The three GEMMs of a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pass {
    /// Y = X W^T: sparse A = W (d_out x d_in), M = d_out, N = tokens, K = d_in.
    Forward,
    /// dX = dY W: sparse A = W^T (d_in x d_out), M = d_in, N = tokens, K = d_out.
    GradInput,
    /// dW = S(dY)^T X: sparse A = S(dY)^T (d_out x tokens), M = d_out, N = d_in, K = tokens.
    GradWeight,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::GradInput, Pass::GradWeight];
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::GradInput => "dx",
            Pass::GradWeight => "dw",
        }
    }
}

impl LinearShape {
    pub fn new(name: impl Into<String>, tokens: usize, d_in: usize, d_out: usize) -> Self {
        Self { name: name.into(), tokens, d_in, d_out }
    }

    /// (M, N, K) of the sparse GEMM of `pass`, A being the M x K 2:4 operand.
    pub fn mnk(&self, pass: Pass) -> (usize, usize, usize) {
        match pass {
            Pass::Forward => (self.d_out, self.tokens, self.d_in),
            Pass::GradInput => (self.d_in, self.tokens, self.d_out),
            Pass::GradWeight => (self.d_out, self.d_in, self.tokens),
        }
    }

    /// Dense-equivalent FLOPs of one GEMM (2 M N K).
    pub fn flops(&self) -> f64 {
        2.0 * self.tokens as f64 * self.d_in as f64 * self.d_out as f64
    }
}

/// GPT-2 small/medium/large/XL FFN layers (fc1: d -> 4d, fc2: 4d -> d) at 16384 and 65536 tokens,
/// LLaMA-7B up/down at 16384 tokens, and squares 4096, 8192, 16384.
pub fn ffn_shapes() -> Vec<LinearShape> {
    let mut v = Vec::new();
    for (model, d) in [("gpt2-small", 768), ("gpt2-medium", 1024), ("gpt2-large", 1280), ("gpt2-xl", 1600)] {
        for tokens in [16384, 65536] {
            v.push(LinearShape::new(format!("{model}.fc1@{}k", tokens / 1024), tokens, d, 4 * d));
            v.push(LinearShape::new(format!("{model}.fc2@{}k", tokens / 1024), tokens, 4 * d, d));
        }
    }
    v.push(LinearShape::new("llama7b.up@16k", 16384, 4096, 11008));
    v.push(LinearShape::new("llama7b.down@16k", 16384, 11008, 4096));
    for s in [4096, 8192, 16384] {
        v.push(LinearShape::new(format!("square{s}"), s, s, s));
    }
    v
}

/// Parses `name:tokens:d_in:d_out` (comma-separated for several).
pub fn parse_shapes(spec: &str) -> Result<Vec<LinearShape>, String> {
    spec.split(',')
        .map(|s| {
            let p: Vec<&str> = s.split(':').collect();
            let num = |i: usize| p.get(i).and_then(|x| x.parse::<usize>().ok()).ok_or_else(|| format!("bad shape {s:?}: expected name:tokens:d_in:d_out"));
            Ok(LinearShape::new(p[0], num(1)?, num(2)?, num(3)?))
        })
        .collect()
}
