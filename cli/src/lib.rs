//! What the `tally` binary wires: the single-node assembly behind `tally up` (every role in
//! one process) and the HTTP client the log and invoke commands use.

pub mod client;
pub mod node;
pub mod roles;
