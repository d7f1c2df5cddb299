//! A seeded, deterministic simulator of Tally's sequencer group under faults.
//!
//! One thread, virtual time, no tokio, no clock, no OS randomness: every choice comes from one
//! `u64` seed, so a run is replayed exactly by its seed (`SIM_SEED=n`), and a run's trace hash
//! (a hash of every event it processed, in order) is the same every time.
//!
//! What runs is the real sequencer group: three `sequencer::group::GroupNode`s (raft-rs and
//! the `SequencerEngine` inside), their Raft logs in `MemStorage` that outlive a crash as a
//! disk would. Around them, storage nodes and gateways are models that speak the group's
//! inputs: storage nodes hold the records their shards' gateways produced (durable counts per
//! view and shard) and report progress; gateways send heartbeats, crash and come back as new
//! incarnations. Every message between nodes crosses a simulated network that the seed makes
//! lossy, slow, duplicating, reordering and partitioned (one node isolated, random splits,
//! rolling clogs), and the seed crashes and restarts sequencers, storage nodes and gateways.
//!
//! A run has a safety phase (faults on; the invariants in `invariants/` are checked after every
//! event) and a liveness phase (faults off, every node up, no new records): within a bound,
//! every sequencer must have applied the same events, the newest view must hold every live
//! gateway, and everything durable in it must be ordered.
//!
//! Not simulated yet: the gateways' and storage nodes' own engines (their sans-IO parts still
//! live in the processes' tokio code), and disks that lose unsynced writes (a `GroupNode`
//! syncs each Raft ready before it says anything, so its log loses nothing on a crash).

pub mod invariants;
pub mod world;

pub use world::{run, Failure, Options, Outcome};
