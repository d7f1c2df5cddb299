//! Consumer groups: pops, acks, dead letters, and the replay that turns a group's stream into
//! its state, deciding every record alike for every reader.
//!
//! A group's state for one shard after a record is found by walking the group's stream back
//! from that record to a starting point (a record whose aux data holds the state after it, a
//! checkpoint, the state this handle keeps in memory, or the stream's start), then applying
//! the records above it in log order (`apply`). Applying a pop may read the shard's messages
//! (the next undelivered one below the pop record) and a keyed record reads its key's stream;
//! nothing else. Whoever computes a state deeper than `Settings::checkpoint_every` records
//! above the newest checkpoint appends one, conditionally at the stream's next position, so
//! the checkpoint is exactly the state before it.

use crate::entry::{
    group_tag, key_tag, push_tag, queue_tag, Aux, Entry, Flight, MessageId, Outcome, State,
};
use crate::queue::{check_name, Queue};
use crate::Error;
use bytes::Bytes;
use logbook::{Cond, LogError, Record, Seqnum, Tag, READ_BLOCKING_TIMEOUT_MS_MAX};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most deliveries `max_deliveries` may allow.
pub const MAX_DELIVERIES_MAX: u32 = 1_000_000;
/// Longest visibility timeout.
pub const VISIBILITY_TIMEOUT_MAX: Duration = Duration::from_secs(12 * 3600);
/// Most dead letters `dead_letters` lists.
pub const DEAD_LETTERS_LISTED_MAX: usize = 1_000;
/// Longest a blocked pop sleeps before it looks again for requeued dead letters.
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// How often a checkpoint is tried when other records keep landing first.
const CHECKPOINT_TRIES_MAX: usize = 3;

/// A group handle's settings. The timeout and the delivery limit travel in each pop record,
/// so every reader decides that pop alike whatever its own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A message delivered by a pop and not acked is available again to pops whose time
    /// (see the README) is at least the delivering pop's time plus this.
    pub visibility_timeout: Duration,
    /// A message delivered this many times whose last delivery timed out becomes a dead
    /// letter at the next pop instead of being delivered again.
    pub max_deliveries: u32,
    /// A state computed from more records than this above the newest checkpoint gets a
    /// checkpoint appended.
    pub checkpoint_every: usize,
    /// A deliberately wrong pop, to show that the tests' checker catches it: a pop also takes
    /// an unexpired in-flight message whose seqnum is a multiple of 7 (once). Never set it
    /// outside such a test.
    #[doc(hidden)]
    pub fault_pop_takes_in_flight: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            checkpoint_every: 64,
            fault_pop_takes_in_flight: false,
        }
    }
}

impl Settings {
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.visibility_timeout.is_zero() || self.visibility_timeout > VISIBILITY_TIMEOUT_MAX {
            return Err(Error::Invalid(format!(
                "a visibility timeout is 1 ms to {} s",
                VISIBILITY_TIMEOUT_MAX.as_secs()
            )));
        }
        if self.max_deliveries == 0 || self.max_deliveries > MAX_DELIVERIES_MAX {
            return Err(Error::Invalid(format!(
                "max_deliveries is 1 to {MAX_DELIVERIES_MAX}"
            )));
        }
        if self.checkpoint_every == 0 || self.checkpoint_every > logbook::READ_RANGE_RECORDS_MAX {
            return Err(Error::Invalid(format!(
                "checkpoint_every is 1 to {}",
                logbook::READ_RANGE_RECORDS_MAX
            )));
        }
        Ok(())
    }
}

/// A message handed to a pop: ack it (`Group::ack`) within the visibility timeout, or it is
/// delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: MessageId,
    pub data: Bytes,
    /// How many times the message was delivered to the group, this time included.
    pub deliveries: u32,
    /// The pop record that delivered it; an ack names it.
    pub receipt: Seqnum,
}

/// A message as `peek` and `dead_letters` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub data: Bytes,
    /// How many times it was delivered to the group so far.
    pub deliveries: u32,
}

/// A group's counts, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages not yet acked nor dead letters: never delivered, in flight, or requeued.
    pub lag: u64,
    /// Messages never delivered to the group.
    pub pending: u64,
    /// Messages delivered and not acked (some of them maybe past their timeout).
    pub in_flight: u64,
    pub dead_letters: u64,
    pub acked: u64,
    /// Deliveries so far, redeliveries included.
    pub delivered: u64,
    /// When the oldest message the group has not acked (and that is not a dead letter) was
    /// pushed, in ms since the epoch by its pusher's clock; `None` when there is none.
    pub oldest_ms: Option<u64>,
}

/// What the replays of a group handle cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// States computed.
    pub states: u64,
    /// Records applied to compute them.
    pub records_replayed: u64,
    /// The most records one state applied.
    pub replay_max: u64,
    /// Checkpoints appended.
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    states: AtomicU64,
    records_replayed: AtomicU64,
    replay_max: AtomicU64,
    checkpoints: AtomicU64,
}

struct Inner {
    queue: Queue,
    name: String,
    join: Seqnum,
    settings: Settings,
    next_shard: AtomicU64,
    /// The newest state computed of each shard, and the seqnum of the last record in it.
    cache: Mutex<BTreeMap<u32, (Seqnum, State)>>,
    counters: Counters,
}

/// A consumer group of a queue: its own cursor over each shard, its messages in flight, its
/// dead letters. Cheap to clone; clones share their caches.
///
/// ```
/// # async fn f(queue: libqueue::Queue) -> Result<(), libqueue::Error> {
/// let workers = queue.group("workers").await?;
/// if let Some(delivery) = workers.pop().await? {
///     // ... work on delivery.data ...
///     workers.ack(&delivery).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

enum Available {
    Now,
    /// In this many ms of group time, a message in flight times out.
    In(u64),
    Never,
}

impl Group {
    pub(crate) fn new(queue: Queue, name: &str, join: Seqnum, settings: Settings) -> Group {
        let start = spread(&format!("{}/{name}", queue.inner.ctx.invocation_id()));
        Group {
            inner: Arc::new(Inner {
                queue,
                name: name.to_string(),
                join,
                settings,
                next_shard: AtomicU64::new(start),
                cache: Mutex::new(BTreeMap::new()),
                counters: Counters::default(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn settings(&self) -> Settings {
        self.inner.settings
    }

    /// What this handle's replays cost so far.
    pub fn replay_stats(&self) -> ReplayStats {
        let c = &self.inner.counters;
        ReplayStats {
            states: c.states.load(Ordering::Relaxed),
            records_replayed: c.records_replayed.load(Ordering::Relaxed),
            replay_max: c.replay_max.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
        }
    }

    fn queue_name(&self) -> &str {
        &self.inner.queue.inner.name
    }

    fn ctx(&self) -> &tally_sdk::Ctx {
        &self.inner.queue.inner.ctx
    }

    fn now_ms(&self) -> u64 {
        self.inner.queue.inner.clock.now_ms()
    }

    fn shards(&self) -> u32 {
        self.inner.queue.inner.shards
    }

    fn tag(&self, shard: u32) -> Tag {
        group_tag(self.queue_name(), &self.inner.name, shard)
    }

    fn key_scope(&self, what: &str) -> String {
        format!("{what}:{}", self.inner.name)
    }

    /// Pops a message if one is available now; appends nothing if none is.
    pub async fn pop(&self) -> Result<Option<Delivery>, Error> {
        self.pop_inner(None, Duration::ZERO).await
    }

    /// Pops a message, waiting up to `timeout` for one (a push, or a message in flight whose
    /// visibility timeout passes).
    pub async fn pop_wait(&self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        self.pop_inner(None, timeout).await
    }

    /// Like `pop_wait`, under an idempotency key: every pop under `key` (in this group) is
    /// the first one, and returns its delivery (or its `None`), so a re-run step pops nothing
    /// new. A keyed pop that finds nothing appends nothing.
    pub async fn pop_keyed(&self, key: &str, timeout: Duration) -> Result<Option<Delivery>, Error> {
        check_name("key", key)?;
        self.pop_inner(Some(key), timeout).await
    }

    async fn pop_inner(
        &self,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Delivery>, Error> {
        if let Some(key) = key {
            if let Some(first) = self.first_keyed("pop", key).await? {
                return self.delivery_of(&first).await;
            }
        }
        let deadline = Instant::now() + timeout;
        let shards = self.shards();
        let start = self.inner.next_shard.fetch_add(1, Ordering::Relaxed);
        let wake_tag = queue_tag(self.queue_name());
        loop {
            let tail = self
                .ctx()
                .check_tail(wake_tag)
                .await?
                .map_or(Seqnum::ZERO, |r| r.seqnum);
            let now = self.now_ms();
            let mut wake_ms: Option<u64> = None;
            for i in 0..shards {
                let shard = ((start + u64::from(i)) % u64::from(shards)) as u32;
                let state = self.state_at(shard, Seqnum::MAX).await?;
                match self.available(shard, &state, now).await? {
                    Available::Never => continue,
                    Available::In(ms) => {
                        wake_ms = Some(wake_ms.map_or(ms, |w| w.min(ms)));
                        continue;
                    }
                    Available::Now => {}
                }
                let (seqnum, outcome) = self.append_pop(shard, key).await?;
                match outcome {
                    Outcome::Delivered {
                        message,
                        deliveries,
                    } => {
                        let id = MessageId {
                            shard,
                            seqnum: message,
                        };
                        let data = self.message_data(id).await?;
                        return Ok(Some(Delivery {
                            id,
                            data,
                            deliveries,
                            receipt: seqnum,
                        }));
                    }
                    Outcome::Duplicate { first } => {
                        let record = self.record(self.tag(shard), first).await?;
                        return self.delivery_of(&record).await;
                    }
                    // Another pop took it first; a keyed pop has used its key.
                    _ if key.is_some() => return Ok(None),
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut wait = left.min(WAIT_SLICE);
            if let Some(ms) = wake_ms {
                wait = wait.min(Duration::from_millis(ms.max(1)));
            }
            let wait = wait.min(Duration::from_millis(READ_BLOCKING_TIMEOUT_MS_MAX));
            self.ctx()
                .read_next_blocking(wake_tag, tail.next(), wait)
                .await?;
        }
    }

    /// Appends a pop record to `shard`'s stream and decides it.
    async fn append_pop(&self, shard: u32, key: Option<&str>) -> Result<(Seqnum, Outcome), Error> {
        let settings = self.inner.settings;
        let entry = Entry::Pop {
            ts_ms: self.now_ms(),
            shard,
            visibility_ms: settings.visibility_timeout.as_millis() as u64,
            max_deliveries: settings.max_deliveries,
            key: key.map(str::to_string),
        };
        let seqnum = self.append(shard, key.map(|k| ("pop", k)), &entry).await?;
        let state = self.state_at(shard, seqnum).await?;
        Ok((seqnum, state.last))
    }

    async fn append(
        &self,
        shard: u32,
        key: Option<(&str, &str)>,
        entry: &Entry,
    ) -> Result<Seqnum, Error> {
        let mut tags = vec![self.tag(shard)];
        if let Some((what, key)) = key {
            tags.push(key_tag(self.queue_name(), &self.key_scope(what), key));
        }
        Ok(self.ctx().append(&tags, entry.encode(None)).await?)
    }

    /// The first record under `key` in `what`'s scope, if any.
    async fn first_keyed(&self, what: &str, key: &str) -> Result<Option<Record>, Error> {
        let tag = key_tag(self.queue_name(), &self.key_scope(what), key);
        Ok(self.ctx().read_next(tag, Seqnum::ZERO).await?)
    }

    /// The delivery a pop record made (or `None` if it found nothing).
    async fn delivery_of(&self, record: &Record) -> Result<Option<Delivery>, Error> {
        let Entry::Pop { shard, .. } = Entry::decode(record)?.0 else {
            return Err(Error::Corrupt {
                seqnum: record.seqnum,
                reason: "a pop's key names a record that is not a pop".into(),
            });
        };
        let state = self.state_at(shard, record.seqnum).await?;
        match state.last {
            Outcome::Delivered {
                message,
                deliveries,
            } => {
                let id = MessageId {
                    shard,
                    seqnum: message,
                };
                Ok(Some(Delivery {
                    id,
                    data: self.message_data(id).await?,
                    deliveries,
                    receipt: record.seqnum,
                }))
            }
            _ => Ok(None),
        }
    }

    async fn record(&self, tag: Tag, seqnum: Seqnum) -> Result<Record, Error> {
        match self.ctx().read_next(tag, seqnum).await? {
            Some(r) if r.seqnum == seqnum => Ok(r),
            _ => Err(Error::Trimmed(seqnum)),
        }
    }

    /// A message's bytes.
    async fn message_data(&self, id: MessageId) -> Result<Bytes, Error> {
        let record = self
            .record(push_tag(self.queue_name(), id.shard), id.seqnum)
            .await?;
        Ok(Entry::decode(&record)?.1)
    }

    /// Whether a pop made now could take a message of `shard`, and if not, when.
    async fn available(&self, shard: u32, state: &State, now: u64) -> Result<Available, Error> {
        let clock = state.clock_ms.max(now);
        if !state.ready.is_empty() {
            return Ok(Available::Now);
        }
        let mut soonest: Option<u64> = None;
        for (m, flight) in &state.in_flight {
            // A timed-out delivery is taken again, or (the last allowed one) moved to the
            // dead letters by the pop's record: either needs one.
            if flight.expires_ms() <= clock || self.fault_takes(*m, flight) {
                return Ok(Available::Now);
            }
            let ms = flight.expires_ms() - clock;
            soonest = Some(soonest.map_or(ms, |s| s.min(ms)));
        }
        let tag = push_tag(self.queue_name(), shard);
        if self.ctx().read_next(tag, state.next).await?.is_some() {
            return Ok(Available::Now);
        }
        Ok(soonest.map_or(Available::Never, Available::In))
    }

    fn fault_takes(&self, message: u64, flight: &Flight) -> bool {
        self.inner.settings.fault_pop_takes_in_flight
            && message.is_multiple_of(7)
            && flight.deliveries < 2
    }

    /// Acks a delivery: the message is done for this group. An ack of a delivery that is not
    /// the message's current one (acked already, or taken again after its timeout) is
    /// `Error::NotInFlight` and does nothing.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        self.ack_inner(None, delivery.id, delivery.receipt).await
    }

    /// Like `ack`, under an idempotency key: every ack under `key` (in this group) is the
    /// first one and has its outcome, so a re-run step's ack succeeds if the first did.
    pub async fn ack_keyed(&self, key: &str, delivery: &Delivery) -> Result<(), Error> {
        check_name("key", key)?;
        self.ack_inner(Some(key), delivery.id, delivery.receipt)
            .await
    }

    /// Acks the delivery of message `id` by the pop record `receipt` (for callers that kept
    /// the two, e.g. over HTTP).
    pub async fn ack_id(&self, id: MessageId, receipt: Seqnum) -> Result<(), Error> {
        self.ack_inner(None, id, receipt).await
    }

    async fn ack_inner(&self, key: Option<&str>, id: MessageId, pop: Seqnum) -> Result<(), Error> {
        self.check_shard(id)?;
        if let Some(key) = key {
            if let Some(first) = self.first_keyed("ack", key).await? {
                return self.ack_outcome_of(&first).await;
            }
        }
        let entry = Entry::Ack {
            ts_ms: self.now_ms(),
            shard: id.shard,
            message: id.seqnum,
            pop,
            key: key.map(str::to_string),
        };
        let seqnum = self
            .append(id.shard, key.map(|k| ("ack", k)), &entry)
            .await?;
        let state = self.state_at(id.shard, seqnum).await?;
        match state.last {
            Outcome::Acked => Ok(()),
            Outcome::Duplicate { first } => {
                let record = self.record(self.tag(id.shard), first).await?;
                self.ack_outcome_of(&record).await
            }
            _ => Err(Error::NotInFlight { id }),
        }
    }

    async fn ack_outcome_of(&self, record: &Record) -> Result<(), Error> {
        let Entry::Ack { shard, message, .. } = Entry::decode(record)?.0 else {
            return Err(Error::Corrupt {
                seqnum: record.seqnum,
                reason: "an ack's key names a record that is not an ack".into(),
            });
        };
        let state = self.state_at(shard, record.seqnum).await?;
        match state.last {
            Outcome::Acked => Ok(()),
            _ => Err(Error::NotInFlight {
                id: MessageId {
                    shard,
                    seqnum: message,
                },
            }),
        }
    }

    fn check_shard(&self, id: MessageId) -> Result<(), Error> {
        if id.shard >= self.shards() {
            return Err(Error::Invalid(format!(
                "message {id}: the queue has {} shards",
                self.shards()
            )));
        }
        Ok(())
    }

    /// Makes a dead letter available again, its deliveries counted from 0.
    pub async fn requeue(&self, id: MessageId) -> Result<(), Error> {
        let entry = Entry::Requeue {
            ts_ms: self.now_ms(),
            message: id.seqnum,
        };
        self.dead_letter_op(id, entry, Outcome::Requeued).await
    }

    /// Drops a dead letter for good.
    pub async fn discard(&self, id: MessageId) -> Result<(), Error> {
        let entry = Entry::Discard {
            ts_ms: self.now_ms(),
            message: id.seqnum,
        };
        self.dead_letter_op(id, entry, Outcome::Discarded).await
    }

    async fn dead_letter_op(&self, id: MessageId, entry: Entry, ok: Outcome) -> Result<(), Error> {
        self.check_shard(id)?;
        let seqnum = self.append(id.shard, None, &entry).await?;
        let state = self.state_at(id.shard, seqnum).await?;
        if state.last == ok {
            Ok(())
        } else {
            Err(Error::NotDeadLetter { id })
        }
    }

    /// The group's dead letters (at most `DEAD_LETTERS_LISTED_MAX`), oldest first per shard.
    pub async fn dead_letters(&self) -> Result<Vec<Message>, Error> {
        let mut out = Vec::new();
        for shard in 0..self.shards() {
            let state = self.state_at(shard, Seqnum::MAX).await?;
            for (m, deliveries) in &state.dead {
                if out.len() >= DEAD_LETTERS_LISTED_MAX {
                    return Ok(out);
                }
                let id = MessageId {
                    shard,
                    seqnum: Seqnum(*m),
                };
                out.push(Message {
                    id,
                    data: self.message_data(id).await?,
                    deliveries: *deliveries,
                });
            }
        }
        Ok(out)
    }

    /// The message a pop made now would take from the first shard (in shard order) that has
    /// one, without taking it (appends nothing).
    pub async fn peek(&self) -> Result<Option<Message>, Error> {
        let now = self.now_ms();
        let max = self.inner.settings.max_deliveries;
        for shard in 0..self.shards() {
            let state = self.state_at(shard, Seqnum::MAX).await?;
            let clock = state.clock_ms.max(now);
            let again =
                earliest_again(&state, |_, f| f.deliveries < max && f.expires_ms() <= clock);
            let found = match again {
                Some(found) => Some(found),
                None => {
                    let mut probe = state.clone();
                    self.next_push(shard, &mut probe, Seqnum::MAX)
                        .await?
                        .map(|m| (m, 0))
                }
            };
            if let Some((m, deliveries)) = found {
                let id = MessageId {
                    shard,
                    seqnum: Seqnum(m),
                };
                return Ok(Some(Message {
                    id,
                    data: self.message_data(id).await?,
                    deliveries,
                }));
            }
        }
        Ok(None)
    }

    /// The group's counts now.
    pub async fn stats(&self) -> Result<GroupStats, Error> {
        let mut stats = GroupStats::default();
        for shard in 0..self.shards() {
            let state = self.state_at(shard, Seqnum::MAX).await?;
            let pending = self.inner.queue.count_pushes(shard, state.next).await?;
            stats.pending += pending;
            stats.in_flight += state.in_flight.len() as u64;
            stats.dead_letters += state.dead.len() as u64;
            stats.acked += state.acked;
            stats.delivered += state.delivered;
            stats.lag += pending + state.in_flight.len() as u64 + state.ready.len() as u64;
            // Messages in flight or requeued came before every one not yet delivered.
            let unfinished = (state.in_flight.keys().next().copied())
                .into_iter()
                .chain(state.ready.keys().next().copied())
                .min();
            let oldest = match unfinished {
                Some(m) => Some(Seqnum(m)),
                None if pending > 0 => {
                    let mut probe = state.clone();
                    self.next_push(shard, &mut probe, Seqnum::MAX)
                        .await?
                        .map(Seqnum)
                }
                None => None,
            };
            if let Some(seqnum) = oldest {
                let record = self
                    .record(push_tag(self.queue_name(), shard), seqnum)
                    .await?;
                if let Some(ts) = Entry::decode(&record)?.0.ts_ms() {
                    stats.oldest_ms = Some(stats.oldest_ms.map_or(ts, |o: u64| o.min(ts)));
                }
            }
        }
        Ok(stats)
    }

    /// Appends a checkpoint of `shard`'s state at the stream's next position (for a trim to
    /// cut at): its seqnum and the state, or `None` if the stream is empty or other records
    /// kept landing first.
    pub(crate) async fn checkpoint(&self, shard: u32) -> Result<Option<(Seqnum, State)>, Error> {
        for _ in 0..CHECKPOINT_TRIES_MAX {
            let state = self.state_at(shard, Seqnum::MAX).await?;
            if state.position == 0 {
                return Ok(None);
            }
            if let Some(seqnum) = self.append_checkpoint(shard, &state).await? {
                return Ok(Some((seqnum, state)));
            }
        }
        Ok(None)
    }

    /// Appends a checkpoint of `state`, which must be the state after the stream's newest
    /// record: `None` if another record landed first.
    async fn append_checkpoint(&self, shard: u32, state: &State) -> Result<Option<Seqnum>, Error> {
        let tag = self.tag(shard);
        let entry = Entry::Checkpoint {
            state: state.clone(),
        };
        match self
            .ctx()
            .cond_append(&[tag], entry.encode(None), Cond::at(tag, state.position))
            .await
        {
            Ok(seqnum) => {
                self.inner
                    .counters
                    .checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(seqnum))
            }
            Err(LogError::CondFailed { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn cached(&self, shard: u32, newest: Seqnum, at: Seqnum) -> Option<State> {
        let cache = self
            .inner
            .cache
            .lock()
            .expect("no panics while holding the cache");
        let (as_of, state) = cache.get(&shard)?;
        (newest <= *as_of && *as_of <= at).then(|| state.clone())
    }

    fn cache(&self, shard: u32, as_of: Seqnum, state: &State) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .expect("no panics while holding the cache");
        if cache.get(&shard).is_some_and(|(kept, _)| *kept > as_of) {
            return;
        }
        cache.insert(shard, (as_of, state.clone()));
    }

    /// The group's state of `shard` after every record of its stream up to `at`
    /// (`Seqnum::MAX`: the newest).
    pub(crate) async fn state_at(&self, shard: u32, at: Seqnum) -> Result<State, Error> {
        let ctx = self.ctx();
        let tag = self.tag(shard);
        let mut pending: Vec<(Record, Entry)> = Vec::new();
        let mut cursor = at;
        let mut as_of: Option<Seqnum> = None;
        let start = loop {
            let Some(record) = ctx.read_prev(tag, cursor).await? else {
                if pending.is_empty() {
                    // Nothing at or below `at`: a new stream, or one trimmed past `at`
                    // (after a trim, the stream's first record is a checkpoint).
                    if let Some(first) = ctx.read_next(tag, Seqnum::ZERO).await? {
                        if let Entry::Checkpoint { .. } = Entry::decode(&first)?.0 {
                            return Err(Error::Trimmed(at));
                        }
                    }
                }
                break State::joined_at(self.inner.join);
            };
            as_of.get_or_insert(record.seqnum);
            if let Some(state) = self.cached(shard, record.seqnum, cursor) {
                break state;
            }
            if let Some(state) = Aux::of(record.aux.as_ref()) {
                break state;
            }
            let (entry, _) = Entry::decode(&record)?;
            if let Entry::Checkpoint { state } = entry {
                break State {
                    position: state.position + 1,
                    depth: 0,
                    last: Outcome::Nothing,
                    ..state
                };
            }
            let seqnum = record.seqnum;
            pending.push((record, entry));
            if seqnum == Seqnum::ZERO {
                break State::joined_at(self.inner.join);
            }
            cursor = Seqnum(seqnum.0 - 1);
        };
        let replayed = pending.len() as u64;
        let mut state = start;
        let mut last = None;
        for (record, entry) in pending.into_iter().rev() {
            self.apply(shard, &mut state, &record, &entry).await?;
            last = Some(record.seqnum);
        }
        let c = &self.inner.counters;
        c.states.fetch_add(1, Ordering::Relaxed);
        c.records_replayed.fetch_add(replayed, Ordering::Relaxed);
        c.replay_max.fetch_max(replayed, Ordering::Relaxed);
        if let Some(last) = last {
            let aux = serde_json::to_vec(&Aux {
                state: state.clone(),
            })
            .expect("aux data serializes");
            // A cache: if it cannot be set, a later replay applies a few more records.
            let _ = ctx.set_aux_data(last, aux).await;
        }
        if let Some(as_of) = as_of {
            self.cache(shard, as_of, &state);
            if at == Seqnum::MAX && state.depth > self.inner.settings.checkpoint_every as u64 {
                self.append_checkpoint(shard, &state).await?;
            }
        }
        Ok(state)
    }

    /// Applies one record of the group's stream of `shard` to `state`: the rule every reader
    /// follows.
    async fn apply(
        &self,
        shard: u32,
        state: &mut State,
        record: &Record,
        entry: &Entry,
    ) -> Result<(), Error> {
        state.position += 1;
        state.depth += 1;
        if let Some(ts_ms) = entry.ts_ms() {
            state.clock_ms = state.clock_ms.max(ts_ms);
        }
        if let Some(key) = entry.key() {
            let what = if matches!(entry, Entry::Pop { .. }) {
                "pop"
            } else {
                "ack"
            };
            if let Some(first) = self.first_keyed(what, key).await? {
                if first.seqnum != record.seqnum {
                    state.last = Outcome::Duplicate {
                        first: first.seqnum,
                    };
                    return Ok(());
                }
            }
        }
        state.last = match entry {
            Entry::Pop {
                visibility_ms,
                max_deliveries,
                ..
            } => {
                self.apply_pop(shard, state, record.seqnum, *visibility_ms, *max_deliveries)
                    .await?
            }
            Entry::Ack { message, pop, .. } => {
                let current = state.in_flight.get(&message.0);
                if current.is_some_and(|f| f.pop == *pop) {
                    state.in_flight.remove(&message.0);
                    state.acked += 1;
                    Outcome::Acked
                } else {
                    Outcome::NotInFlight
                }
            }
            Entry::Requeue { message, .. } => match state.dead.remove(&message.0) {
                Some(_) => {
                    state.ready.insert(message.0, 0);
                    Outcome::Requeued
                }
                None => Outcome::NotDead,
            },
            Entry::Discard { message, .. } => match state.dead.remove(&message.0) {
                Some(_) => Outcome::Discarded,
                None => Outcome::NotDead,
            },
            Entry::Checkpoint { .. } => {
                state.depth = 0;
                Outcome::Nothing
            }
            _ => {
                return Err(Error::Corrupt {
                    seqnum: record.seqnum,
                    reason: "not a record of a group's stream".into(),
                })
            }
        };
        Ok(())
    }

    /// A pop record at `pop`: first, messages whose delivery timed out after their last
    /// allowed delivery become dead letters; then the pop takes the earliest message that
    /// is requeued, or in flight with its delivery timed out, or else the first message
    /// never delivered that was pushed before the pop record.
    async fn apply_pop(
        &self,
        shard: u32,
        state: &mut State,
        pop: Seqnum,
        visibility_ms: u64,
        max_deliveries: u32,
    ) -> Result<Outcome, Error> {
        let clock = state.clock_ms;
        let exhausted: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, f)| f.expires_ms() <= clock && f.deliveries >= max_deliveries)
            .map(|(m, _)| *m)
            .collect();
        for m in exhausted {
            let flight = state.in_flight.remove(&m).expect("listed above");
            state.dead.insert(m, flight.deliveries);
        }
        let again = earliest_again(state, |m, f| {
            f.expires_ms() <= clock || self.fault_takes(m, f)
        });
        let taken = match again {
            Some(taken) => Some(taken),
            None => self.next_push(shard, state, pop).await?.map(|m| (m, 0)),
        };
        let Some((message, before)) = taken else {
            return Ok(Outcome::Empty);
        };
        state.ready.remove(&message);
        let deliveries = before + 1;
        state.in_flight.insert(
            message,
            Flight {
                pop,
                at_ms: clock,
                visibility_ms,
                deliveries,
            },
        );
        state.delivered += 1;
        Ok(Outcome::Delivered {
            message: Seqnum(message),
            deliveries,
        })
    }

    /// The first message of `shard` at or after `state.next` and below `before` that is not
    /// a repeated keyed push; moves `state.next` past it.
    async fn next_push(
        &self,
        shard: u32,
        state: &mut State,
        before: Seqnum,
    ) -> Result<Option<u64>, Error> {
        let tag = push_tag(self.queue_name(), shard);
        loop {
            let Some(record) = self.ctx().read_next(tag, state.next).await? else {
                return Ok(None);
            };
            if record.seqnum >= before {
                return Ok(None);
            }
            state.next = record.seqnum.next();
            if let Entry::Push { key: Some(key), .. } = Entry::decode(&record)?.0 {
                let first = self
                    .ctx()
                    .read_next(key_tag(self.queue_name(), "push", &key), Seqnum::ZERO)
                    .await?;
                if first.is_some_and(|f| f.seqnum != record.seqnum) {
                    continue;
                }
            }
            return Ok(Some(record.seqnum.0));
        }
    }
}

/// A stable spread of handles over shards, from a name.
pub(crate) fn spread(name: &str) -> u64 {
    Tag::named(&["libqueue", "spread", name]).0
}

/// The earliest message a pop takes before any message never delivered: a requeued one, or
/// one in flight that `takes_again` (given the message and its flight) hands out again; with
/// its deliveries so far.
fn earliest_again(state: &State, takes_again: impl Fn(u64, &Flight) -> bool) -> Option<(u64, u32)> {
    let expired = state
        .in_flight
        .iter()
        .find(|(m, f)| takes_again(**m, f))
        .map(|(m, f)| (*m, f.deliveries));
    let ready = state.ready.iter().next().map(|(m, d)| (*m, *d));
    match (expired, ready) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
