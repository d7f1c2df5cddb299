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
pub fn app() -> Router {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let metrics = Metrics::new();
    let mut registry = Registry::new();
    let objects = libstore::Stores::new();
    let workflows = gateway::examples::register(&mut registry, &objects);
    let classes = gateway::classes::objects(&mut registry, &[]).expect("the example package");
    let dispatcher = Dispatcher::new(registry, log.clone(), metrics.clone());
    router(Arc::new(AppState {
        dispatcher,
        log,
        metrics,
        engine: None,
        workflow_books: Default::default(),
        workflows,
        objects,
        queues: Default::default(),
        classes,
        packages: Default::default(),
    }))
}
