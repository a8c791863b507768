//! `twofour-tune`: the autotuner. Its work (per-shape TileConfig search, ShapeTable files) is
//! issue 6 and is not built yet; this binary says so instead of pretending to tune.

fn main() {
    eprintln!("twofour-tune: the autotuner is not implemented yet (tracked as issue 6).");
    std::process::exit(2);
}
