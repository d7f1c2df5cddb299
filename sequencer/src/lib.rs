//! The sequencer: turns storage nodes' shard progress into metalog entries (DESIGN.md
//! section 3). The engine here is sans-IO; Raft, the network and timers live in the runtime.

mod engine;
pub mod group;

pub use engine::{ApplyError, ConfigError, SequencerConfig, SequencerEngine, SequencerStats};
