//! The sequencer: turns storage nodes' shard progress into metalog entries (DESIGN.md
//! section 3). The engine here is sans-IO; Raft, the network and timers live in the runtime.

mod engine;

pub use engine::{ConfigError, SequencerConfig, SequencerEngine, SequencerStats};
