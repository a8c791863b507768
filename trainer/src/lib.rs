//! The reference GPT trainer of twofour (issue 7). So far: the default corpus and the token data
//! paths (GPT-2 BPE through tiktoken-rs, llm.c shards, nanoGPT .bin files, plain text), each with
//! typed errors, and the CPU reference of the model (forward, backward, AdamW) checked against
//! finite differences. The GPU path, the trainer binary, checkpoints and plots come next.

pub mod data;
pub mod checkpoint;
pub mod reference;
pub mod schedule;
pub mod gpu;
