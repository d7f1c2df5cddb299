//! The Tally SDK: what a function, a library or a worker process sees of Tally, without the
//! gateway. A function is `async fn(Ctx, Bytes) -> FunctionResult`; its `Ctx` offers every
//! LogBook call bound to the invocation's book and nested calls to other functions. The same
//! function runs in-process (registered with the gateway at start-up) or in a worker process
//! (`Worker`), unchanged: the gateway implements the `Invoker` and the `LogBook` a `Ctx` uses.
//!
//! ```no_run
//! use tally_sdk::{json, Ctx, FunctionResult, Worker};
//!
//! #[derive(serde::Deserialize)]
//! struct Hello { name: String }
//!
//! async fn hello(_ctx: Ctx, input: bytes::Bytes) -> FunctionResult {
//!     let hello: Hello = json::input(&input)?;
//!     json::output(&serde_json::json!({ "greeting": format!("hello, {}", hello.name) }))
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let mut worker = Worker::new("hello-worker");
//! worker.register("hello", hello);
//! worker.serve("127.0.0.1:8081").await
//! # }
//! ```
//!
//! This crate depends on `logbook` and no other workspace crate: no axum, no gateway.

mod ctx;
mod error;
pub mod json;
pub mod trace;
#[doc(hidden)]
pub mod wire;
mod worker;

pub use ctx::{BoxFuture, Call, Ctx, Handler, Invoker, CALL_DEPTH_MAX};
pub use error::{FunctionError, FunctionResult};
pub use worker::{Limits, Worker};
