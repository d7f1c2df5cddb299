//! The simulator in CI: a seed replays exactly (the same trace hash twice), and a short sweep
//! of seeds holds every invariant and converges.

use sim::{run, Options};

/// Seeds with 10 simulated seconds of faults: enough for crashes, partitions and view changes,
/// short enough for a debug build.
fn short(seed: u64) -> Options {
    Options {
        safety: 10_000_000,
        ..Options::new(seed)
    }
}

#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    for seed in [1, 2, 3] {
        let first = run(short(seed)).unwrap_or_else(|f| panic!("{f}"));
        let again = run(short(seed)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(first, again, "seed {seed} replayed differently");
        assert!(first.committed > 0 && first.ordered > 0, "{first:?}");
    }
    let other = run(short(4)).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(other.trace_hash, run(short(1)).unwrap().trace_hash);
}

#[test]
fn a_short_sweep_holds_every_invariant() {
    for seed in 100..108 {
        if let Err(failure) = run(short(seed)) {
            panic!("{failure}");
        }
    }
}
