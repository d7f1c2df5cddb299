//! The sequencer: turns storage nodes' shard progress into metalog entries (DESIGN.md
//! section 3). The engine here is sans-IO; Raft, the network and timers live in the runtime,
//! except a group member's Raft log, which `raft_log::DiskStorage` keeps on disk.

mod engine;
pub mod group;
pub mod raft_log;

pub use engine::{ApplyError, ConfigError, SequencerConfig, SequencerEngine, SequencerStats};
