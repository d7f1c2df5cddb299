//! Durable invocations: the records that put an invocation in the log, so that it outlives the
//! gateway that accepted it, and the idempotency keys that name one invocation across gateways
//! and restarts.
//!
//! Everything lives in one reserved book, `INVOCATIONS_BOOK`, which the HTTP API refuses to
//! its users. Its streams (tags):
//!
//! - `OWNERS_TAG`: one `Owner` record per gateway process that ran durable invocations; an
//!   owner's number is its record's position in this stream (decided by a conditional append,
//!   so two gateways never get the same number). `RETIRED_TAG`: owners whose invocations are all
//!   finished or taken over, so a recovery pass skips them.
//! - `owner_tag(n)`: every invocation owner `n` accepted or claimed, and every one it finished.
//! - `invocation_tag(id)`: one invocation's history, in order: `Accepted` at position 0, then
//!   `Claimed` by each gateway that took it over from a dead one, then `Finished`. Each record
//!   after the first is a conditional append at the stream's next position, so exactly one
//!   gateway claims a dead owner's invocation, and a result written by a gateway that lost its
//!   invocation meanwhile is refused.
//! - `key_tag(scope)`: the invocations started under one idempotency key (scoped by function
//!   and book). The `Accepted` record of generation `g` is a conditional append at position
//!   `g`: gateways racing on a new key agree on one winner. A key names its latest generation
//!   until that fails or outlives the retention; then a call under it starts generation `g + 1`.
//!
//! An invocation id is 16 hex digits: the owner's number and a counter of that owner. A record is
//! a little-endian `u32` header length, the JSON header (`Entry`), then the payload (the input of
//! an `Accepted`, the output or error message of a `Finished`).

use bytes::{BufMut, Bytes, BytesMut};
use logbook::{BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, OnceCell};

/// The book durable invocations live in; no user may read or write it.
pub const INVOCATIONS_BOOK: BookId = BookId(u32::MAX);

/// `book`, unless it is `INVOCATIONS_BOOK`: why a user may not use it.
pub fn user_book(book: BookId) -> Result<BookId, String> {
    if book == INVOCATIONS_BOOK {
        return Err(format!("book {} is reserved for invocations", book.0));
    }
    Ok(book)
}
const OWNERS_TAG: Tag = Tag(1);
const RETIRED_TAG: Tag = Tag(2);
const OWNER_TAG_BIT: u64 = 1 << 60;
const INVOCATION_TAG_BIT: u64 = 1 << 61;
const KEY_TAG_BIT: u64 = 1 << 63;
/// Owners a log may have, at most: numbers fit in the 28 bits an id leaves them.
const OWNERS_MAX: u64 = 1 << 28;
/// How long an idempotency key names its invocation, unless configured otherwise.
pub const KEY_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// How often a gateway waiting on another gateway's invocation looks at its stream.
const FOLLOW_POLL: Duration = Duration::from_secs(5);

/// The gateways alive now, as invocation records name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// This gateway process (differs on every start).
    pub me: String,
    /// Every gateway alive now, this one included, with its HTTP address (empty if unknown).
    pub live: BTreeMap<String, String>,
}

impl Peers {
    /// A gateway with no peers: `tally up`, tests.
    pub fn alone(me: impl Into<String>) -> Peers {
        let me = me.into();
        Peers {
            live: BTreeMap::from([(me.clone(), String::new())]),
            me,
        }
    }

    /// The name a cluster gateway's records carry: its node id and incarnation.
    pub fn gateway_name(node: u32, incarnation: u64) -> String {
        format!("g{node}.{incarnation:016x}")
    }
}

/// An idempotency key, scoped by function and book, and the generation an invocation holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub scope: String,
    pub generation: u64,
}

/// The header of a record in `INVOCATIONS_BOOK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Owner {
        name: String,
        at_ms: u64,
    },
    Retired {
        owner: u32,
        at_ms: u64,
    },
    /// Payload: the input.
    Accepted {
        id: String,
        function: String,
        book: u32,
        owner: u32,
        key: Option<KeyRef>,
        input_hash: u64,
        /// Retried on failure as the function's config says (asynchronous calls).
        retried: bool,
        depth: u32,
        at_ms: u64,
        /// It starts no earlier than this (ms since the Unix epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before_ms: Option<u64>,
    },
    Claimed {
        id: String,
        owner: u32,
        at_ms: u64,
    },
    /// Payload: the output, or the error message.
    Finished {
        id: String,
        owner: u32,
        ok: bool,
        bad_input: bool,
        unavailable: bool,
        attempts: u32,
        started_at_ms: Option<u64>,
        at_ms: u64,
    },
}

pub fn encode(entry: &Entry, payload: &[u8]) -> Bytes {
    let header = serde_json::to_vec(entry).expect("an entry serializes");
    let mut out = BytesMut::with_capacity(4 + header.len() + payload.len());
    out.put_u32_le(header.len() as u32);
    out.put_slice(&header);
    out.put_slice(payload);
    out.freeze()
}

pub fn decode(data: &Bytes) -> Result<(Entry, Bytes), LogError> {
    let corrupt = |why: &str| LogError::BadArgument(format!("invocation record: {why}"));
    if data.len() < 4 {
        return Err(corrupt("shorter than its header length"));
    }
    let len = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let end = 4usize
        .checked_add(len)
        .filter(|end| *end <= data.len())
        .ok_or_else(|| corrupt("header longer than the record"))?;
    let entry = serde_json::from_slice(&data[4..end]).map_err(|e| corrupt(&e.to_string()))?;
    Ok((entry, data.slice(end..)))
}

/// Bytes a record spends on framing and header, at most, for a given function name and key
/// scope: what is left of `RECORD_BYTES_MAX` is what an input or output may take.
pub fn payload_bytes_max(function: &str, scope: Option<&str>) -> usize {
    const HEADER_SLACK: usize = 512;
    logbook::RECORD_BYTES_MAX
        .saturating_sub(HEADER_SLACK + function.len() + scope.map_or(0, |s| s.len() * 2))
}

fn owner_tag(owner: u32) -> Tag {
    Tag(OWNER_TAG_BIT | owner as u64)
}

/// The stream of invocation `id`, or none for an id no owner could have made.
pub fn invocation_tag(id: &str) -> Option<Tag> {
    if id.len() != 16 {
        return None;
    }
    let n = u64::from_str_radix(id, 16).ok()?;
    (n >> 32 < OWNERS_MAX).then_some(Tag(INVOCATION_TAG_BIT | n))
}

/// A stable 64-bit hash (FNV-1a): the same on every gateway and every build.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn key_tag(scope: &str) -> Tag {
    Tag(KEY_TAG_BIT | (stable_hash(scope.as_bytes()) & ((1 << 62) - 1)))
}

/// The scope of a key: the same key names different invocations in different functions and
/// books.
pub fn key_scope(function: &str, book: BookId, key: &str) -> String {
    format!("{function}\u{0}{}\u{0}{key}", book.0)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One invocation as its stream tells it.
#[derive(Debug, Clone)]
pub struct History {
    pub id: String,
    pub function: String,
    pub book: u32,
    pub key: Option<KeyRef>,
    pub input_hash: u64,
    pub retried: bool,
    pub depth: u32,
    /// It starts no earlier than this (ms since the Unix epoch).
    pub not_before_ms: Option<u64>,
    pub input: Bytes,
    pub created_at_ms: u64,
    /// The owner running it now (the acceptor, or the last claimer).
    pub owner: u32,
    /// Records in its stream: the position the next one takes.
    pub len: u64,
    /// Seqnum of its `Accepted` record.
    pub accepted_at: Seqnum,
    pub finished: Option<Finished>,
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub owner: u32,
    pub ok: bool,
    pub bad_input: bool,
    pub unavailable: bool,
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: u64,
    /// The output, or the error message.
    pub payload: Bytes,
}

/// What the newest generation of a key holds.
pub enum KeyState {
    /// No live invocation: the next one takes this generation.
    Free(u64),
    /// The key names this invocation.
    Taken(Box<History>),
}

/// A new invocation, in the log.
pub struct AcceptedInvocation {
    pub id: String,
    pub seqnum: Seqnum,
}

/// The log side of durable invocations for one gateway process.
pub struct Journal {
    log: Arc<dyn LogBook>,
    peers: watch::Receiver<Peers>,
    /// This process's owner number, registered on first use.
    owner: OnceCell<u32>,
    counter: std::sync::atomic::AtomicU32,
    pub key_retention: Duration,
}

impl Journal {
    pub fn new(log: Arc<dyn LogBook>, peers: watch::Receiver<Peers>) -> Journal {
        Journal {
            log,
            peers,
            owner: OnceCell::new(),
            counter: Default::default(),
            key_retention: KEY_RETENTION_DEFAULT,
        }
    }

    pub fn peers(&self) -> watch::Receiver<Peers> {
        self.peers.clone()
    }

    /// This process's owner number; the first call registers it.
    pub async fn owner(&self) -> Result<u32, LogError> {
        self.owner
            .get_or_try_init(|| async {
                let me = self.peers.borrow().me.clone();
                let entry = Entry::Owner {
                    name: me,
                    at_ms: now_ms(),
                };
                let data = encode(&entry, &[]);
                let mut position = read_all(&*self.log, OWNERS_TAG).await?.len() as u64;
                loop {
                    if position >= OWNERS_MAX {
                        return Err(LogError::Unavailable(
                            "the log has run out of invocation owner numbers".into(),
                        ));
                    }
                    let cond = Cond::at(OWNERS_TAG, position);
                    match self
                        .log
                        .cond_append(INVOCATIONS_BOOK, &[OWNERS_TAG], data.clone(), cond)
                        .await
                    {
                        Ok(_) => return Ok(position as u32),
                        Err(LogError::CondFailed { stream_len, .. }) => position = stream_len,
                        Err(e) => return Err(e),
                    }
                }
            })
            .await
            .copied()
    }

    /// A fresh invocation id of this owner.
    pub async fn next_id(&self) -> Result<String, LogError> {
        let owner = self.owner().await?;
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n == u32::MAX {
            return Err(LogError::Unavailable(
                "this gateway has used up its invocation ids; restart it".into(),
            ));
        }
        Ok(format!("{owner:08x}{n:08x}"))
    }

    /// Appends invocation `id`'s `Accepted` record. With a key, the record takes the key's
    /// generation `key.generation`; `CondFailed` means another call took it first.
    #[allow(clippy::too_many_arguments)]
    pub async fn accept(
        &self,
        id: &str,
        function: &str,
        book: BookId,
        input: &Bytes,
        key: Option<KeyRef>,
        retried: bool,
        depth: u32,
        not_before_ms: Option<u64>,
    ) -> Result<AcceptedInvocation, LogError> {
        let owner = self.owner().await?;
        let inv_tag = invocation_tag(id).expect("ids this journal makes are valid");
        let key_tag = key.as_ref().map(|k| (key_tag(&k.scope), k.generation));
        let entry = Entry::Accepted {
            id: id.to_string(),
            function: function.to_string(),
            book: book.0,
            owner,
            key,
            input_hash: stable_hash(input),
            retried,
            depth,
            at_ms: now_ms(),
            not_before_ms,
        };
        let data = encode(&entry, input);
        let seqnum = match key_tag {
            Some((tag, generation)) => {
                let tags = [owner_tag(owner), inv_tag, tag];
                let cond = Cond::at(tag, generation);
                self.log
                    .cond_append(INVOCATIONS_BOOK, &tags, data, cond)
                    .await?
            }
            None => {
                let tags = [owner_tag(owner), inv_tag];
                self.log.append(INVOCATIONS_BOOK, &tags, data).await?
            }
        };
        Ok(AcceptedInvocation {
            id: id.to_string(),
            seqnum,
        })
    }

    /// Writes invocation `id`'s result at `position` of its stream. `Ok(false)`: another
    /// gateway claimed the invocation first, and its result is not this one.
    pub async fn finish(
        &self,
        id: &str,
        position: u64,
        finished: &Finished,
    ) -> Result<bool, LogError> {
        let inv_tag = invocation_tag(id).expect("ids this journal runs are valid");
        let entry = Entry::Finished {
            id: id.to_string(),
            owner: finished.owner,
            ok: finished.ok,
            bad_input: finished.bad_input,
            unavailable: finished.unavailable,
            attempts: finished.attempts,
            started_at_ms: finished.started_at_ms,
            at_ms: finished.finished_at_ms,
        };
        let data = encode(&entry, &finished.payload);
        let cond = Cond::at(inv_tag, position);
        let tags = [inv_tag, owner_tag(finished.owner)];
        match self
            .log
            .cond_append(INVOCATIONS_BOOK, &tags, data, cond)
            .await
        {
            Ok(_) => Ok(true),
            Err(LogError::CondFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Invocation `id`'s history, if the log has it.
    pub async fn history(&self, id: &str) -> Result<Option<History>, LogError> {
        let Some(tag) = invocation_tag(id) else {
            return Ok(None);
        };
        let records = read_all(&*self.log, tag).await?;
        history_of(&records)
    }

    /// What the newest generation of the key `scope` holds, as of now.
    pub async fn key_state(&self, scope: &str) -> Result<KeyState, LogError> {
        let tag = key_tag(scope);
        let Some(latest) = self
            .log
            .read_prev(INVOCATIONS_BOOK, tag, Seqnum::MAX)
            .await?
        else {
            return Ok(KeyState::Free(0));
        };
        let (entry, _) = decode(&latest.data)?;
        let Entry::Accepted { id, key, .. } = entry else {
            return Err(LogError::BadArgument(
                "a key's stream holds a record other than an invocation".into(),
            ));
        };
        let Some(key) = key.filter(|k| k.scope == scope) else {
            return Err(LogError::Unavailable(format!(
                "idempotency key {scope:?} shares its stream with another key; use another key"
            )));
        };
        let Some(history) = self.history(&id).await? else {
            // Collected between the two reads: it was past the retention.
            return Ok(KeyState::Free(key.generation + 1));
        };
        let expired = history.created_at_ms + (self.key_retention.as_millis() as u64) < now_ms();
        let failed = history.finished.as_ref().is_some_and(|f| !f.ok);
        if expired || failed {
            Ok(KeyState::Free(key.generation + 1))
        } else {
            Ok(KeyState::Taken(Box::new(history)))
        }
    }

    /// Waits until invocation `id` (run by another gateway) finishes; polls its stream.
    pub async fn wait_finished(&self, id: &str) -> Result<History, LogError> {
        let tag = invocation_tag(id)
            .ok_or_else(|| LogError::BadArgument(format!("no invocation {id:?}")))?;
        let mut after = Seqnum::ZERO;
        loop {
            if let Some(history) = self.history(id).await? {
                if history.finished.is_some() {
                    return Ok(history);
                }
            }
            // Wake on the next record of the stream, or look again after a while.
            if let Some(next) = self
                .log
                .read_next_blocking(INVOCATIONS_BOOK, tag, after, FOLLOW_POLL)
                .await?
            {
                after = next.seqnum.next();
            }
        }
    }

    /// Claims invocation `history` from its dead owner: `Ok(Some(position))` is where this
    /// gateway's result goes; `Ok(None)`: another gateway claimed it (or it finished) first.
    pub async fn claim(&self, history: &History) -> Result<Option<u64>, LogError> {
        let owner = self.owner().await?;
        let inv_tag = invocation_tag(&history.id).expect("a logged id is valid");
        let entry = Entry::Claimed {
            id: history.id.clone(),
            owner,
            at_ms: now_ms(),
        };
        let cond = Cond::at(inv_tag, history.len);
        let tags = [owner_tag(owner), inv_tag];
        match self
            .log
            .cond_append(INVOCATIONS_BOOK, &tags, encode(&entry, &[]), cond)
            .await
        {
            Ok(_) => Ok(Some(history.len + 1)),
            Err(LogError::CondFailed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The unfinished invocations of owners that are gone (not alive, not this process, not
    /// retired), whose current runner is gone too. Owners found with nothing left are retired.
    /// `runnable` says which functions this gateway can run; others wait for a later pass.
    /// Returns them, and whether another pass is due (any were found).
    pub async fn orphans(
        &self,
        runnable: impl Fn(&str) -> bool,
    ) -> Result<(Vec<History>, bool), LogError> {
        // Not registered yet: this process has nothing of its own in the log.
        let me = self.owner.get().copied();
        let peers = self.peers.borrow().clone();
        let mut names = BTreeMap::new();
        for (position, record) in read_all(&*self.log, OWNERS_TAG).await?.iter().enumerate() {
            if let (Entry::Owner { name, .. }, _) = decode(&record.data)? {
                names.insert(position as u32, name);
            }
        }
        let mut retired = BTreeSet::new();
        for record in read_all(&*self.log, RETIRED_TAG).await? {
            if let (Entry::Retired { owner, .. }, _) = decode(&record.data)? {
                retired.insert(owner);
            }
        }
        let alive = |owner: u32| {
            Some(owner) == me
                || names
                    .get(&owner)
                    .is_some_and(|name| peers.live.contains_key(name))
        };
        let mut orphans = Vec::new();
        let mut left = false;
        for (&owner, _) in names.iter().filter(|(o, _)| !alive(**o)) {
            if retired.contains(&owner) {
                continue;
            }
            let mut open = Vec::new();
            let mut done = BTreeSet::new();
            for record in read_all(&*self.log, owner_tag(owner)).await? {
                match decode(&record.data)?.0 {
                    Entry::Accepted { id, .. } | Entry::Claimed { id, .. } => open.push(id),
                    Entry::Finished { id, .. } => {
                        done.insert(id);
                    }
                    _ => {}
                }
            }
            let mut owner_left = false;
            for id in open.into_iter().filter(|id| !done.contains(id)) {
                let Some(history) = self.history(&id).await? else {
                    continue;
                };
                if history.finished.is_some() || alive(history.owner) {
                    continue;
                }
                // Left for the next pass either way: claimed by then, or runnable by then.
                owner_left = true;
                if runnable(&history.function) {
                    orphans.push(history);
                }
            }
            if owner_left {
                left = true;
            } else {
                // Everything it had is finished or run by a live gateway.
                let entry = Entry::Retired {
                    owner,
                    at_ms: now_ms(),
                };
                self.log
                    .append(INVOCATIONS_BOOK, &[RETIRED_TAG], encode(&entry, &[]))
                    .await?;
            }
        }
        Ok((orphans, left))
    }
}

/// What one collection of durable invocations did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Invocations that ended longer than the retention ago, trimmed now.
    pub invocations: u64,
    /// Invocations kept: under way, or ended within the retention.
    pub kept: u64,
}

impl Journal {
    /// Trims the invocations that ended longer than the key retention ago: their streams,
    /// their key's stream up to them, and their owners' streams up to the first invocation
    /// kept. `GET /invocations/{id}` then no longer finds one, and its key starts a new
    /// invocation, as it would anyway once the retention is past. Their records leave the log
    /// once no stream shows them.
    pub async fn collect(&self) -> Result<Collected, LogError> {
        use futures::StreamExt;
        let retention = self.key_retention.as_millis() as u64;
        let now = now_ms();
        let owners = read_all(&*self.log, OWNERS_TAG).await?.len() as u32;
        let mut done = Collected::default();
        // Invocation id -> whether it goes (decided once per collection).
        let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
        let mut trims: Vec<(Tag, Seqnum)> = Vec::new();
        for owner in 0..owners {
            let tag = owner_tag(owner);
            let records = read_all(&*self.log, tag).await?;
            let Some(last) = records.last() else {
                continue;
            };
            let mut ids = Vec::with_capacity(records.len());
            // When the invocations this owner finished ended: those within the retention
            // are kept without reading their streams.
            let mut ended_at: BTreeMap<String, u64> = BTreeMap::new();
            for record in &records {
                let id = match decode(&record.data)?.0 {
                    Entry::Accepted { id, .. } | Entry::Claimed { id, .. } => id,
                    Entry::Finished { id, at_ms, .. } => {
                        ended_at.insert(id.clone(), at_ms);
                        id
                    }
                    _ => continue,
                };
                ids.push((record.seqnum, id));
            }
            let mut first_kept: Option<Seqnum> = None;
            for (seqnum, id) in ids {
                let goes = match verdicts.get(&id) {
                    Some(goes) => *goes,
                    None => {
                        let recent = ended_at
                            .get(&id)
                            .is_some_and(|at| at.saturating_add(retention) >= now);
                        let fate = if recent {
                            Fate::Kept
                        } else {
                            self.fate(&id, retention, now, &mut trims).await?
                        };
                        match fate {
                            Fate::Goes => done.invocations += 1,
                            Fate::Kept => done.kept += 1,
                            Fate::Gone => {}
                        }
                        let goes = fate != Fate::Kept;
                        verdicts.insert(id, goes);
                        goes
                    }
                };
                if !goes && first_kept.is_none() {
                    first_kept = Some(seqnum);
                }
            }
            trims.push((tag, first_kept.unwrap_or(last.seqnum.next())));
        }
        // Each trim is an append: many at once share the log's syncs.
        let mut trimming = futures::stream::iter(trims)
            .map(|(tag, below)| self.log.trim(INVOCATIONS_BOOK, tag, below))
            .buffer_unordered(64);
        while let Some(trimmed) = trimming.next().await {
            trimmed?;
        }
        Ok(done)
    }

    /// What becomes of invocation `id` in a collection at `now`: gone already, going (it ended
    /// longer than `retention` ms ago: the trims that take it are added to `trims`), or kept.
    async fn fate(
        &self,
        id: &str,
        retention: u64,
        now: u64,
        trims: &mut Vec<(Tag, Seqnum)>,
    ) -> Result<Fate, LogError> {
        let Some(history) = self.history(id).await? else {
            return Ok(Fate::Gone);
        };
        let ended = history.finished.as_ref().map(|f| f.finished_at_ms);
        if ended.is_none_or(|at| at.saturating_add(retention) >= now) {
            return Ok(Fate::Kept);
        }
        trims.push((invocation_tag(id).expect("a logged id"), Seqnum::MAX));
        if let Some(key) = &history.key {
            // Its generation and those before it; later ones stay.
            trims.push((key_tag(&key.scope), history.accepted_at.next()));
        }
        Ok(Fate::Goes)
    }
}

/// What a collection does with one invocation (`Journal::fate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Collected before.
    Gone,
    /// Ended past the retention: trimmed now.
    Goes,
    /// Under way, or ended within the retention.
    Kept,
}

/// Every record of `tag`'s stream in `INVOCATIONS_BOOK`, in order.
async fn read_all(log: &dyn LogBook, tag: Tag) -> Result<Vec<Record>, LogError> {
    let mut out = Vec::new();
    let mut from = Seqnum::ZERO;
    loop {
        let range = ReadRange {
            from,
            to: Seqnum::MAX,
            limit: logbook::READ_RANGE_RECORDS_MAX,
        };
        let page = log.read_range(INVOCATIONS_BOOK, tag, range).await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        from = last.seqnum.next();
        out.extend(page);
    }
}

/// An invocation's history from its stream's records.
fn history_of(records: &[Record]) -> Result<Option<History>, LogError> {
    let Some(first) = records.first() else {
        return Ok(None);
    };
    let (entry, input) = decode(&first.data)?;
    let Entry::Accepted {
        id,
        function,
        book,
        owner,
        key,
        input_hash,
        retried,
        depth,
        at_ms,
        not_before_ms,
    } = entry
    else {
        return Err(LogError::BadArgument(
            "an invocation's stream starts with a record other than Accepted".into(),
        ));
    };
    let mut history = History {
        id,
        function,
        book,
        key,
        input_hash,
        retried,
        depth,
        not_before_ms,
        input,
        created_at_ms: at_ms,
        owner,
        len: records.len() as u64,
        accepted_at: first.seqnum,
        finished: None,
    };
    for record in &records[1..] {
        match decode(&record.data)? {
            (Entry::Claimed { owner, .. }, _) => history.owner = owner,
            (
                Entry::Finished {
                    owner,
                    ok,
                    bad_input,
                    unavailable,
                    attempts,
                    started_at_ms,
                    at_ms,
                    ..
                },
                payload,
            ) => {
                history.finished = Some(Finished {
                    owner,
                    ok,
                    bad_input,
                    unavailable,
                    attempts,
                    started_at_ms,
                    finished_at_ms: at_ms,
                    payload,
                });
            }
            _ => {}
        }
    }
    Ok(Some(history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_or_lying_ones_are_refused() {
        let entry = Entry::Claimed {
            id: "0000000100000002".into(),
            owner: 1,
            at_ms: 5,
        };
        let data = encode(&entry, b"payload");
        let (back, payload) = decode(&data).unwrap();
        assert_eq!((back, payload.as_ref()), (entry, &b"payload"[..]));
        assert!(decode(&Bytes::from_static(b"\x01")).is_err());
        assert!(decode(&Bytes::from_static(b"\xff\0\0\0{}")).is_err());
    }

    fn finished(ok: bool) -> Finished {
        Finished {
            owner: 0,
            ok,
            bad_input: false,
            unavailable: false,
            attempts: 1,
            started_at_ms: None,
            finished_at_ms: now_ms(),
            payload: Bytes::from_static(b"out"),
        }
    }

    #[tokio::test]
    async fn invocations_ended_past_the_retention_are_collected_and_leave_the_log() {
        let log = Arc::new(logbook::memory::MemoryLogBook::new());
        let (_peers, peers) = watch::channel(Peers::alone("me"));
        let mut journal = Journal::new(log.clone(), peers);
        journal.key_retention = Duration::from_millis(50);
        let input = Bytes::from_static(b"in");
        let accept = |id: String, key: Option<KeyRef>| {
            let (journal, input) = (&journal, input.clone());
            async move {
                let id = id.clone();
                journal
                    .accept(&id, "f", BookId(1), &input, key, false, 0, None)
                    .await
                    .unwrap()
            }
        };
        let key = |generation| KeyRef {
            scope: "f/k".into(),
            generation,
        };
        let keyed = journal.next_id().await.unwrap();
        let plain = journal.next_id().await.unwrap();
        let open = journal.next_id().await.unwrap();
        let a = accept(keyed.clone(), Some(key(0))).await;
        let b = accept(plain.clone(), None).await;
        accept(open.clone(), None).await;
        assert!(journal.finish(&keyed, 1, &finished(true)).await.unwrap());
        assert!(journal.finish(&plain, 1, &finished(false)).await.unwrap());
        let all = |log: Arc<logbook::memory::MemoryLogBook>| async move {
            let range = ReadRange {
                from: Seqnum::ZERO,
                to: Seqnum::MAX,
                limit: 1000,
            };
            let records = log.read_range(INVOCATIONS_BOOK, Tag::ANY, range).await;
            records
                .unwrap()
                .iter()
                .map(|r| r.seqnum)
                .collect::<Vec<_>>()
        };
        assert!(all(log.clone()).await.contains(&a.seqnum));
        // Within the retention nothing goes.
        let kept = journal.collect().await.unwrap();
        assert_eq!(
            kept,
            Collected {
                invocations: 0,
                kept: 3
            }
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let done = journal.collect().await.unwrap();
        assert_eq!(
            done,
            Collected {
                invocations: 2,
                kept: 1
            }
        );
        assert!(journal.history(&keyed).await.unwrap().is_none());
        assert!(journal.history(&plain).await.unwrap().is_none());
        assert!(journal.history(&open).await.unwrap().is_some());
        // Their records left the book (every stream of their tags is trimmed past them).
        let left = all(log.clone()).await;
        assert!(
            !left.contains(&a.seqnum) && !left.contains(&b.seqnum),
            "{left:?}"
        );
        // The key starts a new invocation, one generation on: its stream kept its length.
        assert!(matches!(
            journal.key_state("f/k").await.unwrap(),
            KeyState::Free(0)
        ));
        let again = journal.next_id().await.unwrap();
        let refused = journal
            .accept(&again, "f", BookId(1), &input, Some(key(0)), false, 0, None)
            .await;
        assert!(matches!(
            refused,
            Err(LogError::CondFailed { stream_len: 1, .. })
        ));
        accept(again.clone(), Some(key(1))).await;
        assert!(matches!(
            journal.key_state("f/k").await.unwrap(),
            KeyState::Taken(h) if h.id == again
        ));
        // The one under way stays, and a second pass changes nothing.
        assert_eq!(
            journal.collect().await.unwrap(),
            Collected {
                invocations: 0,
                kept: 2
            }
        );
    }

    #[test]
    fn ids_map_to_disjoint_tags_and_bad_ids_to_none() {
        let tag = invocation_tag("0000000300000007").unwrap();
        assert_eq!(tag, Tag(INVOCATION_TAG_BIT | (3 << 32) | 7));
        assert_ne!(tag, owner_tag(3));
        assert!(
            invocation_tag("ffffffff00000000").is_none(),
            "owner beyond 2^28"
        );
        assert!(invocation_tag("xyz").is_none());
        assert!(invocation_tag("000000030000000g").is_none());
        let key = key_tag("f\u{0}0\u{0}k");
        assert!(key.0 & KEY_TAG_BIT != 0 && key != Tag::RESERVED);
        assert_eq!(
            stable_hash(b"a"),
            0xaf63_dc4c_8601_ec8c,
            "FNV-1a, never changes"
        );
    }
}
