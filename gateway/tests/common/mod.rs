//! What the router tests share: the gateway of `tally up` with the example functions and
//! workflows, over an in-memory log.

use axum::Router;
use gateway::http::{router, AppState};
use gateway::metrics::Metrics;
use gateway::{Dispatcher, Registry};
use logbook::memory::MemoryLogBook;
use logbook::LogBook;
use std::sync::Arc;

/// The router of a fresh gateway. Needs a tokio runtime (the dispatcher starts its recovery
/// task).
#[allow(dead_code)] // Not every test file uses it.
pub fn app() -> Router {
    app_over(Arc::new(MemoryLogBook::new())).0
}

/// The router of a fresh gateway over `log`, and its tokens.
#[allow(dead_code)] // Not every test file asks for the tokens.
pub fn app_over(log: Arc<dyn LogBook>) -> (Router, Arc<gateway::auth::Tokens>) {
    let metrics = Metrics::new();
    let mut registry = Registry::new();
    let objects = libstore::Stores::new();
    let workflows = gateway::examples::register(&mut registry, &objects);
    let classes = gateway::classes::objects(&mut registry, &[]).expect("the example package");
    let dispatcher = Dispatcher::new(registry, log.clone(), metrics.clone());
    let tokens = gateway::auth::Tokens::unread(log.clone(), None);
    let app = router(Arc::new(AppState {
        dispatcher,
        log: log.clone(),
        metrics,
        engine: None,
        workflow_books: Default::default(),
        workflows,
        objects,
        queues: Default::default(),
        classes,
        packages: Default::default(),
        tokens: tokens.clone(),
        cluster: None,
    }));
    (app, tokens)
}
