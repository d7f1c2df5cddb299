//! A world for libqueue's tests: queues over the in-memory log, a clock moved by hand, a log
//! that drops every aux datum (to show aux data is only a cache), and a seeded generator.

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use libqueue::{Clock, Options, Queue};
use logbook::memory::MemoryLogBook;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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

/// A log that never keeps aux data: reads return none, `set_aux_data` is dropped.
pub struct NoAux(pub Arc<dyn LogBook>);

fn strip(record: Option<Record>) -> Option<Record> {
    record.map(|r| Record { aux: None, ..r })
}

#[async_trait]
impl LogBook for NoAux {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        self.0.append(book, tags, data).await
    }
    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        self.0.cond_append(book, tags, data, cond).await
    }
    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        self.0.append_batch(book, records).await
    }
    async fn read_next(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        Ok(strip(self.0.read_next(b, t, s).await?))
    }
    async fn read_prev(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        Ok(strip(self.0.read_prev(b, t, s).await?))
    }
    async fn read_next_blocking(
        &self,
        b: BookId,
        t: Tag,
        s: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        Ok(strip(self.0.read_next_blocking(b, t, s, timeout).await?))
    }
    async fn set_aux_data(&self, _: BookId, _: Seqnum, _: Bytes) -> Result<(), LogError> {
        Ok(())
    }
    async fn trim(&self, b: BookId, t: Tag, below: Seqnum) -> Result<(), LogError> {
        self.0.trim(b, t, below).await
    }
    async fn read_range(&self, b: BookId, t: Tag, r: ReadRange) -> Result<Vec<Record>, LogError> {
        let records = self.0.read_range(b, t, r).await?;
        Ok(records.into_iter().filter_map(|r| strip(Some(r))).collect())
    }
}

/// A small seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of a test: `SEED=n` replays one, else a fixed default.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed}");
    seed
}
