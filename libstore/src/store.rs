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

use crate::entry::{object_tag, Aux, Cached, Commit, Decision, Entry, ObjectId, View};
use crate::history::{self, Change, ChangeKind, History, HISTORY_BYTES_MAX, HISTORY_LIMIT_MAX};
use crate::oneshot::{Evaluated, OneShot};
use crate::path::{self, Op};
use crate::txn::{Isolation, Outcome, Transaction};
use crate::Error;
use bytes::Bytes;
use logbook::{ReadRange, Record, Seqnum, Tag, READ_RANGE_RECORDS_MAX, RECORD_BYTES_MAX};
use serde_json::{Number, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tally_sdk::Ctx;

/// Most objects one transaction writes: one tag per written object on its record.
pub const TXN_OBJECTS_MAX: usize = logbook::TAGS_PER_RECORD_MAX;
/// Most operations one `apply` carries.
pub const OPS_PER_WRITE_MAX: usize = 256;
/// Most transaction decisions a store keeps in memory (the oldest go first).
pub const DECISIONS_CACHED_MAX: usize = 65_536;
/// Most objects whose newest view a store keeps in memory.
pub const VIEWS_CACHED_MAX: usize = 16_384;

/// A store's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A view that took more records than this on top of the newest checkpoint gets a
    /// checkpoint appended, so a read with no cached view replays about this many at most.
    pub checkpoint_every: usize,
    /// Largest document, in bytes of JSON. Each write carries the limit it was made under.
    pub document_bytes_max: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            checkpoint_every: 64,
            document_bytes_max: 64 * 1024,
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

struct Inner {
    ctx: Ctx,
    settings: Settings,
    decisions: Mutex<BTreeMap<Seqnum, Decision>>,
    /// The newest view computed of each object, and the seqnum it is as of: every record of
    /// the object at or below it is in the view.
    views: Mutex<BTreeMap<ObjectId, (Seqnum, Cached)>>,
    counters: Counters,
}

/// Durable JSON objects in the book of a `Ctx`. Cheap to clone; clones share their caches.
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
    inner: Arc<Inner>,
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
            inner: Arc::new(Inner {
                ctx,
                settings,
                decisions: Mutex::new(BTreeMap::new()),
                views: Mutex::new(BTreeMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// The store's settings.
    pub fn settings(&self) -> Settings {
        self.inner.settings
    }

    /// What the store has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
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
        let snapshot = self
            .inner
            .ctx
            .check_tail(Tag::ANY)
            .await?
            .map_or(Seqnum::ZERO, |r| r.seqnum);
        Ok(Transaction::new(self.clone(), snapshot, isolation))
    }

    /// Runs a one-shot transaction: appends it, then evaluates it at its position.
    pub async fn run(&self, transaction: &OneShot) -> Result<Outcome, Error> {
        transaction.check()?;
        let document_bytes_max = self.inner.settings.document_bytes_max;
        for w in &transaction.writes {
            w.op.check_value_size(document_bytes_max)?;
        }
        let entry = Entry::OneShot {
            transaction: transaction.clone(),
            document_bytes_max,
        };
        let tags: Vec<Tag> = transaction.written().into_iter().map(object_tag).collect();
        let seqnum = self.append(&tags, &entry).await?;
        let evaluated = self
            .evaluate_oneshot(seqnum, transaction, document_bytes_max)
            .await?;
        let mut aux = Aux::default();
        let outcome = match evaluated {
            Ok(Evaluated { reads, written }) => {
                for (object, doc) in written {
                    let depth = self.view_at(&object, below(seqnum)).await?.depth + 1;
                    let view = View {
                        doc,
                        version: seqnum,
                    };
                    aux.put_view(&object, Cached { view, depth });
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
        let tags: Vec<Tag> = commit
            .writes
            .iter()
            .map(|w| object_tag(&w.object))
            .collect();
        let entry = Entry::Commit(commit);
        let seqnum = self.append(&tags, &entry).await?;
        let Entry::Commit(commit) = entry else {
            unreachable!("made a commit above")
        };
        let decision = self.decide_commit(seqnum, None, &commit).await?;
        let mut aux = Aux {
            decision: Some(decision.clone()),
            ..Aux::default()
        };
        if decision == Decision::Committed {
            for w in &commit.writes {
                let depth = self.view_at(&w.object, below(seqnum)).await?.depth + 1;
                let view = View {
                    doc: w.doc.clone(),
                    version: seqnum,
                };
                aux.put_view(&w.object, Cached { view, depth });
            }
        }
        self.set_aux(seqnum, &aux).await;
        Ok(match decision {
            Decision::Committed => Outcome::Committed {
                seqnum: Some(seqnum),
                reads: Vec::new(),
            },
            Decision::Aborted(reason) => Outcome::Aborted {
                seqnum: Some(seqnum),
                reason,
            },
        })
    }

    /// Appends one write (several ops on one object), then reads the object up to it.
    pub(crate) async fn write(&self, object: &ObjectId, ops: Vec<Op>) -> Result<Vec<Value>, Error> {
        object.check()?;
        if ops.is_empty() || ops.len() > OPS_PER_WRITE_MAX {
            return Err(Error::Invalid(format!(
                "a write carries 1 to {OPS_PER_WRITE_MAX} operations, got {}",
                ops.len()
            )));
        }
        let document_bytes_max = self.inner.settings.document_bytes_max;
        for op in &ops {
            op.check()?;
            op.check_value_size(document_bytes_max)?;
        }
        let entry = Entry::Ops {
            object: object.clone(),
            ops,
            document_bytes_max,
        };
        let seqnum = self.append(&[object_tag(object)], &entry).await?;
        let Entry::Ops { ops, .. } = entry else {
            unreachable!("made ops above")
        };
        let before = self.view_at(object, below(seqnum)).await?;
        let result = path::apply_all(&before.view.doc, &ops, document_bytes_max);
        let view = match &result {
            Ok((doc, _)) => View {
                doc: doc.clone(),
                version: seqnum,
            },
            Err(_) => before.view,
        };
        let after = Cached {
            view,
            depth: before.depth + 1,
        };
        let mut aux = Aux::default();
        aux.put_view(object, after.clone());
        self.set_aux(seqnum, &aux).await;
        self.cache_view(object, seqnum, after);
        result.map(|(_, results)| results)
    }

    async fn append(&self, tags: &[Tag], entry: &Entry) -> Result<Seqnum, Error> {
        let data = serde_json::to_vec(entry).expect("an entry serializes");
        if data.len() > RECORD_BYTES_MAX {
            return Err(Error::TooLarge {
                what: "the record",
                bytes: data.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        Ok(self.inner.ctx.append(tags, data).await?)
    }

    /// Attaches `aux` to a record. A cache: if it cannot be set, reads replay a little more.
    async fn set_aux(&self, seqnum: Seqnum, aux: &Aux) {
        let data = serde_json::to_vec(aux).expect("aux data serializes");
        let _ = self.inner.ctx.set_aux_data(seqnum, data).await;
    }

    /// Adds to a record's aux data (as read with it) and sets it.
    async fn add_aux(&self, record: (Seqnum, Option<&Bytes>), add: impl FnOnce(&mut Aux)) {
        let mut aux = Aux::of(record.1);
        add(&mut aux);
        self.set_aux(record.0, &aux).await;
    }

    fn remember(&self, seqnum: Seqnum, decision: Decision) {
        let mut decisions = self
            .inner
            .decisions
            .lock()
            .expect("no panics while holding the decisions");
        decisions.insert(seqnum, decision);
        while decisions.len() > DECISIONS_CACHED_MAX {
            decisions.pop_first();
        }
    }

    fn remembered(&self, seqnum: Seqnum) -> Option<Decision> {
        self.inner
            .decisions
            .lock()
            .expect("no panics while holding the decisions")
            .get(&seqnum)
            .cloned()
    }

    /// Keeps `view`, as of `as_of`, as the object's newest view (unless a newer one is kept).
    fn cache_view(&self, object: &ObjectId, as_of: Seqnum, view: Cached) {
        let mut views = self
            .inner
            .views
            .lock()
            .expect("no panics while holding the views");
        if views.get(object).is_some_and(|(kept, _)| *kept > as_of) {
            return;
        }
        if views.len() >= VIEWS_CACHED_MAX && !views.contains_key(object) {
            views.pop_first();
        }
        views.insert(object.clone(), (as_of, view));
    }

    /// The kept view of the object if it is as of a seqnum in `[newest, at]`: `newest` being
    /// the object's newest record at or below `at`, the view is then the one at `at`.
    fn cached_view(&self, object: &ObjectId, newest: Seqnum, at: Seqnum) -> Option<Cached> {
        let views = self
            .inner
            .views
            .lock()
            .expect("no panics while holding the views");
        let (as_of, view) = views.get(object)?;
        (newest <= *as_of && *as_of <= at).then(|| view.clone())
    }

    /// The object's view after every record up to `at` (`Seqnum::MAX`: the newest).
    pub(crate) async fn view(&self, object: &ObjectId, at: Seqnum) -> Result<View, Error> {
        Ok(self.view_at(object, at).await?.view)
    }

    /// The object's view after every record up to `at` (`Seqnum::MAX`: the newest).
    fn view_at<'a>(&'a self, object: &'a ObjectId, at: Seqnum) -> Boxed<'a, Cached> {
        Box::pin(async move {
            let ctx = &self.inner.ctx;
            let tag = object_tag(object);
            // The records to replay, newest first, down to a starting point.
            let mut pending: Vec<(Record, Entry)> = Vec::new();
            let mut cursor = at;
            // The seqnum the view will be as of: `at`, or for the newest view, the newest
            // record (every record below one that is readable is readable).
            let mut as_of = (at != Seqnum::MAX).then_some(at);
            let start = loop {
                let Some(record) = ctx.read_prev(tag, cursor).await? else {
                    break Cached {
                        view: View::empty(),
                        depth: 0,
                    };
                };
                as_of.get_or_insert(record.seqnum);
                let entry = parse(&record)?;
                if let Entry::Checkpoint {
                    object: of,
                    as_of: checkpoint_as_of,
                    view,
                } = &entry
                {
                    if of == object {
                        let between =
                            (self.read_between(tag, checkpoint_as_of.next(), record.seqnum))
                                .await?;
                        pending.extend(between.into_iter().rev());
                        let view = view.clone();
                        break Cached { view, depth: 0 };
                    }
                }
                if let Some(cached) = self.cached_view(object, record.seqnum, cursor) {
                    break cached;
                }
                if let Some(cached) = Aux::of(record.aux.as_ref()).view(object) {
                    break cached.clone();
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
            for (record, entry) in pending.into_iter().rev() {
                view = self.effect(object, view, &record, &entry).await?;
                last = Some(record);
            }
            let cached = Cached {
                view,
                depth: start.depth + replayed,
            };
            let c = &self.inner.counters;
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
                self.cache_view(object, as_of, cached.clone());
                if cached.depth > self.inner.settings.checkpoint_every as u64 {
                    let checkpoint = Entry::Checkpoint {
                        object: object.clone(),
                        as_of,
                        view: cached.view.clone(),
                    };
                    self.append(&[tag], &checkpoint).await?;
                    c.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(cached)
        })
    }

    /// The object's changes after `after`, oldest first: at most `limit`, and documents of
    /// about `HISTORY_BYTES_MAX` bytes at most.
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
        let mut view = self.view(object, after).await?;
        let mut changes: Vec<Change> = Vec::new();
        let mut bytes = 0;
        let mut from = after.next();
        loop {
            let range = ReadRange {
                from,
                to: Seqnum::MAX,
                limit: (limit - changes.len()).min(READ_RANGE_RECORDS_MAX),
            };
            let records = self.inner.ctx.read_range(tag, range).await?;
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
    /// change of it (a checkpoint, or another object's record under a colliding tag).
    async fn change(
        &self,
        object: &ObjectId,
        before: &View,
        record: &Record,
        entry: &Entry,
    ) -> Result<Option<Change>, Error> {
        let seqnum = record.seqnum;
        let (kind, ops, outcome) = match entry {
            Entry::Ops {
                object: of,
                ops,
                document_bytes_max,
            } if of == object => {
                let outcome = path::apply_all(&before.doc, ops, *document_bytes_max)
                    .map(|(doc, _)| doc)
                    .map_err(|e| e.to_string());
                (ChangeKind::Write, ops.clone(), outcome)
            }
            Entry::Commit(commit) => {
                let Some(ops) = history::commit_ops(commit, object) else {
                    return Ok(None);
                };
                let decision = self
                    .decide_commit(seqnum, record.aux.as_ref(), commit)
                    .await?;
                let outcome = match decision {
                    Decision::Committed => Ok(self
                        .effect(object, before.clone(), record, entry)
                        .await?
                        .doc),
                    Decision::Aborted(reason) => Err(reason),
                };
                (ChangeKind::Transaction, ops, outcome)
            }
            Entry::OneShot {
                transaction,
                document_bytes_max,
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
                    )
                    .await?;
                let outcome = match decision {
                    Decision::Committed => Ok(self
                        .effect(object, before.clone(), record, entry)
                        .await?
                        .doc),
                    Decision::Aborted(reason) => Err(reason),
                };
                (ChangeKind::Oneshot, ops, outcome)
            }
            _ => return Ok(None),
        };
        Ok(Some(match outcome {
            Ok(doc) => Change {
                seqnum,
                kind,
                ops,
                applied: true,
                reason: None,
                doc,
            },
            Err(reason) => Change {
                seqnum,
                kind,
                ops,
                applied: false,
                reason: Some(reason),
                doc: before.doc.clone(),
            },
        }))
    }

    /// The records of `tag` in `[from, to)`, in log order.
    async fn read_between(
        &self,
        tag: Tag,
        from: Seqnum,
        to: Seqnum,
    ) -> Result<Vec<(Record, Entry)>, Error> {
        let mut out = Vec::new();
        let mut from = from;
        while from < to {
            let range = ReadRange {
                from,
                to,
                limit: READ_RANGE_RECORDS_MAX,
            };
            let records = self.inner.ctx.read_range(tag, range).await?;
            let Some(last) = records.last() else { break };
            from = last.seqnum.next();
            for record in records {
                let entry = parse(&record)?;
                out.push((record, entry));
            }
        }
        Ok(out)
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
            } if of == object => match path::apply_all(&view.doc, ops, *document_bytes_max) {
                Ok((doc, _)) => View {
                    doc,
                    version: seqnum,
                },
                Err(_) => view,
            },
            Entry::Commit(commit) => {
                let Some(written) = commit.writes.iter().find(|w| &w.object == object) else {
                    return Ok(view);
                };
                match self
                    .decide_commit(seqnum, record.aux.as_ref(), commit)
                    .await?
                {
                    Decision::Committed => View {
                        doc: written.doc.clone(),
                        version: seqnum,
                    },
                    Decision::Aborted(_) => view,
                }
            }
            Entry::OneShot {
                transaction,
                document_bytes_max,
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
                    Decision::Aborted(_) => view,
                }
            }
            // Checkpoints change nothing; a record of another object is here only by a
            // collision of tags.
            _ => view,
        })
    }

    /// Decides an interactive transaction's commit record at `seqnum`: it commits iff no
    /// object it validates has another version just below the record than at its snapshot.
    fn decide_commit<'a>(
        &'a self,
        seqnum: Seqnum,
        aux: Option<&'a Bytes>,
        commit: &'a Commit,
    ) -> Boxed<'a, Decision> {
        Box::pin(async move {
            if let Some(decision) = self.remembered(seqnum) {
                return Ok(decision);
            }
            if let Some(decision) = Aux::of(aux).decision {
                self.remember(seqnum, decision.clone());
                return Ok(decision);
            }
            let mut decision = Decision::Committed;
            for touched in commit.validated() {
                let now = self.view(&touched.object, below(seqnum)).await?;
                if now.version != touched.version {
                    decision = Decision::Aborted(format!(
                        "{} changed at seqnum {} after the snapshot at {}",
                        touched.object, now.version.0, commit.snapshot.0
                    ));
                    break;
                }
            }
            self.remember(seqnum, decision.clone());
            let cached = decision.clone();
            self.add_aux((seqnum, aux), |a| a.decision = Some(cached))
                .await;
            Ok(decision)
        })
    }

    /// Decides a one-shot transaction's record at `seqnum` by evaluating it there.
    async fn decide_oneshot(
        &self,
        seqnum: Seqnum,
        aux: Option<&Bytes>,
        transaction: &OneShot,
        document_bytes_max: usize,
    ) -> Result<Decision, Error> {
        if let Some(decision) = self.remembered(seqnum) {
            return Ok(decision);
        }
        if let Some(decision) = Aux::of(aux).decision {
            self.remember(seqnum, decision.clone());
            return Ok(decision);
        }
        let decision = match self
            .evaluate_oneshot(seqnum, transaction, document_bytes_max)
            .await?
        {
            Ok(_) => Decision::Committed,
            Err(reason) => Decision::Aborted(reason),
        };
        self.remember(seqnum, decision.clone());
        let cached = decision.clone();
        self.add_aux((seqnum, aux), |a| a.decision = Some(cached))
            .await;
        Ok(decision)
    }

    /// Evaluates a one-shot transaction on its objects just below `seqnum`.
    async fn evaluate_oneshot(
        &self,
        seqnum: Seqnum,
        transaction: &OneShot,
        document_bytes_max: usize,
    ) -> Result<Result<Evaluated, String>, Error> {
        let mut docs = BTreeMap::new();
        for object in transaction.objects() {
            let view = self.view(object, below(seqnum)).await?;
            docs.insert(object.clone(), view.doc);
        }
        Ok(transaction.evaluate(&docs, document_bytes_max))
    }
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
