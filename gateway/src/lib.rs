//! The gateway: the log engine that orders a shard's appends and indexes the whole log
//! (`engine`, sans-IO), the tokio runtime that drives it as a `LogBook` (`runtime`), the
//! function registry and dispatcher (`functions`), durable invocations in the log
//! (`invocations`), API tokens (`auth`), the HTTP API (`http`), metrics, and the
//! example functions `tally up` ships.
//!
//! The gateway does not store records: it hands them to its shard through the `Shard` trait
//! and learns their order from metalog entries.

pub mod auth;
pub mod classes;
pub mod engine;
pub mod examples;
pub mod forward;
pub mod functions;
pub mod http;
pub mod invocations;
pub mod log_service;
pub mod metrics;
pub mod runtime;
pub mod serve;
pub mod telemetry;
pub mod triggers;
pub mod worker;

pub use functions::{Ctx, Dispatcher, FunctionError, FunctionResult, Registry};
pub use runtime::{GatewayLog, Restore, Shard};
