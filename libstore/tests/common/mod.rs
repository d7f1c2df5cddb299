//! A world for libstore's tests: stores over the in-memory log, a log that drops every aux
//! datum (to show aux data is only a cache), and a small seeded random generator.

#![allow(dead_code)]

use libstore::{Settings, Store};
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook};
use std::sync::Arc;
use tally_sdk::Ctx;

pub const BOOK: BookId = BookId(1);

/// A store over `log`.
pub fn store_over(log: Arc<dyn LogBook>) -> Store {
    Store::new(Ctx::new(log, BOOK, "test".into()))
}

/// A store over a fresh in-memory log, and the log.
pub fn store() -> (Store, Arc<MemoryLogBook>) {
    let log = Arc::new(MemoryLogBook::new());
    (store_over(log.clone()), log)
}

/// A store with `settings` over `log`.
pub fn store_with(log: Arc<dyn LogBook>, settings: Settings) -> Store {
    Store::with_settings(Ctx::new(log, BOOK, "test".into()), settings).expect("valid settings")
}

#[allow(unused_imports)]
pub use logbook::testing::{seed, NoAux, Rng};
