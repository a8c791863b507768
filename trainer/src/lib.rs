//! The reference GPT trainer of twofour (issue 7). So far: the default corpus and the token data
//! paths (GPT-2 BPE through tiktoken-rs, llm.c shards, nanoGPT .bin files, plain text), each with
//! typed errors. The model, its CPU reference and the GPU path come next.

pub mod data;
