//! A world for libstore's tests: stores over the in-memory log, a log that drops every aux
//! datum (to show aux data is only a cache), and a small seeded random generator.

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use libstore::{Settings, Store};
use logbook::memory::MemoryLogBook;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use std::sync::Arc;
use std::time::Duration;
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

/// A small seeded generator (xorshift64*): tests draw their workloads from a printed seed.
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

    /// A number in `0..n`.
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
