//! The trainer's data paths: corpus, tokenizer, the three file formats, their errors.

use twofour_trainer::data::*;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("twofour-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn corpus_tokenizes_and_splits() {
    let (train, val) = default_split().unwrap();
    assert!(train.len() > 250_000 && val.len() > 25_000, "{} / {}", train.len(), val.len());
    assert!(train.iter().chain(&val).all(|&t| (t as u32) < GPT2_VOCAB));
    // GPT-2 BPE round trip on a known string.
    let t = tokenize("Hello world").unwrap();
    assert_eq!(t, vec![15496, 995]);
    assert_eq!(detokenize(&t).unwrap(), "Hello world");
}

#[test]
fn formats_round_trip() {
    let tokens: Vec<u16> = tokenize("To be, or not to be, that is the question.").unwrap();
    let shard = tmp("a.shard");
    save_llmc_shard(&shard, &tokens).unwrap();
    assert_eq!(load_tokens(&shard).unwrap(), tokens);
    let bin = tmp("train.bin");
    std::fs::write(&bin, tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    assert_eq!(load_tokens(&bin).unwrap(), tokens);
    let txt = tmp("a.txt");
    std::fs::write(&txt, "To be, or not to be, that is the question.").unwrap();
    assert_eq!(load_tokens(&txt).unwrap(), tokens);
}

#[test]
fn corrupt_files_give_clear_errors() {
    let tokens = vec![1u16, 2, 3, 4];
    // llm.c shard cut short.
    let shard = tmp("cut.shard");
    save_llmc_shard(&shard, &tokens).unwrap();
    let mut b = std::fs::read(&shard).unwrap();
    b.truncate(b.len() - 2);
    std::fs::write(&shard, &b).unwrap();
    let e = load_tokens(&shard).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    // Wrong version.
    let mut b = std::fs::read(&shard).unwrap();
    b[4] = 7;
    std::fs::write(&shard, &b).unwrap();
    assert!(load_tokens(&shard).unwrap_err().to_string().contains("version 7"));
    // Odd-length .bin, and a token outside the vocabulary.
    let bin = tmp("odd.bin");
    std::fs::write(&bin, [1u8, 0, 2]).unwrap();
    assert!(load_tokens(&bin).unwrap_err().to_string().contains("odd"));
    std::fs::write(&bin, 60000u16.to_le_bytes()).unwrap();
    assert!(load_tokens(&bin).unwrap_err().to_string().contains("vocabulary"));
    // Binary junk that is no known format; a missing file.
    let junk = tmp("junk.dat");
    std::fs::write(&junk, [0xffu8, 0xfe, 0x00, 0x81]).unwrap();
    assert!(load_tokens(&junk).unwrap_err().to_string().contains("neither"));
    assert!(matches!(load_tokens(&tmp("missing.txt")), Err(DataError::Io { .. })));
}

#[test]
fn batches_are_deterministic_and_shifted() {
    let tokens: Vec<u16> = (0..100).collect();
    let mut b = Batches::new(tokens, 2, 8).unwrap();
    let (x, y) = b.next_batch();
    assert_eq!(x.len(), 16);
    assert_eq!(&x[1..], &y[..15]);
    assert_eq!(y[15], 16);
    let mut again = Batches::new((0..100).collect(), 2, 8).unwrap();
    assert_eq!(again.next_batch(), (x, y));
    assert!(Batches::new(vec![1, 2, 3], 2, 8).is_err());
}
