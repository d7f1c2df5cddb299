//! A queue over a `Ctx`: opening it (its shard count is fixed by its first opener), pushes
//! (one append each, or one `append_batch` for many), its groups, its length, and the trim
//! that reclaims what every group is done with.

use crate::entry::{
    key_tag, push_tag, queue_tag, registry_tag, trims_tag, Cut, Entry, MessageId, State,
};
use crate::group::{Group, Settings};
use crate::Error;
use bytes::Bytes;
use logbook::{AppendRequest, ReadRange, Seqnum, Tag, BATCH_RECORDS_MAX, READ_RANGE_RECORDS_MAX};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tally_sdk::Ctx;

/// Most shards a queue may have.
pub const SHARDS_MAX: u32 = 256;
/// Longest queue name, group name or idempotency key, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Largest message, in bytes (a record's limit, less room for the record's header).
pub const MESSAGE_BYTES_MAX: usize = logbook::RECORD_BYTES_MAX - 1024;
/// Most messages one `push_batch` carries.
pub const PUSH_BATCH_MAX: usize = BATCH_RECORDS_MAX;

/// Where time comes from: each record carries its writer's time in ms (visibility timeouts
/// are decided from these, never from a reader's clock).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// How to open a queue.
#[derive(Clone)]
pub struct Options {
    /// The shard count: `None` takes the queue's (1 for a new queue); `Some(n)` creates the
    /// queue with `n` shards, or checks that it has them.
    pub shards: Option<u32>,
    /// Where the times in this handle's records come from.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            shards: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl Options {
    /// Options for a queue of `shards` shards.
    pub fn shards(shards: u32) -> Options {
        Options {
            shards: Some(shards),
            ..Options::default()
        }
    }
}

pub(crate) struct Inner {
    pub ctx: Ctx,
    pub name: String,
    pub shards: u32,
    pub clock: Arc<dyn Clock>,
    /// Where the next push goes, round robin.
    next_shard: AtomicU64,
    /// Groups' join records, as read from the registry.
    joins: Mutex<BTreeMap<String, Seqnum>>,
}

/// A named queue in the book of a `Ctx`. Cheap to clone.
///
/// ```
/// # async fn f(ctx: tally_sdk::Ctx) -> Result<(), libqueue::Error> {
/// let queue = libqueue::Queue::open(ctx, "jobs").await?;
/// let id = queue.push("resize photo 7").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    pub(crate) inner: Arc<Inner>,
}

/// What one trim did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// For each shard, the seqnum below which its messages were trimmed (`Seqnum::ZERO`:
    /// none).
    pub messages_below: Vec<Seqnum>,
    /// Group streams cut at a checkpoint.
    pub group_streams_cut: usize,
    /// Checkpoints appended for the next trim to cut at.
    pub checkpoints: usize,
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "a {what} is 1 to {NAME_BYTES_MAX} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

fn check_message(data: &[u8]) -> Result<(), Error> {
    if data.len() > MESSAGE_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "a message is at most {MESSAGE_BYTES_MAX} bytes, got {}",
            data.len()
        )));
    }
    Ok(())
}

impl Queue {
    /// Opens the queue `name` (creating it with one shard if it is new).
    pub async fn open(ctx: Ctx, name: &str) -> Result<Queue, Error> {
        Queue::open_with(ctx, name, Options::default()).await
    }

    /// Opens the queue `name` with `options`.
    pub async fn open_with(ctx: Ctx, name: &str, options: Options) -> Result<Queue, Error> {
        let queue = Queue::open_inner(ctx, name, options, true).await?;
        Ok(queue.expect("a queue is created if it is new"))
    }

    /// Opens the queue `name` if it exists (creating nothing): `None` if no one created it.
    pub async fn find(ctx: Ctx, name: &str, options: Options) -> Result<Option<Queue>, Error> {
        Queue::open_inner(ctx, name, options, false).await
    }

    async fn open_inner(
        ctx: Ctx,
        name: &str,
        options: Options,
        create: bool,
    ) -> Result<Option<Queue>, Error> {
        check_name("queue name", name)?;
        if let Some(n) = options.shards {
            if n == 0 || n > SHARDS_MAX {
                return Err(Error::Invalid(format!(
                    "a queue has 1 to {SHARDS_MAX} shards, got {n}"
                )));
            }
        }
        let registry = read_all(&ctx, registry_tag(name)).await?;
        let mut shards = first_create(&registry);
        if shards.is_none() && !create {
            return Ok(None);
        }
        if shards.is_none() {
            let create = Entry::Create {
                shards: options.shards.unwrap_or(1),
            };
            ctx.append(&[registry_tag(name)], create.encode(None))
                .await?;
            shards = first_create(&read_all(&ctx, registry_tag(name)).await?);
        }
        let shards = shards.expect("a create record was appended");
        if options.shards.is_some_and(|n| n != shards) {
            return Err(Error::Invalid(format!(
                "queue {name} has {shards} shards, not {}",
                options.shards.unwrap_or_default()
            )));
        }
        // Spread the pushes of different handles over the shards.
        let start = crate::group::spread(ctx.invocation_id());
        Ok(Some(Queue {
            inner: Arc::new(Inner {
                ctx,
                name: name.to_string(),
                shards,
                clock: options.clock,
                next_shard: AtomicU64::new(start),
                joins: Mutex::new(BTreeMap::new()),
            }),
        }))
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn shards(&self) -> u32 {
        self.inner.shards
    }

    fn next_shard(&self) -> u32 {
        (self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % u64::from(self.inner.shards))
            as u32
    }

    fn push_request(&self, shard: u32, key: Option<&str>, data: &[u8]) -> AppendRequest {
        let name = &self.inner.name;
        let mut tags = vec![push_tag(name, shard), queue_tag(name)];
        if let Some(key) = key {
            tags.push(key_tag(name, "push", key));
        }
        let entry = Entry::Push {
            ts_ms: self.inner.clock.now_ms(),
            key: key.map(str::to_string),
        };
        AppendRequest::new(tags, entry.encode(Some(data)))
    }

    /// Pushes one message: one append. Returns its id.
    pub async fn push(&self, data: impl Into<Bytes>) -> Result<MessageId, Error> {
        let data = data.into();
        check_message(&data)?;
        let shard = self.next_shard();
        let request = self.push_request(shard, None, &data);
        let seqnum = self.inner.ctx.append(&request.tags, request.data).await?;
        Ok(MessageId { shard, seqnum })
    }

    /// Pushes one message under an idempotency key: every push under `key` is one message,
    /// the first one's, and returns its id (a re-run step pushes nothing new).
    pub async fn push_keyed(&self, key: &str, data: impl Into<Bytes>) -> Result<MessageId, Error> {
        check_name("key", key)?;
        let data = data.into();
        check_message(&data)?;
        if let Some(id) = self.first_push(key).await? {
            return Ok(id);
        }
        let shard = self.next_shard();
        let request = self.push_request(shard, Some(key), &data);
        self.inner.ctx.append(&request.tags, request.data).await?;
        Ok(self.first_push(key).await?.expect("the push was appended"))
    }

    /// The first push under `key`, if any.
    async fn first_push(&self, key: &str) -> Result<Option<MessageId>, Error> {
        let tag = key_tag(&self.inner.name, "push", key);
        let Some(record) = self.inner.ctx.read_next(tag, Seqnum::ZERO).await? else {
            return Ok(None);
        };
        let shard = (0..self.inner.shards)
            .find(|s| record.tags.contains(&push_tag(&self.inner.name, *s)))
            .ok_or_else(|| Error::Corrupt {
                seqnum: record.seqnum,
                reason: "a keyed push of no shard".into(),
            })?;
        Ok(Some(MessageId {
            shard,
            seqnum: record.seqnum,
        }))
    }

    /// Pushes several messages with one `append_batch` (all or none), spread over the
    /// shards; returns their ids in order.
    pub async fn push_batch<I, D>(&self, messages: I) -> Result<Vec<MessageId>, Error>
    where
        I: IntoIterator<Item = D>,
        D: Into<Bytes>,
    {
        let mut requests = Vec::new();
        let mut shards = Vec::new();
        for data in messages {
            let data: Bytes = data.into();
            check_message(&data)?;
            let shard = self.next_shard();
            requests.push(self.push_request(shard, None, &data));
            shards.push(shard);
        }
        if requests.is_empty() || requests.len() > PUSH_BATCH_MAX {
            return Err(Error::Invalid(format!(
                "a batch holds 1 to {PUSH_BATCH_MAX} messages, got {}",
                requests.len()
            )));
        }
        let seqnums = self.inner.ctx.append_batch(requests).await?;
        Ok(shards
            .into_iter()
            .zip(seqnums)
            .map(|(shard, seqnum)| MessageId { shard, seqnum })
            .collect())
    }

    /// The consumer group `name`, created if it is new with the default settings. A new
    /// group sees the messages pushed after it was created: create groups before producing.
    pub async fn group(&self, name: &str) -> Result<Group, Error> {
        self.group_with(name, Settings::default()).await
    }

    /// The consumer group `name` with `settings` (which travel in this handle's records).
    pub async fn group_with(&self, name: &str, settings: Settings) -> Result<Group, Error> {
        check_name("group name", name)?;
        settings.check()?;
        let mut join = self.known_join(name);
        if join.is_none() {
            join = self.read_joins().await?.get(name).copied();
        }
        let join = match join {
            Some(join) => join,
            None => {
                let entry = Entry::Join {
                    group: name.to_string(),
                };
                let tag = registry_tag(&self.inner.name);
                self.inner.ctx.append(&[tag], entry.encode(None)).await?;
                *self
                    .read_joins()
                    .await?
                    .get(name)
                    .expect("the join record was appended")
            }
        };
        Ok(Group::new(self.clone(), name, join, settings))
    }

    /// A group's join record, if this handle has read it.
    fn known_join(&self, name: &str) -> Option<Seqnum> {
        self.inner
            .joins
            .lock()
            .expect("no panics while holding the joins")
            .get(name)
            .copied()
    }

    /// Every group's join record (the first of its name).
    async fn read_joins(&self) -> Result<BTreeMap<String, Seqnum>, Error> {
        let mut joins = BTreeMap::new();
        for (seqnum, entry) in read_all(&self.inner.ctx, registry_tag(&self.inner.name)).await? {
            if let Entry::Join { group } = entry {
                joins.entry(group).or_insert(seqnum);
            }
        }
        *self
            .inner
            .joins
            .lock()
            .expect("no panics while holding the joins") = joins.clone();
        Ok(joins)
    }

    /// The names of the queue's groups.
    pub async fn groups(&self) -> Result<Vec<String>, Error> {
        Ok(self.read_joins().await?.into_keys().collect())
    }

    /// The messages some group has not yet acked (nor dead-lettered): the greatest lag of
    /// any group; with no group, every message in the log.
    pub async fn len(&self) -> Result<u64, Error> {
        let joins = self.read_joins().await?;
        if joins.is_empty() {
            let mut total = 0;
            for shard in 0..self.inner.shards {
                total += self.count_pushes(shard, Seqnum::ZERO).await?;
            }
            return Ok(total);
        }
        let mut most = 0;
        for name in joins.keys() {
            let group = self.group(name).await?;
            most = most.max(group.stats().await?.lag);
        }
        Ok(most)
    }

    /// Whether every group has acked every message (or there is none).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// The messages of `shard` at or after `from`.
    pub(crate) async fn count_pushes(&self, shard: u32, from: Seqnum) -> Result<u64, Error> {
        let tag = push_tag(&self.inner.name, shard);
        let mut count = 0;
        let mut from = from;
        loop {
            let range = ReadRange {
                from,
                to: Seqnum::MAX,
                limit: READ_RANGE_RECORDS_MAX,
            };
            let records = self.inner.ctx.read_range(tag, range).await?;
            let Some(last) = records.last() else {
                return Ok(count);
            };
            from = last.seqnum.next();
            count += records.len() as u64;
        }
    }

    /// Reclaims what every group is done with, one round behind: cuts each group's stream
    /// at the checkpoint the previous trim appended, and each shard's messages below the
    /// lowest message any group still needed at those checkpoints (or below a group's join
    /// record, for a group that had none). Then appends new checkpoints for the next trim.
    /// Run it now and then (every few seconds or thousands of messages); any process may.
    pub async fn trim(&self) -> Result<TrimReport, Error> {
        let ctx = &self.inner.ctx;
        let name = &self.inner.name;
        let joins = self.read_joins().await?;
        let mut report = TrimReport {
            messages_below: vec![Seqnum::ZERO; self.inner.shards as usize],
            ..TrimReport::default()
        };
        if joins.is_empty() {
            return Ok(report);
        }
        let previous = match ctx.check_tail(trims_tag(name)).await? {
            Some(record) => match Entry::decode(&record)?.0 {
                Entry::Trim { cuts } => cuts,
                _ => {
                    return Err(Error::Corrupt {
                        seqnum: record.seqnum,
                        reason: "not a trim record".into(),
                    })
                }
            },
            None => Vec::new(),
        };
        let mut queue_below = Seqnum::MAX;
        for shard in 0..self.inner.shards {
            let mut below = Seqnum::MAX;
            for (group, join) in &joins {
                let cut = previous
                    .iter()
                    .find(|c| &c.group == group && c.shard == shard);
                below = below.min(cut.map_or(*join, |c| c.low));
                if let Some(cut) = cut {
                    ctx.trim(crate::entry::group_tag(name, group, shard), cut.checkpoint)
                        .await?;
                    report.group_streams_cut += 1;
                }
            }
            ctx.trim(push_tag(name, shard), below).await?;
            report.messages_below[shard as usize] = below;
            queue_below = queue_below.min(below);
        }
        ctx.trim(queue_tag(name), queue_below).await?;
        let mut cuts = Vec::new();
        for group in joins.keys() {
            let group = self.group(group).await?;
            for shard in 0..self.inner.shards {
                if let Some((checkpoint, state)) = group.checkpoint(shard).await? {
                    cuts.push(Cut {
                        group: group.name().to_string(),
                        shard,
                        checkpoint,
                        low: State::low(&state),
                    });
                    report.checkpoints += 1;
                }
            }
        }
        let trim = Entry::Trim { cuts };
        let seqnum = ctx.append(&[trims_tag(name)], trim.encode(None)).await?;
        ctx.trim(trims_tag(name), seqnum).await?;
        Ok(report)
    }
}

/// The shard count of the first create record.
fn first_create(registry: &[(Seqnum, Entry)]) -> Option<u32> {
    registry.iter().find_map(|(_, e)| match e {
        Entry::Create { shards } => Some(*shards),
        _ => None,
    })
}

/// Every record of `tag`, decoded, in log order.
async fn read_all(ctx: &Ctx, tag: Tag) -> Result<Vec<(Seqnum, Entry)>, Error> {
    let mut out = Vec::new();
    let mut from = Seqnum::ZERO;
    loop {
        let range = ReadRange {
            from,
            to: Seqnum::MAX,
            limit: READ_RANGE_RECORDS_MAX,
        };
        let records = ctx.read_range(tag, range).await?;
        let Some(last) = records.last() else {
            return Ok(out);
        };
        from = last.seqnum.next();
        for record in records {
            out.push((record.seqnum, Entry::decode(&record)?.0));
        }
    }
}
