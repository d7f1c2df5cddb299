//! Queries: read-only handlers a workflow exposes (`GET /workflows/{id}/queries/{name}`),
//! answered from the instance as its history shows it and from its tables at its logical time
//! (the seqnum of its newest record). A query appends nothing and changes nothing.

use crate::table::value_at_tag;
use crate::{key_tag, Error, Instance, Workflows};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tally_sdk::Ctx;

/// What a query handler sees: the instance, and its tables as of its newest record.
pub struct Query {
    ctx: Ctx,
    instance: Instance,
    args: Value,
}

impl Query {
    /// The instance: status, input, output, every step.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The query's arguments (its URL query string as a JSON object of strings).
    pub fn args(&self) -> &Value {
        &self.args
    }

    /// The value of `key` in `table` as of the instance's newest record.
    pub async fn get<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let at = self
            .instance
            .steps
            .last()
            .map_or(logbook::Seqnum::MAX, |s| logbook::Seqnum(s.seqnum));
        let value = value_at_tag(&self.ctx, key_tag(table, key), table, key, at).await?;
        value
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    }
}

pub(crate) type QueryFn =
    Arc<dyn Fn(Query) -> Pin<Box<dyn Future<Output = Result<Value, Error>> + Send>> + Send + Sync>;

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no workflow instance {0:?}")]
    NoInstance(String),
    #[error("workflow {workflow} has no query {name:?}")]
    NoQuery { workflow: String, name: String },
    #[error("{0}")]
    Failed(Error),
}

/// The function that answers query `name` of `workflow` where the workflow runs in a worker
/// (`Workflows::serve_queries_in`); its input is `query_input`'s.
pub fn query_function(workflow: &str, name: &str) -> String {
    format!("libflow.query.{workflow}.{name}")
}

/// The input of a query function: the instance and the query's arguments.
pub fn query_input(id: &str, args: Value) -> bytes::Bytes {
    let input = serde_json::json!({ "instance": id, "args": args });
    bytes::Bytes::from(serde_json::to_vec(&input).expect("JSON values serialize"))
}

#[derive(serde::Deserialize)]
struct QueryInput {
    instance: String,
    #[serde(default)]
    args: Value,
}

impl Workflows {
    /// Registers every query with `worker` as a function (`query_function`), so a gateway
    /// answers `GET /workflows/{id}/queries/{name}` of a workflow the worker runs by calling
    /// it. A query function appends nothing; an unknown instance or a failed handler is a bad
    /// input.
    pub fn serve_queries_in(&self, worker: &mut tally_sdk::Worker) {
        let names: Vec<(String, String)> = self
            .queries
            .read()
            .expect("no panics under the queries lock")
            .keys()
            .cloned()
            .collect();
        for (workflow, name) in names {
            let workflows = self.clone();
            let query = name.clone();
            worker.register(&query_function(&workflow, &name), move |ctx, input| {
                let (workflows, query) = (workflows.clone(), query.clone());
                async move {
                    let input: QueryInput = tally_sdk::json::input(&input)?;
                    let answer = workflows
                        .ask(&ctx, &input.instance, &query, input.args)
                        .await
                        .map_err(|e| match e {
                            QueryError::Failed(e) if e.stops_execution() => {
                                tally_sdk::FunctionError::unavailable(e.to_string())
                            }
                            e => tally_sdk::FunctionError::bad_input(e.to_string()),
                        })?;
                    tally_sdk::json::output(&answer)
                }
            });
        }
    }

    /// Exposes query `name` on instances of `workflow`: `handler` answers from the instance
    /// and its tables, appending nothing.
    ///
    /// ```no_run
    /// # let mut workflows = libflow::Workflows::new();
    /// workflows.query("steps", "progress", |q: libflow::Query| async move {
    ///     let count: Option<u64> = q.get("steps", &q.instance().id).await?;
    ///     Ok(serde_json::json!({ "count": count.unwrap_or(0) }))
    /// });
    /// ```
    pub fn query<F, Fut>(&mut self, workflow: &str, name: &str, handler: F) -> &mut Workflows
    where
        F: Fn(Query) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Error>> + Send + 'static,
    {
        let handler: QueryFn = Arc::new(move |q| Box::pin(handler(q)));
        self.queries
            .write()
            .expect("no panics under the queries lock")
            .insert((workflow.to_string(), name.to_string()), handler);
        self
    }

    /// Answers query `name` of instance `id`.
    pub async fn ask(
        &self,
        ctx: &Ctx,
        id: &str,
        name: &str,
        args: Value,
    ) -> Result<Value, QueryError> {
        let instance = crate::describe(ctx, id)
            .await
            .map_err(QueryError::Failed)?
            .ok_or_else(|| QueryError::NoInstance(id.to_string()))?;
        let handler = self
            .queries
            .read()
            .expect("no panics under the queries lock")
            .get(&(instance.workflow.clone(), name.to_string()))
            .cloned()
            .ok_or_else(|| QueryError::NoQuery {
                workflow: instance.workflow.clone(),
                name: name.to_string(),
            })?;
        handler(Query {
            ctx: ctx.clone(),
            instance,
            args,
        })
        .await
        .map_err(QueryError::Failed)
    }
}
