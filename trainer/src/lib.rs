//! The reference GPT trainer of twofour (issue 7): the default corpus and the token data paths
//! (GPT-2 BPE through tiktoken-rs, llm.c shards, nanoGPT .bin files, plain text), each with typed
//! errors; the CPU reference of the model (forward, backward, AdamW) checked against finite
//! differences; the GPU path (`gpu`) checked against the reference; checkpoints (`checkpoint`).

pub mod data;
pub mod checkpoint;
pub mod reference;
pub mod schedule;
pub mod gpu;
