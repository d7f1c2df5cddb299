//! Helpers the libraries' tests share: `NoAux`, a log that keeps no aux data (to show that aux
//! data is only a cache), and `Rng`, a small seeded generator whose seed a test prints
//! (`seed`), so a failing run replays.

use crate::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

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

    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
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

/// The seed of a test: `SEED=n` replays one, else `default`. Printed, so a failure says it.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed}");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLogBook;

    #[tokio::test]
    async fn no_aux_drops_aux_data_and_keeps_records() {
        let memory = Arc::new(MemoryLogBook::new());
        let s = memory
            .append(BookId(1), &[Tag(1)], Bytes::from("r"))
            .await
            .unwrap();
        memory
            .set_aux_data(BookId(1), s, Bytes::from("cached"))
            .await
            .unwrap();
        let plain = memory
            .read_next(BookId(1), Tag(1), Seqnum(0))
            .await
            .unwrap();
        assert!(plain.unwrap().aux.is_some());
        let log = NoAux(memory);
        let got = log.read_next(BookId(1), Tag(1), Seqnum(0)).await.unwrap();
        assert_eq!(got.map(|r| (r.data, r.aux)), Some((Bytes::from("r"), None)));
    }

    #[test]
    fn the_same_seed_draws_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draws: Vec<u64> = (0..5).map(|_| a.below(100)).collect();
        assert_eq!(draws, (0..5).map(|_| b.below(100)).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next(), Rng::new(7).next());
    }
}
