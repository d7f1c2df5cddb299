//! Typed JSON in and out of a function: `input` parses a call's body (a parse error is the
//! caller's fault: `bad_input`, HTTP 400), `output` serializes the answer, and `handler` wraps a
//! typed `async fn(Ctx, In) -> Result<Out, FunctionError>` into a plain handler.

use crate::{Ctx, FunctionError, FunctionResult};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;

/// Parses a call's input as JSON; an empty input reads as `null`, so a type with only
/// optional fields (or `()`) takes a call without a body.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// struct Order { item: String }
/// let order: Order = tally_sdk::json::input(br#"{"item":"tea"}"#).unwrap();
/// assert_eq!(order.item, "tea");
/// assert!(tally_sdk::json::input::<Order>(b"{").unwrap_err().bad_input);
/// ```
pub fn input<T: DeserializeOwned>(input: &[u8]) -> Result<T, FunctionError> {
    let input: &[u8] = if input.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        input
    };
    serde_json::from_slice(input).map_err(|e| FunctionError::bad_input(format!("input: {e}")))
}

/// Serializes a function's answer as JSON.
pub fn output<T: Serialize + ?Sized>(value: &T) -> FunctionResult {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| FunctionError::new(format!("output: {e}")))
}

/// A handler over typed JSON: the input is parsed (bad JSON answers 400 without running the
/// function) and the output serialized.
///
/// ```
/// use tally_sdk::{json, Ctx, FunctionError};
/// async fn double(_ctx: Ctx, n: u64) -> Result<u64, FunctionError> { Ok(n * 2) }
/// let handler = json::handler(double);
/// # let _ = handler;
/// ```
pub fn handler<In, Out, F, Fut>(
    f: F,
) -> impl Fn(Ctx, Bytes) -> std::pin::Pin<Box<dyn Future<Output = FunctionResult> + Send>>
       + Send
       + Sync
       + Clone
       + 'static
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    F: Fn(Ctx, In) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Out, FunctionError>> + Send + 'static,
{
    move |ctx, raw| {
        let f = f.clone();
        Box::pin(async move {
            let value: In = input(&raw)?;
            output(&f(ctx, value).await?)
        })
    }
}
