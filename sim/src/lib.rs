//! A seeded, deterministic simulator of Tally's sequencer group under faults.
//!
//! One thread, virtual time, no tokio, no clock, no OS randomness: every choice comes from one
//! `u64` seed, so a run is replayed exactly by its seed (`SIM_SEED=n`), and a run's trace hash
//! (a hash of every event it processed, in order) is the same every time.
//!
//! What runs is the real sequencer group, three `sequencer::group::GroupNode`s (raft-rs and
//! the `SequencerEngine` inside) whose Raft logs in `MemStorage` outlive a crash as a disk
//! would, and two gateways, each the real `gateway::engine::LogEngine` (pending appends,
//! metalog application, the tag index, conditional appends, seals) with the glue `tally
//! gateway` puts around it (`gateway.rs`): following committed events, sealing views,
//! replicating to its shard's replicas with resends, fetching index data. Storage nodes are
//! models: they hold the records replicated to them per view and shard, acknowledge them, serve
//! index data and report progress. Gateways send heartbeats, crash and come back as new
//! incarnations; clients append plain and conditional records through them. Every message between nodes crosses a simulated network that the seed makes
//! lossy, slow, duplicating, reordering and partitioned (one node isolated, random splits,
//! rolling clogs), and the seed crashes and restarts sequencers, storage nodes and gateways.
//!
//! A run has a safety phase (faults on; the invariants in `invariants/` are checked after every
//! event) and a liveness phase (faults off, every node up, no new records): within a bound,
//! every sequencer must have applied the same events, the newest view must hold every live
//! gateway, and everything durable in it must be ordered.
//!
//! Not simulated yet: the storage nodes' own code (it still lives in the process's tokio
//! tasks), reads through the record cache and storage fetches, trims, and disks that lose
//! unsynced writes (a `GroupNode` syncs each Raft ready before it says anything, so its log
//! loses nothing on a crash).

pub mod gateway;
pub mod invariants;
pub mod world;

pub use world::{run, Failure, Options, Outcome};
