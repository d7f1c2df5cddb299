//! A world for libqueue's tests: queues over the in-memory log, a clock moved by hand, a log
//! that drops every aux datum (to show aux data is only a cache), and a seeded generator.

#![allow(dead_code)]

use libqueue::{Clock, Options, Queue};
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tally_sdk::Ctx;

pub const BOOK: BookId = BookId(1);

/// A clock the test moves.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn ctx(log: Arc<dyn LogBook>, id: &str) -> Ctx {
    Ctx::new(log, BOOK, id.into())
}

/// Opens `name` over `log` with `shards` shards and `clock`.
pub async fn open(log: Arc<dyn LogBook>, name: &str, shards: u32, clock: Arc<dyn Clock>) -> Queue {
    let options = Options {
        shards: Some(shards),
        clock,
    };
    Queue::open_with(ctx(log, "test"), name, options)
        .await
        .expect("the queue opens")
}

pub fn memory() -> Arc<MemoryLogBook> {
    Arc::new(MemoryLogBook::new())
}

#[allow(unused_imports)]
pub use logbook::testing::{seed, NoAux, Rng};
