//! `CrashingLog`: a `LogBook` that dies at its N-th append, just before or just after the log
//! under it takes it: crash injection for tests and for example workers. A `CrashPlan` counts
//! the appends of every `CrashingLog` made with it (one process's calls), and once it has
//! crashed every call of theirs fails, as a dead process would, unless its `on_crash` ends
//! the process itself (an example worker aborts). A plan may also delay each append by a
//! random time before the log under it sees it (`with_delays`), so appends made one after the
//! other without waiting reach the log late and out of order, as over a network; one still
//! on its way when the process dies is lost.

use crate::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a process dies: at its N-th append (from 0), before or after the log takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashAt {
    Before(u64),
    After(u64),
}

/// One process's crash plan: where it dies, how many appends it made, whether it is dead.
pub struct CrashPlan {
    at: Option<CrashAt>,
    appends: AtomicU64,
    dead: AtomicBool,
    on_crash: Box<dyn Fn(CrashAt) + Send + Sync>,
    /// The longest delay of an append, in microseconds (0: none).
    max_delay_us: u64,
    /// The state of the delays' xorshift generator.
    rng: AtomicU64,
    /// Appends started and not yet answered, and the most there were at once.
    on_their_way: AtomicU64,
    most_on_their_way: AtomicU64,
}

impl CrashPlan {
    /// A plan that dies at `at` (never, if `None`); afterwards its logs fail every call.
    pub fn new(at: Option<CrashAt>) -> Arc<CrashPlan> {
        CrashPlan::with_on_crash(at, |_| {})
    }

    /// A plan that also runs `on_crash` where it dies (`std::process::abort` for a real
    /// process).
    pub fn with_on_crash(
        at: Option<CrashAt>,
        on_crash: impl Fn(CrashAt) + Send + Sync + 'static,
    ) -> Arc<CrashPlan> {
        Arc::new(CrashPlan {
            at,
            appends: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            on_crash: Box::new(on_crash),
            max_delay_us: 0,
            rng: AtomicU64::new(1),
            on_their_way: AtomicU64::new(0),
            most_on_their_way: AtomicU64::new(0),
        })
    }

    /// A plan that dies at `at` and delays each append by up to `max_delay` (drawn from
    /// `seed`) before the log under it sees it.
    pub fn with_delays(at: Option<CrashAt>, max_delay: Duration, seed: u64) -> Arc<CrashPlan> {
        Arc::new(CrashPlan {
            at,
            appends: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            on_crash: Box::new(|_| {}),
            max_delay_us: max_delay.as_micros() as u64,
            rng: AtomicU64::new(seed | 1),
            on_their_way: AtomicU64::new(0),
            most_on_their_way: AtomicU64::new(0),
        })
    }

    /// The next append's delay.
    fn delay(&self) -> Duration {
        if self.max_delay_us == 0 {
            return Duration::ZERO;
        }
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        Duration::from_micros(x % (self.max_delay_us + 1))
    }

    /// The appends made so far (the one that crashed included).
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    /// The most appends that were on their way at once (started, not yet answered): more
    /// than 1 means the caller did not wait for one answer before its next append.
    pub fn most_on_their_way(&self) -> u64 {
        self.most_on_their_way.load(Ordering::SeqCst)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn alive(&self) -> Result<(), LogError> {
        if self.is_dead() {
            Err(LogError::Io("the process crashed".into()))
        } else {
            Ok(())
        }
    }

    fn crash(&self, at: CrashAt) -> LogError {
        self.dead.store(true, Ordering::SeqCst);
        (self.on_crash)(at);
        LogError::Io("the process crashed".into())
    }
}

/// `inner` under a crash plan.
pub struct CrashingLog {
    inner: Arc<dyn LogBook>,
    plan: Arc<CrashPlan>,
}

impl CrashingLog {
    pub fn new(inner: Arc<dyn LogBook>, plan: Arc<CrashPlan>) -> CrashingLog {
        CrashingLog { inner, plan }
    }

    /// Runs one append under the plan.
    async fn appending<T>(
        &self,
        append: impl std::future::Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        self.plan.alive()?;
        let n = self.plan.appends.fetch_add(1, Ordering::SeqCst);
        if self.plan.at == Some(CrashAt::Before(n)) {
            return Err(self.plan.crash(CrashAt::Before(n)));
        }
        let now = self.plan.on_their_way.fetch_add(1, Ordering::SeqCst) + 1;
        self.plan.most_on_their_way.fetch_max(now, Ordering::SeqCst);
        let result = async {
            let delay = self.plan.delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                // Still on its way when the process died: lost with it.
                self.plan.alive()?;
            }
            append.await
        }
        .await;
        self.plan.on_their_way.fetch_sub(1, Ordering::SeqCst);
        if self.plan.at == Some(CrashAt::After(n)) {
            return Err(self.plan.crash(CrashAt::After(n)));
        }
        result
    }
}

#[async_trait]
impl LogBook for CrashingLog {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        self.appending(self.inner.append(book, tags, data)).await
    }
    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        self.appending(self.inner.cond_append(book, tags, data, cond))
            .await
    }
    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        self.appending(self.inner.append_batch(book, records)).await
    }
    async fn read_next(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.plan.alive()?;
        self.inner.read_next(b, t, s).await
    }
    async fn read_prev(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.plan.alive()?;
        self.inner.read_prev(b, t, s).await
    }
    async fn read_next_blocking(
        &self,
        b: BookId,
        t: Tag,
        s: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        self.plan.alive()?;
        self.inner.read_next_blocking(b, t, s, timeout).await
    }
    async fn set_aux_data(&self, b: BookId, s: Seqnum, aux: Bytes) -> Result<(), LogError> {
        self.plan.alive()?;
        self.inner.set_aux_data(b, s, aux).await
    }
    async fn trim(&self, b: BookId, t: Tag, below: Seqnum) -> Result<(), LogError> {
        self.plan.alive()?;
        self.inner.trim(b, t, below).await
    }
    async fn read_range(&self, b: BookId, t: Tag, r: ReadRange) -> Result<Vec<Record>, LogError> {
        self.plan.alive()?;
        self.inner.read_range(b, t, r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLogBook;

    #[tokio::test]
    async fn a_crash_before_loses_the_append_and_one_after_keeps_it_and_both_fail_all_later_calls()
    {
        for (at, kept) in [(CrashAt::Before(1), 1), (CrashAt::After(1), 2)] {
            let memory = Arc::new(MemoryLogBook::new());
            let plan = CrashPlan::new(Some(at));
            let log = CrashingLog::new(memory.clone(), plan.clone());
            log.append(BookId(1), &[Tag(1)], Bytes::from("a"))
                .await
                .unwrap();
            assert!(log
                .append(BookId(1), &[Tag(1)], Bytes::from("b"))
                .await
                .is_err());
            assert!(plan.is_dead());
            assert!(log.read_next(BookId(1), Tag(1), Seqnum(0)).await.is_err());
            let range = ReadRange {
                from: Seqnum(0),
                to: Seqnum::MAX,
                limit: 10,
            };
            let records = memory.read_range(BookId(1), Tag(1), range).await.unwrap();
            assert_eq!(records.len(), kept, "{at:?}");
        }
    }
}
