//! What the `tally` binary wires: the single-node assembly behind `tally up` (every role in
//! one process), the roles of a multi-process cluster and their configuration, the local
//! cluster manager behind `tally cluster`, the HTTP client the log and invoke commands use, and
//! `tally cert`'s certificates.

pub mod cert;
pub mod client;
pub mod cluster;
pub mod config;
pub mod node;
pub mod roles;
