//! The trainer binary (CPU reference path here; the GPU path on a GPU machine): deterministic, and a resumed run continues with
//! bit-identical losses; a corrupt checkpoint gives a clear error.

use std::process::Command;

fn train(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    // TWOFOUR_TRAIN_BIN: the GPU runner's packed copy (there the run takes the GPU path).
    Command::new(std::env::var("TWOFOUR_TRAIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_twofour-train").to_string()))
        .args(["--steps", "6", "--batch", "2", "--seq", "16", "--val-every", "3", "--sample", "0", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn losses(out: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(out.join("losses.tsv")).unwrap().lines().map(String::from).collect()
}

#[test]
fn same_seed_same_losses_and_resume_is_exact() {
    let base = std::env::temp_dir().join(format!("twofour-train-{}", std::process::id()));
    let (a, b, c) = (base.join("a"), base.join("b"), base.join("c"));
    for (dir, extra) in [(&a, &[][..]), (&b, &[][..])] {
        let o = train(dir, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(losses(&a).len(), 6);
    assert_eq!(losses(&a), losses(&b), "same seed must give the same losses");
    // Stop after 3 steps, resume to 6: the same six losses, bit for bit.
    assert!(train(&c, &["--stop-after", "3"]).status.success());
    assert!(train(&c, &["--resume"]).status.success());
    assert_eq!(losses(&c), losses(&a));
    assert!(a.join("loss.png").exists());
    // A corrupt checkpoint is refused with a message.
    std::fs::write(c.join("state.safetensors"), b"garbage").unwrap();
    let o = train(&c, &["--resume"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("corrupt"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&base).ok();
}
