//! The store: objects over a `Ctx`, and the replay that turns an object's stream into its
//! document at a seqnum, deciding the transactions in it on the way.
//!
//! An object's view after seqnum `s` is found by walking its stream back from `s` to a
//! starting point (a record whose aux data holds the object's view after it, a checkpoint, or
//! the stream's start), then applying the records above it in log order. A transaction record
//! met on the way is decided by the rule every reader applies (`decide_commit`,
//! `decide_oneshot`), which reads other objects at the seqnum just below the record: the
//! recursion only goes down the log, so it ends. Decisions are kept in memory and in the
//! record's aux data, views in memory (the newest per object) and in aux data; all are
//! caches. Each cached view knows its depth, the records replayed on top of the newest
//! checkpoint to reach it; whoever computes a view deeper than `Settings::checkpoint_every`
//! appends a checkpoint, so a read with no cache at all replays about that many records.

use crate::entry::{
    base_tag, key_tag, marks_tag, object_tag, Aux, Cached, Commit, Decision, Entry, ObjectId, View,
};
use crate::history::{self, Change, ChangeKind, History, HISTORY_BYTES_MAX, HISTORY_LIMIT_MAX};
use crate::oneshot::{Evaluated, OneShot};
use crate::path::{self, Op};
use crate::txn::{Isolation, Outcome, Transaction};
use crate::Error;
use bytes::Bytes;
use logbook::{BookId, ReadRange, Record, Seqnum, Tag, READ_RANGE_RECORDS_MAX, RECORD_BYTES_MAX};
use serde_json::{Number, Value};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::Ctx;

/// Most objects one transaction writes: one tag per written object on its record.
pub const TXN_OBJECTS_MAX: usize = logbook::TAGS_PER_RECORD_MAX;
/// Most operations one `apply` carries.
pub const OPS_PER_WRITE_MAX: usize = 256;
/// Most transaction decisions a store keeps in memory (the oldest go first).
pub const DECISIONS_CACHED_MAX: usize = 65_536;
/// Most views a store keeps in memory, over all objects.
pub const VIEWS_CACHED_MAX: usize = 16_384;
/// Most views of one object a store keeps in memory: its newest, and the ones before it that
/// transactions still on their way need (each is evaluated just below its own record).
pub const VERSIONS_CACHED_MAX: usize = 16;
/// Most parsed records a store keeps in memory (the oldest go first).
pub const RECORDS_CACHED_MAX: usize = 8_192;
/// Longest key prefix (`Store::keyed`), in bytes.
pub const KEY_PREFIX_BYTES_MAX: usize = 512;

/// A store's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A view that took more records than this on top of the newest checkpoint gets a
    /// checkpoint appended, so a read with no cached view replays about this many at most.
    pub checkpoint_every: usize,
    /// Largest document, in bytes of JSON. Each write carries the limit it was made under.
    pub document_bytes_max: usize,
    /// How long an interactive transaction surely reads its snapshot: `collect` never trims
    /// versions newer than this (whatever retention it is given). An older transaction keeps
    /// what it read, but reading an object it had not read may fail with
    /// `Error::SnapshotCollected`.
    pub transaction_lifetime: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            checkpoint_every: 64,
            document_bytes_max: 64 * 1024,
            transaction_lifetime: Duration::from_secs(60),
        }
    }
}

impl Settings {
    fn check(&self) -> Result<(), Error> {
        if self.checkpoint_every == 0 || self.checkpoint_every > READ_RANGE_RECORDS_MAX {
            return Err(Error::Invalid(format!(
                "checkpoint_every is 1 to {READ_RANGE_RECORDS_MAX}, got {}",
                self.checkpoint_every
            )));
        }
        // A checkpoint holds one document and a commit record may hold several.
        let max = RECORD_BYTES_MAX / 4;
        if self.document_bytes_max == 0 || self.document_bytes_max > max {
            return Err(Error::Invalid(format!(
                "document_bytes_max is 1 to {max}, got {}",
                self.document_bytes_max
            )));
        }
        Ok(())
    }
}

/// What a store has done since it was made: how much replay its reads cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Views computed (each read of an object, and each one a decision needed).
    pub views: u64,
    /// Records replayed to compute them.
    pub records_replayed: u64,
    /// The most records one view replayed.
    pub replay_max: u64,
    /// Checkpoints appended.
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    views: AtomicU64,
    records_replayed: AtomicU64,
    replay_max: AtomicU64,
    checkpoints: AtomicU64,
}

/// What the stores of one book share: settings, caches and counters.
struct Shared {
    settings: Settings,
    decisions: Mutex<BTreeMap<Seqnum, Decision>>,
    views: Mutex<Views>,
    /// Records parsed lately, by seqnum (records never change).
    records: Mutex<BTreeMap<Seqnum, Arc<Entry>>>,
    counters: Counters,
}

/// The newest views computed of each object, by the seqnum each is as of: every record of
/// the object at or below it is in the view.
#[derive(Default)]
struct Views {
    objects: BTreeMap<ObjectId, BTreeMap<Seqnum, Cached>>,
    /// Views kept, over all objects.
    count: usize,
    /// Views in the order they were kept (some since given up), oldest first.
    order: VecDeque<(ObjectId, Seqnum)>,
}

impl Views {
    /// Keeps `view`, as of `as_of`, among the object's views: its newest
    /// `VERSIONS_CACHED_MAX`, and `limit` over all objects.
    fn keep(&mut self, object: &ObjectId, as_of: Seqnum, view: Cached, limit: usize) {
        let Views {
            objects,
            count,
            order,
        } = self;
        // Looked up before an insert: most views kept are of objects kept already.
        let versions = match objects.get_mut(object) {
            Some(versions) => versions,
            None => objects.entry(object.clone()).or_default(),
        };
        if versions.insert(as_of, view).is_none() {
            *count += 1;
            order.push_back((object.clone(), as_of));
        }
        if versions.len() > VERSIONS_CACHED_MAX {
            versions.pop_first();
            *count -= 1;
        }
        // The view kept longest ago goes first: an object in use keeps its newest views.
        // `order` also holds views already gone (an object's oldest, given up above); it is
        // kept at most twice the limit long.
        while *count > limit || order.len() > 2 * limit {
            let Some((of, as_of)) = order.pop_front() else {
                break;
            };
            if let Some(versions) = objects.get_mut(&of) {
                if versions.remove(&as_of).is_some() {
                    *count -= 1;
                    if versions.is_empty() {
                        objects.remove(&of);
                    }
                }
            }
        }
    }
}

/// Durable JSON objects in the book of a `Ctx`. Cheap to clone; clones share their caches.
/// A function that runs many times makes its stores with one `Stores`, so that each call
/// starts from the views and decisions the calls before it computed.
///
/// ```
/// # async fn f(ctx: tally_sdk::Ctx) -> Result<(), libstore::Error> {
/// let store = libstore::Store::new(ctx);
/// let visits = store.collection("pages").object("home");
/// visits.fetch_add("/visits", 1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    ctx: Ctx,
    shared: Arc<Shared>,
    /// A keyed store's key prefix and the number of its next operation.
    keys: Option<Arc<Keys>>,
}

struct Keys {
    prefix: String,
    next: AtomicU64,
}

impl Shared {
    fn new(settings: Settings) -> Shared {
        Shared {
            settings,
            decisions: Mutex::new(BTreeMap::new()),
            views: Mutex::new(Views::default()),
            records: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
        }
    }
}

/// Books whose caches a `Stores` keeps; past it the lowest book's are dropped.
pub const BOOKS_CACHED_MAX: usize = 1024;

/// Makes stores over the `Ctx` of many calls that share their caches per book: a function
/// registered once and called many times keeps one `Stores` and asks it for each call's store,
/// so a call reads the views and decisions earlier calls computed instead of replaying the
/// objects' streams again. Cheap to clone; clones share everything.
///
/// ```
/// # async fn f(ctxs: Vec<tally_sdk::Ctx>) -> Result<(), libstore::Error> {
/// let stores = libstore::Stores::new();
/// for ctx in ctxs {
///     // In a function: `let store = stores.of(ctx);` at the top of each call.
///     let store = stores.of(ctx);
///     store.collection("pages").object("home").fetch_add("/visits", 1).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Stores {
    settings: Settings,
    books: Arc<Mutex<BTreeMap<BookId, Arc<Shared>>>>,
}

impl Stores {
    /// Stores with the default settings.
    pub fn new() -> Stores {
        Stores::default()
    }

    /// Stores with `settings`.
    pub fn with_settings(settings: Settings) -> Result<Stores, Error> {
        settings.check()?;
        Ok(Stores {
            settings,
            books: Arc::default(),
        })
    }

    /// The books this made stores for (and still keeps caches of), lowest first.
    pub fn books(&self) -> Vec<BookId> {
        let books = self.books.lock().expect("no panics under the books lock");
        books.keys().copied().collect()
    }

    /// The store over `ctx`, sharing caches with every store this made for `ctx`'s book.
    pub fn of(&self, ctx: Ctx) -> Store {
        let mut books = self.books.lock().expect("no panics under the books lock");
        let book = ctx.book();
        let shared = match books.get(&book) {
            Some(shared) => shared.clone(),
            None => {
                if books.len() >= BOOKS_CACHED_MAX {
                    books.pop_first();
                }
                let shared = Arc::new(Shared::new(self.settings));
                books.insert(book, shared.clone());
                shared
            }
        };
        Store {
            ctx,
            shared,
            keys: None,
        }
    }
}

/// What one collection did (`Store::collect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Object streams are trimmed below this seqnum (0: nothing is trimmed yet).
    pub horizon: Seqnum,
    /// Objects whose stream this collection trimmed (each got a base).
    pub objects: u64,
    /// Records of libstore this collection trimmed from every stream they were in.
    pub records: u64,
}

/// A boxed future: view and decision computations recurse down the log.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

impl Store {
    /// A store over `ctx`'s book with the default settings.
    pub fn new(ctx: Ctx) -> Store {
        Store::with_settings(ctx, Settings::default()).expect("the default settings are valid")
    }

    /// A store with `settings`.
    pub fn with_settings(ctx: Ctx, settings: Settings) -> Result<Store, Error> {
        settings.check()?;
        Ok(Store {
            ctx,
            shared: Arc::new(Shared::new(settings)),
            keys: None,
        })
    }

    /// The same store (sharing its caches) whose writes, one-shot transactions and
    /// interactive transactions carry keys `prefix#0`, `prefix#1`, ... in the order they
    /// start: of the records with one key, every reader applies only the first, and a later
    /// one answers the first one's result. Made for a workflow step that may run again
    /// (`Flow::step_with_key` in libflow gives it a key that does not change between runs).
    ///
    /// ```
    /// # async fn f(ctx: tally_sdk::Ctx) -> Result<(), libstore::Error> {
    /// let store = libstore::Store::new(ctx);
    /// let once = store.keyed("instance-7/step-3");
    /// once.collection("pages").object("home").fetch_add("/visits", 1).await?;
    /// // Run again with the same prefix, the write changes nothing and answers the same.
    /// let again = store.keyed("instance-7/step-3");
    /// again.collection("pages").object("home").fetch_add("/visits", 1).await?;
    /// assert_eq!(store.collection("pages").object("home").get("/visits").await?,
    ///            Some(serde_json::json!(1)));
    /// # Ok(()) }
    /// ```
    pub fn keyed(&self, prefix: &str) -> Store {
        Store {
            ctx: self.ctx.clone(),
            shared: self.shared.clone(),
            keys: Some(Arc::new(Keys {
                prefix: prefix.to_string(),
                next: AtomicU64::new(0),
            })),
        }
    }

    /// The key of the next operation of a keyed store (none for a store without keys).
    pub(crate) fn next_key(&self) -> Result<Option<String>, Error> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        if keys.prefix.is_empty() || keys.prefix.len() > KEY_PREFIX_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "a key prefix is 1 to {KEY_PREFIX_BYTES_MAX} bytes, got {}",
                keys.prefix.len()
            )));
        }
        let n = keys.next.fetch_add(1, Ordering::Relaxed);
        Ok(Some(format!("{}#{n}", keys.prefix)))
    }

    /// The store's settings.
    pub fn settings(&self) -> Settings {
        self.shared.settings
    }

    /// What the store has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            views: c.views.load(Ordering::Relaxed),
            records_replayed: c.records_replayed.load(Ordering::Relaxed),
            replay_max: c.replay_max.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// The collection `name`.
    pub fn collection(&self, name: &str) -> Collection {
        Collection {
            store: self.clone(),
            name: name.into(),
        }
    }

    /// Begins a serializable interactive transaction at the log's tail.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        self.begin_with(Isolation::Serializable).await
    }

    /// Begins an interactive transaction with `isolation` at the log's tail.
    pub async fn begin_with(&self, isolation: Isolation) -> Result<Transaction, Error> {
        // The key is taken before any wait, so operations started together number alike in
        // every run.
        let key = self.next_key()?;
        let snapshot = self
            .ctx
            .check_tail(Tag::ANY)
            .await?
            .map_or(Seqnum::ZERO, |r| r.seqnum);
        Ok(Transaction::new(self.clone(), snapshot, isolation, key))
    }

    /// Runs a one-shot transaction: appends it, then evaluates it at its position. From a
    /// keyed store, a transaction whose key was used before answers the first one's outcome.
    pub async fn run(&self, transaction: &OneShot) -> Result<Outcome, Error> {
        transaction.check()?;
        let key = self.next_key()?;
        let document_bytes_max = self.shared.settings.document_bytes_max;
        for w in &transaction.writes {
            w.op.check_value_size(document_bytes_max)?;
        }
        let mut tags: Vec<Tag> = transaction.written().into_iter().map(object_tag).collect();
        tags.extend(key.as_deref().map(key_tag));
        check_tags(&tags)?;
        let entry = Entry::OneShot {
            transaction: transaction.clone(),
            document_bytes_max,
            key,
        };
        let (seqnum, entry) = self.append(&tags, entry).await?;
        if let Some(key) = entry.key() {
            if let Some(first) = self.first_of_key(seqnum, key).await? {
                self.remember(seqnum, Decision::Duplicate(first));
                self.add_aux((seqnum, None), |a| {
                    a.decision = Some(Decision::Duplicate(first))
                })
                .await;
                return self.outcome_of_first(first, &entry).await;
            }
        }
        self.evaluate_at(seqnum, transaction, document_bytes_max)
            .await
    }

    /// Evaluates the one-shot transaction at `seqnum` (not a duplicate), caches its views and
    /// decision, and returns its outcome.
    async fn evaluate_at(
        &self,
        seqnum: Seqnum,
        transaction: &OneShot,
        document_bytes_max: usize,
    ) -> Result<Outcome, Error> {
        let (evaluated, depths) = self
            .evaluate_oneshot(seqnum, transaction, document_bytes_max, None)
            .await?;
        let mut aux = Aux::default();
        let outcome = match evaluated {
            Ok(Evaluated { reads, written }) => {
                for (object, doc) in written {
                    // Evaluated with no view known, it computed every object's.
                    let depth = depths.get(&object).expect("a written object was read") + 1;
                    let view = View {
                        doc,
                        version: seqnum,
                    };
                    let cached = Cached { view, depth };
                    self.cache_view(&object, seqnum, cached.clone());
                    aux.put_view(&object, cached);
                }
                aux.decision = Some(Decision::Committed);
                Outcome::Committed {
                    seqnum: Some(seqnum),
                    reads,
                }
            }
            Err(reason) => {
                aux.decision = Some(Decision::Aborted(reason.clone()));
                Outcome::Aborted {
                    seqnum: Some(seqnum),
                    reason,
                }
            }
        };
        self.remember(seqnum, aux.decision.clone().expect("set above"));
        self.set_aux(seqnum, &aux).await;
        Ok(outcome)
    }

    /// Appends an interactive transaction's commit record and decides it.
    pub(crate) async fn commit(&self, commit: Commit) -> Result<Outcome, Error> {
        let mut tags: Vec<Tag> = commit
            .writes
            .iter()
            .map(|w| object_tag(&w.object))
            .collect();
        tags.extend(commit.key.as_deref().map(key_tag));
        check_tags(&tags)?;
        let (seqnum, entry) = self.append(&tags, Entry::Commit(commit)).await?;
        let Entry::Commit(commit) = &*entry else {
            unreachable!("made a commit above")
        };
        // Decided here unless a reader of the object got there first; either way the record's
        // aux data is set once, with the decision and the views after it.
        let (decision, mut depths) = match self.remembered(seqnum) {
            Some(decision) => (decision, BTreeMap::new()),
            None => {
                let (decision, depths) = self.validate(seqnum, commit, None).await?;
                self.remember(seqnum, decision.clone());
                (decision, depths)
            }
        };
        let mut aux = Aux {
            decision: Some(decision.clone()),
            ..Aux::default()
        };
        if decision == Decision::Committed {
            for w in &commit.writes {
                let depth = match depths.remove(&w.object) {
                    Some(depth) => depth,
                    None => self.view_at(&w.object, below(seqnum)).await?.depth,
                } + 1;
                let view = View {
                    doc: w.doc.clone(),
                    version: seqnum,
                };
                let cached = Cached { view, depth };
                self.cache_view(&w.object, seqnum, cached.clone());
                aux.put_view(&w.object, cached);
            }
        }
        self.set_aux(seqnum, &aux).await;
        match decision {
            Decision::Committed => Ok(Outcome::Committed {
                seqnum: Some(seqnum),
                reads: Vec::new(),
            }),
            Decision::Aborted(reason) => Ok(Outcome::Aborted {
                seqnum: Some(seqnum),
                reason,
            }),
            Decision::Duplicate(first) => self.outcome_of_first(first, &entry).await,
        }
    }

    /// The outcome of a keyed transaction that wrote nothing (and appends nothing): its key's
    /// first commit's, if the log has one (the same step, run before), else committed.
    pub(crate) async fn commit_nothing(&self, key: Option<&str>) -> Result<Outcome, Error> {
        let nothing = Outcome::Committed {
            seqnum: None,
            reads: Vec::new(),
        };
        let Some(key) = key else {
            return Ok(nothing);
        };
        match self.first_of_key(Seqnum::MAX, key).await? {
            Some(first) => {
                let probe = Entry::Commit(Commit {
                    snapshot: Seqnum::ZERO,
                    isolation: Isolation::Serializable,
                    touched: Vec::new(),
                    writes: Vec::new(),
                    key: Some(key.to_string()),
                });
                self.outcome_of_first(first, &probe).await
            }
            None => Ok(nothing),
        }
    }

    /// Appends one write (several ops on one object), then reads the object up to it. From
    /// a keyed store, a write whose key was used before changes nothing and answers the
    /// first one's results.
    pub(crate) async fn write(&self, object: &ObjectId, ops: Vec<Op>) -> Result<Vec<Value>, Error> {
        let key = self.next_key()?;
        object.check()?;
        if ops.is_empty() || ops.len() > OPS_PER_WRITE_MAX {
            return Err(Error::Invalid(format!(
                "a write carries 1 to {OPS_PER_WRITE_MAX} operations, got {}",
                ops.len()
            )));
        }
        let document_bytes_max = self.shared.settings.document_bytes_max;
        for op in &ops {
            op.check()?;
            op.check_value_size(document_bytes_max)?;
        }
        let mut tags = vec![object_tag(object)];
        tags.extend(key.as_deref().map(key_tag));
        let entry = Entry::Ops {
            object: object.clone(),
            ops,
            document_bytes_max,
            key,
        };
        let (seqnum, entry) = self.append(&tags, entry).await?;
        let first = match entry.key() {
            Some(key) => self.first_of_key(seqnum, key).await?,
            None => None,
        };
        let Entry::Ops { ops, .. } = &*entry else {
            unreachable!("made ops above")
        };
        let before = self.view_at(object, below(seqnum)).await?;
        let (view, result) = match first {
            Some(first) => {
                self.remember(seqnum, Decision::Duplicate(first));
                (before.view, self.results_of_first(first, &entry).await)
            }
            None => {
                let result = path::apply_all(&before.view.doc, ops, document_bytes_max);
                let view = match &result {
                    Ok((doc, _)) => View {
                        doc: doc.clone(),
                        version: seqnum,
                    },
                    Err(_) => before.view,
                };
                (view, result.map(|(_, results)| results))
            }
        };
        let after = Cached {
            view,
            depth: before.depth + 1,
        };
        let mut aux = Aux::default();
        aux.put_view(object, after.clone());
        aux.decision = first.map(Decision::Duplicate);
        self.set_aux(seqnum, &aux).await;
        self.cache_view(object, seqnum, after);
        result
    }

    /// The first record of `key` below `seqnum` that a record at `seqnum` looks for: at or
    /// above the horizon of the newest collection's mark below `seqnum`. Its seqnum, if any.
    async fn first_of_key(&self, seqnum: Seqnum, key: &str) -> Result<Option<Seqnum>, Error> {
        let horizon = self.horizon_below(seqnum).await?;
        let tag = key_tag(key);
        let mut from = horizon;
        while from < seqnum {
            let range = ReadRange {
                from,
                to: seqnum,
                limit: READ_RANGE_RECORDS_MAX,
            };
            let records = self.ctx.read_range(tag, range).await?;
            let Some(last) = records.last() else { break };
            from = last.seqnum.next();
            for record in records {
                // Another key may share the tag: the record names its own.
                if parse(&record)?.key() == Some(key) {
                    return Ok(Some(record.seqnum));
                }
            }
        }
        Ok(None)
    }

    /// The first record of a key, and whether `duplicate` is the same kind of operation on
    /// the same objects (else the key was reused: `Error::KeyReused`).
    async fn first_record(
        &self,
        first: Seqnum,
        duplicate: &Entry,
    ) -> Result<(Record, Entry), Error> {
        let key = duplicate.key().expect("a duplicate is keyed");
        let first = self.original(first, key).await?;
        let record = self
            .ctx
            .read_next(key_tag(key), first)
            .await?
            .filter(|r| r.seqnum == first)
            .ok_or(Error::SnapshotCollected {
                snapshot: first,
                horizon: first.next(),
            })?;
        let entry = parse(&record)?;
        let same = match (&entry, duplicate) {
            (
                Entry::Ops {
                    object: a, ops: x, ..
                },
                Entry::Ops {
                    object: b, ops: y, ..
                },
            ) => {
                a == b
                    && x.len() == y.len()
                    && x.iter().zip(y).all(|(x, y)| {
                        std::mem::discriminant(x) == std::mem::discriminant(y)
                            && x.path() == y.path()
                    })
            }
            (Entry::OneShot { .. }, Entry::OneShot { .. }) => true,
            (Entry::Commit(_), Entry::Commit(_)) => true,
            _ => false,
        };
        if !same {
            return Err(Error::KeyReused {
                key: key.to_string(),
                seqnum: first,
            });
        }
        Ok((record, entry))
    }

    /// The horizon declared by the newest collection's mark below `seqnum` (0: none).
    async fn horizon_below(&self, seqnum: Seqnum) -> Result<Seqnum, Error> {
        Ok(
            match self.ctx.read_prev(marks_tag(), below(seqnum)).await? {
                Some(record) => match parse(&record)? {
                    Entry::Mark { horizon, .. } => horizon,
                    _ => Seqnum::ZERO,
                },
                None => Seqnum::ZERO,
            },
        )
    }

    /// The record a duplicate's answer comes from: `first`, or if `first` is itself a
    /// duplicate (of a record below the horizon its reader looked from), the one it repeats.
    async fn original(&self, mut first: Seqnum, key: &str) -> Result<Seqnum, Error> {
        loop {
            let of = match self.remembered(first) {
                Some(Decision::Duplicate(of)) => Some(of),
                Some(_) => None,
                None => self.first_of_key(first, key).await?,
            };
            let Some(of) = of else {
                return Ok(first);
            };
            // A collection may have trimmed the record it repeats: then its answer is its
            // own, as if it had run at its position.
            if of < self.horizon_below(Seqnum::MAX).await? {
                return Ok(first);
            }
            first = of;
        }
    }

    /// A duplicate write's answer: what its key's first write returned.
    async fn results_of_first(
        &self,
        first: Seqnum,
        duplicate: &Entry,
    ) -> Result<Vec<Value>, Error> {
        let (
            record,
            Entry::Ops {
                object,
                ops,
                document_bytes_max,
                ..
            },
        ) = self.first_record(first, duplicate).await?
        else {
            unreachable!("first_record checks the kind")
        };
        let before = self.view(&object, below(record.seqnum)).await?;
        path::apply_all(&before.doc, &ops, document_bytes_max).map(|(_, results)| results)
    }

    /// A duplicate transaction's answer: its key's first transaction's outcome.
    async fn outcome_of_first(&self, first: Seqnum, duplicate: &Entry) -> Result<Outcome, Error> {
        let (record, entry) = self.first_record(first, duplicate).await?;
        let first = record.seqnum;
        match entry {
            Entry::OneShot {
                transaction,
                document_bytes_max,
                ..
            } => {
                let (evaluated, _) = self
                    .evaluate_oneshot(first, &transaction, document_bytes_max, None)
                    .await?;
                Ok(match evaluated {
                    Ok(Evaluated { reads, .. }) => Outcome::Committed {
                        seqnum: Some(first),
                        reads,
                    },
                    Err(reason) => Outcome::Aborted {
                        seqnum: Some(first),
                        reason,
                    },
                })
            }
            Entry::Commit(commit) => Ok(
                match self
                    .decide_commit(first, record.aux.as_ref(), &commit, None)
                    .await?
                {
                    Decision::Committed => Outcome::Committed {
                        seqnum: Some(first),
                        reads: Vec::new(),
                    },
                    Decision::Aborted(reason) => Outcome::Aborted {
                        seqnum: Some(first),
                        reason,
                    },
                    Decision::Duplicate(of) => {
                        return Err(Error::Corrupt {
                            seqnum: first,
                            reason: format!("a key's first record is decided a duplicate of {of}"),
                        })
                    }
                },
            ),
            _ => unreachable!("first_record checks the kind"),
        }
    }

    /// Appends `entry` and keeps it among the parsed records, so that no reader of this
    /// store parses it again.
    async fn append(&self, tags: &[Tag], entry: Entry) -> Result<(Seqnum, Arc<Entry>), Error> {
        let data = serde_json::to_vec(&entry).expect("an entry serializes");
        if data.len() > RECORD_BYTES_MAX {
            return Err(Error::TooLarge {
                what: "the record",
                bytes: data.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let seqnum = self.ctx.append(tags, data).await?;
        let entry = Arc::new(entry);
        self.keep_entry(seqnum, entry.clone());
        Ok((seqnum, entry))
    }

    /// Attaches `aux` to a record. A cache: if it cannot be set, reads replay a little more.
    async fn set_aux(&self, seqnum: Seqnum, aux: &Aux) {
        let data = serde_json::to_vec(aux).expect("aux data serializes");
        let _ = self.ctx.set_aux_data(seqnum, data).await;
    }

    /// Adds to a record's aux data (as read with it) and sets it.
    async fn add_aux(&self, record: (Seqnum, Option<&Bytes>), add: impl FnOnce(&mut Aux)) {
        let mut aux = Aux::of(record.1);
        add(&mut aux);
        self.set_aux(record.0, &aux).await;
    }

    fn remember(&self, seqnum: Seqnum, decision: Decision) {
        let mut decisions = self
            .shared
            .decisions
            .lock()
            .expect("no panics while holding the decisions");
        decisions.insert(seqnum, decision);
        while decisions.len() > DECISIONS_CACHED_MAX {
            decisions.pop_first();
        }
    }

    fn remembered(&self, seqnum: Seqnum) -> Option<Decision> {
        self.shared
            .decisions
            .lock()
            .expect("no panics while holding the decisions")
            .get(&seqnum)
            .cloned()
    }

    /// Keeps `view`, as of `as_of`, among the object's views in memory (`Views::keep`, with
    /// `VIEWS_CACHED_MAX` over all objects).
    fn cache_view(&self, object: &ObjectId, as_of: Seqnum, view: Cached) {
        let mut views = self
            .shared
            .views
            .lock()
            .expect("no panics while holding the views");
        views.keep(object, as_of, view, VIEWS_CACHED_MAX);
    }

    /// A kept view of the object as of a seqnum in `[newest, at]`: `newest` being the
    /// object's newest record at or below `at`, the view is then the one at `at`.
    fn cached_view(
        &self,
        object: &ObjectId,
        newest: Seqnum,
        at: Seqnum,
    ) -> Option<(Seqnum, Cached)> {
        let views = self
            .shared
            .views
            .lock()
            .expect("no panics while holding the views");
        let (as_of, view) = views.objects.get(object)?.range(..=at).next_back()?;
        (newest <= *as_of).then(|| (*as_of, view.clone()))
    }

    /// The entry a record holds, parsed once and then kept a while.
    fn entry(&self, record: &Record) -> Result<Arc<Entry>, Error> {
        let kept = self
            .shared
            .records
            .lock()
            .expect("no panics while holding the records")
            .get(&record.seqnum)
            .cloned();
        if let Some(entry) = kept {
            return Ok(entry);
        }
        let entry = Arc::new(parse(record)?);
        self.keep_entry(record.seqnum, entry.clone());
        Ok(entry)
    }

    fn keep_entry(&self, seqnum: Seqnum, entry: Arc<Entry>) {
        let mut records = self
            .shared
            .records
            .lock()
            .expect("no panics while holding the records");
        records.insert(seqnum, entry);
        if records.len() > RECORDS_CACHED_MAX {
            records.pop_first();
        }
    }

    /// The object's view after every record up to `at` (`Seqnum::MAX`: the newest).
    pub(crate) async fn view(&self, object: &ObjectId, at: Seqnum) -> Result<View, Error> {
        Ok(self.view_at(object, at).await?.view)
    }

    /// The object's view after every record up to `at` (`Seqnum::MAX`: the newest).
    fn view_at<'a>(&'a self, object: &'a ObjectId, at: Seqnum) -> Boxed<'a, Cached> {
        Box::pin(async move {
            let ctx = &self.ctx;
            let tag = object_tag(object);
            // The records to replay, newest first, down to a starting point.
            let mut pending: Vec<(Record, Arc<Entry>)> = Vec::new();
            let mut cursor = at;
            // The seqnum the view will be as of: `at`, or for the newest view, the newest
            // record (every record below one that is readable is readable).
            let mut as_of = (at != Seqnum::MAX).then_some(at);
            // Whether the view is one kept in memory, as it was: it need not be kept again.
            let mut kept = false;
            let start = loop {
                let Some(record) = ctx.read_prev(tag, cursor).await? else {
                    // The stream's start, or a collection's trim: then the base holds the
                    // view just below it.
                    break match self.base(object).await? {
                        Some((base_as_of, view)) if base_as_of <= at => {
                            pending.retain(|(r, _)| r.seqnum > base_as_of);
                            Cached { view, depth: 0 }
                        }
                        Some((base_as_of, _)) => {
                            return Err(Error::SnapshotCollected {
                                snapshot: at,
                                horizon: base_as_of.next(),
                            })
                        }
                        None => Cached {
                            view: View::empty(),
                            depth: 0,
                        },
                    };
                };
                as_of.get_or_insert(record.seqnum);
                if let Some((kept_as_of, cached)) = self.cached_view(object, record.seqnum, cursor)
                {
                    // Kept by a writer after this read began, the view may be as of a newer
                    // record than the one just read: it is then as of that one.
                    if pending.is_empty() {
                        if let Some(as_of) = as_of.as_mut() {
                            *as_of = (*as_of).max(kept_as_of);
                        }
                        kept = true;
                    }
                    break cached;
                }
                if let Some(cached) = Aux::of(record.aux.as_ref()).view(object) {
                    break cached.clone();
                }
                let entry = self.entry(&record)?;
                if let Entry::Checkpoint {
                    object: of,
                    as_of: checkpoint_as_of,
                    view,
                } = &*entry
                {
                    if of == object {
                        // A collection may have trimmed records the checkpoint needs: its
                        // base is then newer than the checkpoint, and the replay starts there.
                        let (from, view) = match self.base(object).await? {
                            Some((base_as_of, base))
                                if base_as_of > *checkpoint_as_of && base_as_of < record.seqnum =>
                            {
                                (base_as_of, base)
                            }
                            _ => (*checkpoint_as_of, view.clone()),
                        };
                        let between = (self.read_between(tag, from.next(), record.seqnum)).await?;
                        pending.extend(between.into_iter().rev());
                        break Cached { view, depth: 0 };
                    }
                }
                let seqnum = record.seqnum;
                pending.push((record, entry));
                if seqnum == Seqnum::ZERO {
                    break Cached {
                        view: View::empty(),
                        depth: 0,
                    };
                }
                cursor = below(seqnum);
            };
            let replayed = pending.len() as u64;
            let mut view = start.view;
            let mut last = None;
            // The steps kept: the last ones before the end (the end is kept below), as many
            // as an object keeps; earlier ones would only be dropped again.
            let kept_from = replayed.saturating_sub(VERSIONS_CACHED_MAX as u64);
            for (i, (record, entry)) in pending.into_iter().rev().enumerate() {
                view = self.effect(object, view, &record, &entry).await?;
                if (kept_from..replayed - 1).contains(&(i as u64)) {
                    // Each step is the view as of its record: a transaction on its way
                    // just above it finds it here.
                    let step = Cached {
                        view: view.clone(),
                        depth: start.depth + i as u64 + 1,
                    };
                    self.cache_view(object, record.seqnum, step);
                }
                last = Some(record);
            }
            let cached = Cached {
                view,
                depth: start.depth + replayed,
            };
            let c = &self.shared.counters;
            c.views.fetch_add(1, Ordering::Relaxed);
            c.records_replayed.fetch_add(replayed, Ordering::Relaxed);
            c.replay_max.fetch_max(replayed, Ordering::Relaxed);
            if let Some(record) = last {
                let kept = cached.clone();
                self.add_aux((record.seqnum, record.aux.as_ref()), |aux| {
                    aux.put_view(object, kept)
                })
                .await;
            }
            if let Some(as_of) = as_of {
                if !kept {
                    self.cache_view(object, as_of, cached.clone());
                }
                if cached.depth > self.shared.settings.checkpoint_every as u64 {
                    let checkpoint = Entry::Checkpoint {
                        object: object.clone(),
                        as_of,
                        view: cached.view.clone(),
                    };
                    self.append(&[tag], checkpoint).await?;
                    c.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(cached)
        })
    }

    /// The object's newest base (its view just below a collection's horizon), if it has one:
    /// the seqnum the view is as of, and the view.
    async fn base(&self, object: &ObjectId) -> Result<Option<(Seqnum, View)>, Error> {
        let tag = base_tag(object);
        let mut cursor = Seqnum::MAX;
        while let Some(record) = self.ctx.read_prev(tag, cursor).await? {
            if let Entry::Checkpoint {
                object: of,
                as_of,
                view,
            } = parse(&record)?
            {
                if &of == object {
                    return Ok(Some((as_of, view)));
                }
            }
            // Another object's base, by a collision of tags.
            if record.seqnum == Seqnum::ZERO {
                break;
            }
            cursor = below(record.seqnum);
        }
        Ok(None)
    }

    /// Trims what no reader needs any more: every object's versions below the **horizon**,
    /// the newest mark of a collection older than `retention` (or than
    /// `Settings::transaction_lifetime`, if longer). Appends this collection's mark first;
    /// the first collection, with no mark old enough, trims nothing. Each object changed
    /// between the previous horizon and this one gets a base (its view just below the
    /// horizon, in its base stream) before its stream is trimmed, so every answer stays the
    /// same; key streams are trimmed too, but for a key with a duplicate above the horizon.
    ///
    /// ```
    /// # async fn f(store: libstore::Store) -> Result<(), libstore::Error> {
    /// let collected = store.collect(std::time::Duration::from_secs(3600)).await?;
    /// println!("{} records trimmed from {} objects", collected.records, collected.objects);
    /// # Ok(()) }
    /// ```
    pub async fn collect(&self, retention: Duration) -> Result<Collected, Error> {
        let ctx = &self.ctx;
        let retention = retention.max(self.shared.settings.transaction_lifetime);
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut previous = Seqnum::ZERO;
        let mut horizon = Seqnum::ZERO;
        for (record, entry) in self
            .read_between(marks_tag(), Seqnum::ZERO, Seqnum::MAX)
            .await?
        {
            if let Entry::Mark {
                at_ms,
                horizon: declared,
            } = *entry
            {
                previous = previous.max(declared);
                if at_ms.saturating_add(retention_ms) <= now {
                    horizon = horizon.max(record.seqnum);
                }
            }
        }
        // Horizons only move forward (a longer retention than last time trims nothing).
        let horizon = horizon.max(previous);
        let mark = Entry::Mark {
            at_ms: now,
            horizon,
        };
        self.append(&[marks_tag()], mark).await?;
        let mut collected = Collected {
            horizon,
            ..Collected::default()
        };
        if horizon <= previous {
            return Ok(collected);
        }
        // What changed between the two horizons: read once, by this collection only.
        let mut objects = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        let mut from = previous;
        while from < horizon {
            let range = ReadRange {
                from,
                to: horizon,
                limit: READ_RANGE_RECORDS_MAX,
            };
            let records = ctx.read_range(Tag::ANY, range).await?;
            let Some(last) = records.last() else { break };
            from = last.seqnum.next();
            for record in records {
                // The book holds other libraries' records too.
                let Ok(entry) = serde_json::from_slice::<Entry>(&record.data) else {
                    continue;
                };
                collected.records += 1;
                if let Some(key) = entry.key() {
                    keys.insert(key.to_string());
                }
                match entry {
                    Entry::Ops { object, .. } | Entry::Checkpoint { object, .. } => {
                        objects.insert(object);
                    }
                    Entry::Commit(commit) => {
                        objects.extend(commit.writes.into_iter().map(|w| w.object));
                    }
                    Entry::OneShot { transaction, .. } => {
                        objects.extend(transaction.written().into_iter().cloned());
                    }
                    Entry::Mark { .. } => {}
                }
            }
        }
        for object in objects {
            let view = self.view(&object, below(horizon)).await?;
            let base = Entry::Checkpoint {
                object: object.clone(),
                as_of: below(horizon),
                view,
            };
            let (base, _) = self.append(&[base_tag(&object)], base).await?;
            ctx.trim(object_tag(&object), horizon).await?;
            ctx.trim(base_tag(&object), base).await?;
            collected.objects += 1;
        }
        for key in keys {
            // A duplicate above the horizon made before this mark looks below it for its
            // first record: keep the key's stream for it.
            let tag = key_tag(&key);
            let above = self.read_between(tag, horizon, Seqnum::MAX).await?;
            if !above.iter().any(|(_, e)| e.key() == Some(key.as_str())) {
                ctx.trim(tag, horizon).await?;
            }
        }
        ctx.trim(marks_tag(), horizon).await?;
        Ok(collected)
    }

    /// The records of `tag` in `[from, to)`, in log order.
    async fn read_between(
        &self,
        tag: Tag,
        from: Seqnum,
        to: Seqnum,
    ) -> Result<Vec<(Record, Arc<Entry>)>, Error> {
        let mut out = Vec::new();
        let mut from = from;
        while from < to {
            let range = ReadRange {
                from,
                to,
                limit: READ_RANGE_RECORDS_MAX,
            };
            let records = self.ctx.read_range(tag, range).await?;
            let Some(last) = records.last() else { break };
            from = last.seqnum.next();
            for record in records {
                let entry = self.entry(&record)?;
                out.push((record, entry));
            }
        }
        Ok(out)
    }

    /// The object's changes after `after`, oldest first: at most `limit`, and documents of
    /// about `HISTORY_BYTES_MAX` bytes at most. Changes below a collection's horizon are gone:
    /// a history from before it starts at the object's base.
    pub(crate) async fn history(
        &self,
        object: &ObjectId,
        after: Seqnum,
        limit: usize,
    ) -> Result<History, Error> {
        object.check()?;
        if limit == 0 || limit > HISTORY_LIMIT_MAX {
            return Err(Error::Invalid(format!(
                "a history page holds 1 to {HISTORY_LIMIT_MAX} changes, not {limit}"
            )));
        }
        let tag = object_tag(object);
        let (mut view, after) = match self.view(object, after).await {
            Ok(view) => (view, after),
            Err(Error::SnapshotCollected { .. }) => match self.base(object).await? {
                Some((as_of, view)) => (view, as_of),
                None => (View::empty(), after),
            },
            Err(e) => return Err(e),
        };
        let mut changes: Vec<Change> = Vec::new();
        let mut bytes = 0;
        let mut from = after.next();
        loop {
            let range = ReadRange {
                from,
                to: Seqnum::MAX,
                limit: (limit - changes.len()).min(READ_RANGE_RECORDS_MAX),
            };
            let records = self.ctx.read_range(tag, range).await?;
            let Some(last) = records.last() else {
                return Ok(History {
                    changes,
                    next: None,
                });
            };
            from = last.seqnum.next();
            for record in records {
                let entry = parse(&record)?;
                let Some(change) = self.change(object, &view, &record, &entry).await? else {
                    continue;
                };
                if change.applied {
                    view = View {
                        doc: change.doc.clone(),
                        version: record.seqnum,
                    };
                }
                bytes += change.doc.as_ref().map_or(0, |d| d.to_string().len());
                changes.push(change);
                if changes.len() == limit || bytes > HISTORY_BYTES_MAX {
                    let next = Some(record.seqnum);
                    return Ok(History { changes, next });
                }
            }
        }
    }

    /// What `record` did to the object, given its view before; `None` if the record is not a
    /// change of it (a checkpoint, or another object's record under a colliding tag). The
    /// document after it is `effect`'s, the rule every reader replays with; a repeat of a
    /// keyed record is a change that did not apply.
    async fn change(
        &self,
        object: &ObjectId,
        before: &View,
        record: &Record,
        entry: &Entry,
    ) -> Result<Option<Change>, Error> {
        let seqnum = record.seqnum;
        let (kind, ops, decision) = match entry {
            Entry::Ops {
                object: of,
                ops,
                document_bytes_max,
                key,
            } if of == object => {
                let repeat = match key {
                    Some(key) => self.decide_keyed(seqnum, record.aux.as_ref(), key).await?,
                    None => Decision::Committed,
                };
                let decision = match repeat {
                    Decision::Committed => {
                        match path::apply_all(&before.doc, ops, *document_bytes_max) {
                            Ok(_) => Decision::Committed,
                            Err(e) => Decision::Aborted(e.to_string()),
                        }
                    }
                    other => other,
                };
                (ChangeKind::Write, ops.clone(), decision)
            }
            Entry::Commit(commit) => {
                let Some(ops) = history::commit_ops(commit, object) else {
                    return Ok(None);
                };
                let decision = self
                    .decide_commit(seqnum, record.aux.as_ref(), commit, None)
                    .await?;
                (ChangeKind::Transaction, ops, decision)
            }
            Entry::OneShot {
                transaction,
                document_bytes_max,
                key,
            } => {
                let ops: Vec<Op> = (transaction.writes.iter())
                    .filter(|w| &w.object == object)
                    .map(|w| w.op.clone())
                    .collect();
                if ops.is_empty() {
                    return Ok(None);
                }
                let decision = self
                    .decide_oneshot(
                        seqnum,
                        record.aux.as_ref(),
                        transaction,
                        *document_bytes_max,
                        key.as_deref(),
                        None,
                    )
                    .await?;
                (ChangeKind::Oneshot, ops, decision)
            }
            _ => return Ok(None),
        };
        let reason = match decision {
            Decision::Committed => None,
            Decision::Aborted(reason) => Some(reason),
            Decision::Duplicate(first) => Some(format!(
                "a repeat of the keyed record at seqnum {}",
                first.0
            )),
        };
        Ok(Some(match reason {
            None => Change {
                seqnum,
                kind,
                ops,
                applied: true,
                reason: None,
                doc: self
                    .effect(object, before.clone(), record, entry)
                    .await?
                    .doc,
            },
            Some(reason) => Change {
                seqnum,
                kind,
                ops,
                applied: false,
                reason: Some(reason),
                doc: before.doc.clone(),
            },
        }))
    }

    /// The object's view after `record`, given its view before.
    async fn effect(
        &self,
        object: &ObjectId,
        view: View,
        record: &Record,
        entry: &Entry,
    ) -> Result<View, Error> {
        let seqnum = record.seqnum;
        Ok(match entry {
            Entry::Ops {
                object: of,
                ops,
                document_bytes_max,
                key,
            } if of == object => {
                if let Some(key) = key {
                    let decision = self.decide_keyed(seqnum, record.aux.as_ref(), key).await?;
                    if let Decision::Duplicate(_) = decision {
                        return Ok(view);
                    }
                }
                match path::apply_all(&view.doc, ops, *document_bytes_max) {
                    Ok((doc, _)) => View {
                        doc,
                        version: seqnum,
                    },
                    Err(_) => view,
                }
            }
            Entry::Commit(commit) => {
                let Some(written) = commit.writes.iter().find(|w| &w.object == object) else {
                    return Ok(view);
                };
                match self
                    .decide_commit(seqnum, record.aux.as_ref(), commit, Some((object, &view)))
                    .await?
                {
                    Decision::Committed => View {
                        doc: written.doc.clone(),
                        version: seqnum,
                    },
                    Decision::Aborted(_) | Decision::Duplicate(_) => view,
                }
            }
            Entry::OneShot {
                transaction,
                document_bytes_max,
                key,
            } => {
                if !transaction.writes.iter().any(|w| &w.object == object) {
                    return Ok(view);
                }
                let decision = self
                    .decide_oneshot(
                        seqnum,
                        record.aux.as_ref(),
                        transaction,
                        *document_bytes_max,
                        key.as_deref(),
                        Some((object, &view)),
                    )
                    .await?;
                match decision {
                    Decision::Committed => {
                        let doc = transaction.apply_to(object, &view.doc).map_err(|e| {
                            Error::Corrupt {
                                seqnum,
                                reason: format!("a committed transaction's write fails: {e}"),
                            }
                        })?;
                        View {
                            doc,
                            version: seqnum,
                        }
                    }
                    Decision::Aborted(_) | Decision::Duplicate(_) => view,
                }
            }
            // Checkpoints change nothing; a record of another object is here only by a
            // collision of tags.
            _ => view,
        })
    }

    /// Decides an interactive transaction's commit record at `seqnum`: it commits iff no
    /// object it validates has another version just below the record than at its snapshot.
    /// `known`: one object's view just below the record, if the caller has it (a replay of
    /// that object's stream), so it is not computed again.
    fn decide_commit<'a>(
        &'a self,
        seqnum: Seqnum,
        aux: Option<&'a Bytes>,
        commit: &'a Commit,
        known: Option<(&'a ObjectId, &'a View)>,
    ) -> Boxed<'a, Decision> {
        Box::pin(async move {
            if let Some(decision) = self.remembered(seqnum) {
                return Ok(decision);
            }
            if let Some(decision) = Aux::of(aux).decision {
                self.remember(seqnum, decision.clone());
                return Ok(decision);
            }
            let (decision, _) = self.validate(seqnum, commit, known).await?;
            Ok(self.keep_decision(seqnum, aux, decision).await)
        })
    }

    /// Decides the commit record at `seqnum` from the log (`decide_commit` without the
    /// caches): a repeat of its key's first record, or committed iff every object it
    /// validates has the version it read just below the record. Also the depth of each view
    /// it computed there, for the views the commit makes.
    async fn validate(
        &self,
        seqnum: Seqnum,
        commit: &Commit,
        known: Option<(&ObjectId, &View)>,
    ) -> Result<(Decision, BTreeMap<ObjectId, u64>), Error> {
        let mut depths = BTreeMap::new();
        if let Some(key) = &commit.key {
            if let Some(first) = self.first_of_key(seqnum, key).await? {
                return Ok((Decision::Duplicate(first), depths));
            }
        }
        for touched in commit.validated() {
            let version = match known {
                Some((object, view)) if *object == touched.object => view.version,
                _ => {
                    let cached = self.view_at(&touched.object, below(seqnum)).await?;
                    depths.insert(touched.object.clone(), cached.depth);
                    cached.view.version
                }
            };
            if version != touched.version {
                let reason = format!(
                    "{} changed at seqnum {} after the snapshot at {}",
                    touched.object, version.0, commit.snapshot.0
                );
                return Ok((Decision::Aborted(reason), depths));
            }
        }
        Ok((Decision::Committed, depths))
    }

    /// Keeps a record's decision in memory and in its aux data; returns it.
    async fn keep_decision(
        &self,
        seqnum: Seqnum,
        aux: Option<&Bytes>,
        decision: Decision,
    ) -> Decision {
        self.remember(seqnum, decision.clone());
        let cached = decision.clone();
        self.add_aux((seqnum, aux), |a| a.decision = Some(cached))
            .await;
        decision
    }

    /// Decides whether the keyed write at `seqnum` is its key's first record (`Committed`:
    /// it applies, or fails alike for every reader) or a duplicate.
    async fn decide_keyed(
        &self,
        seqnum: Seqnum,
        aux: Option<&Bytes>,
        key: &str,
    ) -> Result<Decision, Error> {
        if let Some(decision) = self.remembered(seqnum) {
            return Ok(decision);
        }
        if let Some(decision) = Aux::of(aux).decision {
            self.remember(seqnum, decision.clone());
            return Ok(decision);
        }
        let decision = match self.first_of_key(seqnum, key).await? {
            Some(first) => Decision::Duplicate(first),
            None => Decision::Committed,
        };
        Ok(self.keep_decision(seqnum, aux, decision).await)
    }

    /// Decides a one-shot transaction's record at `seqnum` by evaluating it there.
    async fn decide_oneshot(
        &self,
        seqnum: Seqnum,
        aux: Option<&Bytes>,
        transaction: &OneShot,
        document_bytes_max: usize,
        key: Option<&str>,
        known: Option<(&ObjectId, &View)>,
    ) -> Result<Decision, Error> {
        if let Some(decision) = self.remembered(seqnum) {
            return Ok(decision);
        }
        if let Some(decision) = Aux::of(aux).decision {
            self.remember(seqnum, decision.clone());
            return Ok(decision);
        }
        if let Some(key) = key {
            if let Some(first) = self.first_of_key(seqnum, key).await? {
                return Ok(self
                    .keep_decision(seqnum, aux, Decision::Duplicate(first))
                    .await);
            }
        }
        let decision = match self
            .evaluate_oneshot(seqnum, transaction, document_bytes_max, known)
            .await?
            .0
        {
            Ok(_) => Decision::Committed,
            Err(reason) => Decision::Aborted(reason),
        };
        Ok(self.keep_decision(seqnum, aux, decision).await)
    }

    /// Evaluates a one-shot transaction on its objects just below `seqnum` (`known`: one
    /// object's view there, if the caller has it). Also returns the depth of each view it
    /// computed (records since its last checkpoint), for the views the transaction makes.
    async fn evaluate_oneshot(
        &self,
        seqnum: Seqnum,
        transaction: &OneShot,
        document_bytes_max: usize,
        known: Option<(&ObjectId, &View)>,
    ) -> Result<(Result<Evaluated, String>, BTreeMap<ObjectId, u64>), Error> {
        let mut docs = BTreeMap::new();
        let mut depths = BTreeMap::new();
        for object in transaction.objects() {
            let doc = match known {
                Some((of, view)) if of == object => view.doc.clone(),
                _ => {
                    let cached = self.view_at(object, below(seqnum)).await?;
                    depths.insert(object.clone(), cached.depth);
                    cached.view.doc
                }
            };
            docs.insert(object.clone(), doc);
        }
        Ok((transaction.evaluate(&docs, document_bytes_max), depths))
    }
}

/// Checks that a record's tags fit: a keyed transaction's key takes one of them.
fn check_tags(tags: &[Tag]) -> Result<(), Error> {
    if tags.len() > logbook::TAGS_PER_RECORD_MAX {
        return Err(Error::Invalid(format!(
            "a record carries at most {} tags: a keyed transaction writes at most {} objects, this one {}",
            logbook::TAGS_PER_RECORD_MAX,
            logbook::TAGS_PER_RECORD_MAX - 1,
            tags.len() - 1
        )));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch: a collection's mark.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The seqnum just below `seqnum` (records are never at 0 in a book: it has none below).
fn below(seqnum: Seqnum) -> Seqnum {
    Seqnum(seqnum.0.saturating_sub(1))
}

fn parse(record: &Record) -> Result<Entry, Error> {
    serde_json::from_slice(&record.data).map_err(|e| Error::Corrupt {
        seqnum: record.seqnum,
        reason: format!("not a libstore record: {e}"),
    })
}

/// A collection of objects: `store.collection("accounts")`.
#[derive(Clone)]
pub struct Collection {
    store: Store,
    name: String,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object `key` of this collection (nothing is read or written yet).
    pub fn object(&self, key: &str) -> Object {
        Object {
            store: self.store.clone(),
            id: ObjectId::new(&self.name, key),
        }
    }
}

/// An object: a JSON document, changed by path operations each linearized by its record's
/// position in the log. Cheap to clone.
///
/// ```
/// # async fn f(store: libstore::Store) -> Result<(), libstore::Error> {
/// use serde_json::json;
/// let cart = store.collection("carts").object("u42");
/// cart.set("", json!({ "items": [] })).await?;
/// cart.push("/items", json!({ "sku": "tea", "n": 2 }), Some(100)).await?;
/// assert_eq!(cart.get("/items/0/sku").await?, Some(json!("tea")));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Object {
    store: Store,
    id: ObjectId,
}

/// The single result of a one-op write.
fn only(mut results: Vec<Value>) -> Value {
    results.pop().expect("one op has one result")
}

fn none_if_null(value: Value) -> Option<Value> {
    (!value.is_null()).then_some(value)
}

impl Object {
    /// The object's address.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// The value at `path` (`""`: the whole document) as of the log's tail, or `None` if the
    /// path is missing.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, Error> {
        Ok(path::get(self.view().await?.doc.as_ref(), path)?.cloned())
    }

    /// The whole document and its version (the seqnum of the record that last changed it).
    pub async fn view(&self) -> Result<View, Error> {
        self.id.check()?;
        self.store.view(&self.id, Seqnum::MAX).await
    }

    /// The object's changes after seqnum `after` (`Seqnum::ZERO`: from the start), oldest
    /// first, at most `limit` (1 to `HISTORY_LIMIT_MAX`): each record that tried to change it,
    /// what it did, whether it took effect, and the document after it. `next` continues.
    ///
    /// ```
    /// # async fn f(store: libstore::Store) -> Result<(), libstore::Error> {
    /// use serde_json::json;
    /// let counter = store.collection("counters").object("hits");
    /// counter.fetch_add("/n", 1).await?;
    /// counter.fetch_add("/n", 2).await?;
    /// let page = counter.history(logbook::Seqnum::ZERO, 10).await?;
    /// let docs: Vec<_> = page.changes.iter().map(|c| c.doc.clone()).collect();
    /// assert_eq!(docs, [Some(json!({"n": 1})), Some(json!({"n": 3}))]);
    /// # Ok(()) }
    /// ```
    pub async fn history(&self, after: Seqnum, limit: usize) -> Result<History, Error> {
        self.store.history(&self.id, after, limit).await
    }

    /// Applies `ops` together, as one record: all take effect or none. Each op's result.
    pub async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Value>, Error> {
        self.store.write(&self.id, ops).await
    }

    /// Sets `path` to `value`; the old value.
    pub async fn set(&self, path: &str, value: Value) -> Result<Option<Value>, Error> {
        Ok(none_if_null(only(
            self.apply(vec![Op::set(path, value)]).await?,
        )))
    }

    /// Removes `path` (`""`: the document); the old value.
    pub async fn delete(&self, path: &str) -> Result<Option<Value>, Error> {
        Ok(none_if_null(only(
            self.apply(vec![Op::delete(path)]).await?,
        )))
    }

    /// Sets `path` to `{}`.
    pub async fn make_object(&self, path: &str) -> Result<(), Error> {
        self.apply(vec![Op::make_object(path)]).await.map(drop)
    }

    /// Sets `path` to `[]`.
    pub async fn make_array(&self, path: &str) -> Result<(), Error> {
        self.apply(vec![Op::make_array(path)]).await.map(drop)
    }

    /// Adds `delta` to the number at `path` (a missing one counts as 0); the old number.
    pub async fn fetch_add(&self, path: &str, delta: impl Into<Number>) -> Result<Number, Error> {
        match only(self.apply(vec![Op::add(path, delta)]).await?) {
            Value::Number(old) => Ok(old),
            other => unreachable!("add returns a number, not {other}"),
        }
    }

    /// Appends `value` to the array at `path`, keeping the newest `limit` elements; the new
    /// length.
    pub async fn push(
        &self,
        path: &str,
        value: Value,
        limit: Option<usize>,
    ) -> Result<usize, Error> {
        let len = only(self.apply(vec![Op::push(path, value, limit)]).await?);
        Ok(len.as_u64().expect("push returns a length") as usize)
    }

    /// Removes the last element of the array at `path`; it, or `None` if it was empty.
    pub async fn pop(&self, path: &str) -> Result<Option<Value>, Error> {
        Ok(none_if_null(only(self.apply(vec![Op::pop(path)]).await?)))
    }

    /// Sets `path` to `value` if it holds `expected` (`None`: missing); whether it did.
    pub async fn compare_and_set(
        &self,
        path: &str,
        expected: Option<Value>,
        value: Value,
    ) -> Result<bool, Error> {
        let swapped = only(
            self.apply(vec![Op::compare_and_set(path, expected, value)])
                .await?,
        );
        Ok(swapped == Value::Bool(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: u64) -> Cached {
        Cached {
            view: View {
                doc: Some(Value::from(version)),
                version: Seqnum(version),
            },
            depth: 0,
        }
    }

    #[test]
    fn views_over_the_limit_give_up_the_one_kept_longest_ago() {
        let limit = 64;
        let mut views = Views::default();
        // "a" is first in name order and written all along; 1,000 others once each.
        let hot = ObjectId::new("accounts", "a");
        let mut seqnum = 0;
        for i in 0..1_000 {
            seqnum += 1;
            views.keep(
                &ObjectId::new("accounts", &format!("k{i}")),
                Seqnum(seqnum),
                view(seqnum),
                limit,
            );
            if i % 10 == 0 {
                seqnum += 1;
                views.keep(&hot, Seqnum(seqnum), view(seqnum), limit);
            }
            assert!(views.count <= limit);
            assert!(views.order.len() <= 2 * limit);
            let kept: usize = views.objects.values().map(BTreeMap::len).sum();
            assert_eq!(kept, views.count);
        }
        // The object in use keeps its newest view; the cold ones kept longest ago are gone.
        let newest = views.objects[&hot].last_key_value().map(|(s, _)| *s);
        assert_eq!(newest, Some(Seqnum(seqnum - 9)));
        assert!(!views.objects.contains_key(&ObjectId::new("accounts", "k0")));
        assert!(views
            .objects
            .contains_key(&ObjectId::new("accounts", "k999")));
        // Each object keeps at most its newest VERSIONS_CACHED_MAX.
        assert!(views.objects[&hot].len() <= VERSIONS_CACHED_MAX);
    }
}
