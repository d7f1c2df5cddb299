//! A seeded, deterministic simulator of Tally's sequencer group under faults.
//!
//! One thread, virtual time, no tokio, no clock, no OS randomness: every choice comes from one
//! `u64` seed, so a run is replayed exactly by its seed (`SIM_SEED=n`), and a run's trace hash
//! (a hash of every event it processed, in order) is the same every time.
//!
//! What runs is real code over simulated IO:
//! - the sequencer group: three `sequencer::group::GroupNode`s (raft-rs and the
//!   `SequencerEngine` inside), whose Raft logs in `MemStorage` outlive a crash as a disk would
//!   (a `GroupNode` syncs each Raft ready before it says anything);
//! - three storage nodes: the real `storage_node::engine::StorageEngine` (which batches it
//!   takes, what it reports durable, when it stores a metalog entry, repairs from peers, when it
//!   serves reads) over a simulated disk of real segment frames (`storage.rs`) that loses
//!   unsynced writes on a crash, may tear the last one, and syncs as slowly as the seed says;
//!   a restart reads the frames back with `storage_node::codec::scan`, as recovery does;
//! - two gateways: the real `gateway::engine::LogEngine` (pending appends, metalog
//!   application, the tag index, conditional appends, seals, the record cache) with the glue
//!   `tally gateway` puts around it (`gateway.rs`): following committed events, sealing views,
//!   replicating to its shard's replicas with resends, fetching index data from the replicas'
//!   memory or by seqnum from storage nodes.
//!
//! Clients append plain, conditional and trim records through the gateways and read records
//! back by tag (served from a gateway's cache or fetched from a storage node), some with
//! blocking reads that wait past the end of the log. Gateways send
//! heartbeats, crash and come back as new incarnations. Every message between nodes crosses a
//! simulated network that the seed makes lossy, slow, duplicating, reordering and partitioned
//! (one node isolated, random splits, rolling clogs), and the seed crashes and restarts
//! sequencers, storage nodes and gateways.
//!
//! A run has a safety phase (faults on; the invariants in `invariants/` are checked after every
//! event) and a liveness phase (faults off, every node up, no new records): within a bound,
//! every sequencer and storage node must have applied the same events, the newest view must
//! hold every live gateway, and everything durable in it must be ordered.
//!
//! Not simulated: the reclaiming of trimmed segments, and the `Store`'s own IO thread and files (its tests
//! and fuzzing cover them; the simulated disk keeps its durability rules: records are
//! acknowledged after a sync, metalog entries ride on the next one).

pub mod gateway;
pub mod invariants;
pub mod storage;
pub mod world;

pub use world::{run, Failure, Options, Outcome};
