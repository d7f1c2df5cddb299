//! Tests of `LogEngine`: inputs in, exact commands out.

use super::*;
use logbook::wire::ShardCut;
use logbook::{Cond, BATCH_RECORDS_MAX};

const VIEW: ViewId = ViewId(1);
const OWN: ShardId = ShardId(0);
const OTHER: ShardId = ShardId(1);
const BOOK: BookId = BookId(0);

fn engine() -> LogEngine {
    engine_with(1 << 20, 100)
}

fn engine_with(cache_bytes_max: usize, pending_appends_max: usize) -> LogEngine {
    LogEngine::new(EngineConfig {
        shard: OWN,
        view: VIEW,
        cache_bytes_max,
        pending_appends_max,
    })
}

fn s(position: u64) -> Seqnum {
    Seqnum::new(VIEW, position)
}

fn tags(tags: &[u64]) -> Vec<Tag> {
    tags.iter().map(|t| Tag(*t)).collect()
}

fn data(t: &[u64], bytes: &'static str) -> (Vec<Tag>, RecordKind, Bytes) {
    (
        tags(t),
        RecordKind::Data,
        Bytes::from_static(bytes.as_bytes()),
    )
}

fn cond(t: &[u64], bytes: &'static str, tag: u64, position: u64) -> (Vec<Tag>, RecordKind, Bytes) {
    (
        tags(t),
        RecordKind::Cond(Cond::at(Tag(tag), position)),
        Bytes::from_static(bytes.as_bytes()),
    )
}

fn trim(tag: u64, below: Seqnum) -> (Vec<Tag>, RecordKind, Bytes) {
    (
        Vec::new(),
        RecordKind::Trim {
            tag: Tag(tag),
            below,
        },
        Bytes::new(),
    )
}

/// A metalog entry of `VIEW` with cuts as (shard, start, delta).
fn entry(position: u64, start: u64, cuts: &[(ShardId, u64, u64)]) -> MetalogEntry {
    MetalogEntry {
        position,
        view: VIEW,
        start_seqnum: s(start),
        cuts: cuts
            .iter()
            .map(|(shard, start, delta)| ShardCut {
                shard: *shard,
                start: *start,
                delta: *delta,
            })
            .collect(),
    }
}

fn record(seqnum: Seqnum, t: &[u64], bytes: &'static str) -> Record {
    Record {
        seqnum,
        book: BOOK,
        tags: tags(t),
        data: Bytes::from_static(bytes.as_bytes()),
        aux: None,
    }
}

fn reply(op: OpId, result: Reply) -> Command {
    Command::Reply { op, result }
}

fn appended(op: OpId, seqnums: &[Seqnum]) -> Command {
    reply(op, Reply::Appended(seqnums.to_vec()))
}

/// Appends `records` as op `op` and checks that it asks for replication.
fn append_ok(engine: &mut LogEngine, op: OpId, records: Vec<(Vec<Tag>, RecordKind, Bytes)>) {
    let commands = engine.append(op, BOOK, records);
    assert!(
        matches!(commands.as_slice(), [Command::Replicate { .. }]),
        "op {op} should replicate, got {commands:?}"
    );
}

#[test]
fn append_is_replicated_then_acknowledged_with_its_seqnums() {
    let mut engine = engine();
    let commands = engine.append(1, BOOK, vec![data(&[5], "a"), data(&[5, 6], "b")]);
    assert_eq!(
        commands,
        vec![Command::Replicate {
            first: LocalId::new(VIEW, 0),
            records: vec![
                LogRecord {
                    book: BOOK,
                    tags: tags(&[5]),
                    kind: RecordKind::Data,
                    data: Bytes::from_static(b"a"),
                },
                LogRecord {
                    book: BOOK,
                    tags: tags(&[5, 6]),
                    kind: RecordKind::Data,
                    data: Bytes::from_static(b"b"),
                },
            ],
        }]
    );
    assert_eq!(engine.stats().pending_records, 2);
    let commands = engine.on_metalog(&entry(0, 10, &[(OWN, 0, 2)]));
    assert_eq!(commands, vec![appended(1, &[s(10), s(11)])]);
    assert_eq!(
        engine.read_next(BOOK, Tag(6), s(0)),
        ReadPlan::Cached(record(s(11), &[5, 6], "b"))
    );
    let stats = engine.stats();
    assert_eq!(
        (
            stats.pending_records,
            stats.pending_ops,
            stats.metalog_position
        ),
        (0, 0, 1)
    );
}

#[test]
fn two_ops_ordered_by_one_entry_are_both_acknowledged_in_order() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[5], "a")]);
    let commands = engine.append(2, BOOK, vec![data(&[5], "b"), data(&[5], "c")]);
    assert!(matches!(
        commands.as_slice(),
        [Command::Replicate { first, .. }] if *first == LocalId::new(VIEW, 1)
    ));
    let commands = engine.on_metalog(&entry(0, 0, &[(OWN, 0, 3)]));
    assert_eq!(
        commands,
        vec![appended(1, &[s(0)]), appended(2, &[s(1), s(2)])]
    );
}

#[test]
fn an_op_split_across_entries_is_acknowledged_once_fully_ordered() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[5], "a"), data(&[5], "b")]);
    assert_eq!(engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)])), vec![]);
    assert_eq!(
        engine.on_metalog(&entry(1, 1, &[(OWN, 1, 1)])),
        vec![appended(1, &[s(0), s(1)])]
    );
}

#[test]
fn cond_append_race_is_decided_by_order() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![cond(&[7], "first", 7, 0)]);
    append_ok(&mut engine, 2, vec![cond(&[7], "second", 7, 0)]);
    let commands = engine.on_metalog(&entry(0, 0, &[(OWN, 0, 2)]));
    assert_eq!(
        commands,
        vec![
            appended(1, &[s(0)]),
            reply(
                2,
                Reply::Err(LogError::CondFailed {
                    seqnum: s(1),
                    stream_len: 1
                })
            ),
        ]
    );
    assert_eq!(
        engine.read_prev(BOOK, Tag(7), Seqnum::MAX),
        ReadPlan::Cached(record(s(0), &[7], "first")),
        "the loser is invisible"
    );
    assert_eq!(engine.stats().cache_records, 1, "the loser is not cached");
}

#[test]
fn bad_appends_are_rejected_with_a_reply() {
    let too_many: Vec<_> = (0..=BATCH_RECORDS_MAX).map(|_| data(&[1], "x")).collect();
    type Records = Vec<(Vec<Tag>, RecordKind, Bytes)>;
    let cases: Vec<(Records, &str)> = vec![
        (vec![], "append has no records"),
        (too_many, "at most 1024 records"),
        (vec![data(&[1], "")], "record data is empty"),
        (vec![data(&[0], "x")], "may not be carried"),
        (
            vec![cond(&[1], "x", 1, 0), data(&[1], "y")],
            "exactly one record",
        ),
        (vec![cond(&[1], "x", 2, 0)], "not among the record's tags"),
        (
            vec![(
                tags(&[1]),
                RecordKind::Trim {
                    tag: Tag(1),
                    below: s(1),
                },
                Bytes::new(),
            )],
            "no tags and no data",
        ),
        (vec![trim(u64::MAX, s(1))], "reserved"),
    ];
    for (records, expect) in cases {
        let mut engine = engine();
        let commands = engine.append(9, BOOK, records);
        let [Command::Reply {
            op: 9,
            result: Reply::Err(LogError::BadArgument(message)),
        }] = commands.as_slice()
        else {
            panic!("expected a bad argument ({expect}), got {commands:?}");
        };
        assert!(message.contains(expect), "{message:?} lacks {expect:?}");
        assert_eq!(engine.stats().pending_records, 0);
    }
}

#[test]
fn appends_beyond_the_pending_limit_are_unavailable_until_ordered() {
    let mut engine = engine_with(1 << 20, 2);
    append_ok(&mut engine, 1, vec![data(&[1], "a")]);
    assert_eq!(
        engine.append(2, BOOK, vec![data(&[1], "b"), data(&[1], "c")]),
        vec![reply(
            2,
            Reply::Err(LogError::Unavailable("too many pending appends".into()))
        )]
    );
    append_ok(&mut engine, 3, vec![data(&[1], "d")]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 2)]));
    append_ok(&mut engine, 2, vec![data(&[1], "b"), data(&[1], "c")]);
}

#[test]
fn blocking_read_parks_until_a_later_metalog_entry_brings_a_match() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[3], "old")]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)]));
    assert_eq!(
        engine.read_next_blocking(100, BOOK, Tag(3), s(1), 5_000),
        Ok(None)
    );
    assert_eq!(
        engine.read_next_blocking(101, BOOK, Tag::ANY, s(1), 5_000),
        Ok(None)
    );
    assert_eq!(
        engine.read_next_blocking(102, BOOK, Tag(4), s(0), 5_000),
        Ok(None)
    );
    assert_eq!(engine.stats().parked_reads, 3);
    append_ok(&mut engine, 2, vec![data(&[3], "new")]);
    let commands = engine.on_metalog(&entry(1, 1, &[(OWN, 1, 1)]));
    let new = ReadPlan::Cached(record(s(1), &[3], "new"));
    assert_eq!(
        commands,
        vec![
            appended(2, &[s(1)]),
            reply(100, Reply::Plan(new.clone())),
            reply(101, Reply::Plan(new)),
        ]
    );
    assert_eq!(engine.stats().parked_reads, 1, "tag 4 still waits");
}

#[test]
fn blocking_read_with_a_match_returns_at_once() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[3], "a")]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)]));
    assert_eq!(
        engine.read_next_blocking(100, BOOK, Tag(3), s(0), 5_000),
        Ok(Some(ReadPlan::Cached(record(s(0), &[3], "a"))))
    );
    assert_eq!(engine.stats().parked_reads, 0);
}

#[test]
fn woken_blocking_read_of_an_uncached_record_asks_for_a_fetch() {
    let mut engine = engine();
    assert_eq!(
        engine.read_next_blocking(100, BOOK, Tag(3), s(0), 5_000),
        Ok(None)
    );
    // Another shard's record: only its index data reaches this gateway.
    let foreign = IndexEntry {
        seqnum: s(0),
        book: BOOK,
        tags: tags(&[3]),
        kind: RecordKind::Data,
    };
    assert_eq!(engine.on_index_data(vec![foreign]), vec![]);
    assert_eq!(
        engine.on_metalog(&entry(0, 0, &[(OTHER, 0, 1)])),
        vec![reply(100, Reply::Plan(ReadPlan::Fetch { seqnum: s(0) }))]
    );
}

#[test]
fn blocking_read_times_out_on_tick() {
    let mut engine = engine();
    engine
        .read_next_blocking(100, BOOK, Tag(3), s(0), 1_000)
        .expect("room to park");
    engine
        .read_next_blocking(101, BOOK, Tag(3), s(0), 2_000)
        .expect("room to park");
    assert_eq!(engine.on_tick(999), vec![]);
    assert_eq!(
        engine.on_tick(1_000),
        vec![reply(100, Reply::Plan(ReadPlan::Empty))]
    );
    append_ok(&mut engine, 1, vec![data(&[3], "late")]);
    assert_eq!(
        engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)])),
        vec![
            appended(1, &[s(0)]),
            reply(
                101,
                Reply::Plan(ReadPlan::Cached(record(s(0), &[3], "late")))
            ),
        ],
        "a timed-out read is not woken"
    );
    assert_eq!(
        engine.on_tick(5_000),
        vec![],
        "a woken read does not time out"
    );
}

#[test]
fn seal_discards_pending_appends_and_restarts_local_counters() {
    let mut engine = engine();
    append_ok(&mut engine, 2, vec![data(&[1], "a")]);
    append_ok(&mut engine, 1, vec![data(&[1], "b"), data(&[1], "c")]);
    assert_eq!(
        engine.seal(ViewId(2)),
        vec![
            reply(1, Reply::Err(LogError::Discarded)),
            reply(2, Reply::Err(LogError::Discarded)),
        ]
    );
    assert_eq!(engine.stats().pending_records, 0);
    let commands = engine.append(3, BOOK, vec![data(&[1], "d")]);
    assert!(matches!(
        commands.as_slice(),
        [Command::Replicate { first, .. }] if *first == LocalId::new(ViewId(2), 0)
    ));
    let next_view = MetalogEntry {
        position: 0,
        view: ViewId(2),
        start_seqnum: Seqnum::new(ViewId(2), 0),
        cuts: vec![ShardCut {
            shard: OWN,
            start: 0,
            delta: 1,
        }],
    };
    assert_eq!(
        engine.on_metalog(&next_view),
        vec![appended(3, &[Seqnum::new(ViewId(2), 0)])]
    );
}

#[test]
fn a_discarded_record_that_is_ordered_anyway_is_indexed() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![cond(&[7], "a", 7, 0)]);
    assert_eq!(
        engine.seal(ViewId(2)),
        vec![reply(1, Reply::Err(LogError::Discarded))]
    );
    assert_eq!(engine.stats().discarded_records, 1);
    // Storage held the record and the sealed view's last entry orders it.
    assert_eq!(engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)])), vec![]);
    assert_eq!(
        engine.read_next(BOOK, Tag(7), s(0)),
        ReadPlan::Cached(record(s(0), &[7], "a"))
    );
    assert_eq!(engine.stats().discarded_ordered, 1);
    // Its retry in the next view loses the condition, as on every other replica.
    append_ok(&mut engine, 2, vec![cond(&[7], "a", 7, 0)]);
    let retry = MetalogEntry {
        position: 1,
        view: ViewId(2),
        start_seqnum: Seqnum::new(ViewId(2), 0),
        cuts: vec![ShardCut {
            shard: OWN,
            start: 0,
            delta: 1,
        }],
    };
    assert_eq!(
        engine.on_metalog(&retry),
        vec![reply(
            2,
            Reply::Err(LogError::CondFailed {
                seqnum: Seqnum::new(ViewId(2), 0),
                stream_len: 1
            })
        )]
    );
}

#[test]
fn discarded_records_are_forgotten_once_a_later_view_is_ordered() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[7], "a")]);
    engine.seal(ViewId(2));
    append_ok(&mut engine, 2, vec![data(&[7], "b")]);
    let next_view = MetalogEntry {
        position: 0,
        view: ViewId(2),
        start_seqnum: Seqnum::new(ViewId(2), 0),
        cuts: vec![ShardCut {
            shard: OWN,
            start: 0,
            delta: 1,
        }],
    };
    assert_eq!(
        engine.on_metalog(&next_view),
        vec![appended(2, &[Seqnum::new(ViewId(2), 0)])]
    );
    assert_eq!(engine.stats().discarded_records, 0);
}

#[test]
fn cache_eviction_by_bytes_keeps_the_newest() {
    let one = cache_record_bytes(&record(s(0), &[1], "aaaa"));
    let mut engine = engine_with(2 * one, 100);
    for (op, bytes) in [(1, "aaaa"), (2, "bbbb"), (3, "cccc")] {
        append_ok(&mut engine, op, vec![data(&[1], bytes)]);
    }
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 3)]));
    let stats = engine.stats();
    assert_eq!((stats.cache_records, stats.cache_bytes), (2, 2 * one));
    assert_eq!(
        engine.read_next(BOOK, Tag(1), s(0)),
        ReadPlan::Fetch { seqnum: s(0) }
    );
    assert_eq!(
        engine.read_next(BOOK, Tag(1), s(1)),
        ReadPlan::Cached(record(s(1), &[1], "bbbb"))
    );
    // s(1) was just used, so fetching s(0) back evicts s(2): the hand passed it, unused.
    engine.cache_insert(record(s(0), &[1], "aaaa"));
    assert_eq!(
        engine.read_prev(BOOK, Tag(1), s(2)),
        ReadPlan::Fetch { seqnum: s(2) }
    );
    let stats = engine.stats();
    assert_eq!((stats.cache_hits, stats.cache_misses), (1, 2));
}

#[test]
fn a_record_larger_than_the_cache_is_not_cached() {
    let mut engine = engine_with(10, 100);
    append_ok(&mut engine, 1, vec![data(&[1], "a")]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)]));
    assert_eq!(engine.stats().cache_records, 0);
    assert_eq!(
        engine.read_next(BOOK, Tag(1), s(0)),
        ReadPlan::Fetch { seqnum: s(0) }
    );
}

#[test]
fn trim_hides_records_drops_them_from_the_cache_and_is_acknowledged() {
    let mut engine = engine();
    append_ok(
        &mut engine,
        1,
        vec![data(&[5], "a"), data(&[5], "b"), data(&[6], "c")],
    );
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 3)]));
    assert_eq!(engine.trims_applied(), 0);
    append_ok(&mut engine, 2, vec![trim(0, s(2))]);
    append_ok(&mut engine, 3, vec![trim(6, s(3))]);
    assert_eq!(
        engine.on_metalog(&entry(1, 3, &[(OWN, 3, 2)])),
        vec![appended(2, &[s(3)]), appended(3, &[s(4)])]
    );
    assert_eq!(engine.trims_applied(), 2, "housekeeping is told of them");
    assert_eq!(
        engine.read_next(BOOK, Tag::ANY, s(0)),
        ReadPlan::Empty,
        "s2's only stream is trimmed past it: it left the book too"
    );
    assert!(!engine.shows(s(2)));
    assert_eq!(engine.read_next(BOOK, Tag(5), s(0)), ReadPlan::Empty);
    assert_eq!(
        engine.read_next(BOOK, Tag(6), s(0)),
        ReadPlan::Empty,
        "tag trim"
    );
    assert_eq!(
        engine.stats().cache_records,
        1,
        "the whole-book trim dropped s0 and s1"
    );
    engine.cache_insert(record(s(0), &[5], "a"));
    assert_eq!(
        engine.stats().cache_records,
        1,
        "a trimmed record is not cached again"
    );
    assert!(matches!(
        engine.set_aux_data(BOOK, s(0), Bytes::from_static(b"x")),
        Err(LogError::BadArgument(_))
    ));
}

#[test]
fn aux_data_shows_in_cached_reads() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[5], "a")]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)]));
    assert_eq!(
        engine.set_aux_data(BOOK, s(0), Bytes::from_static(b"view")),
        Ok(())
    );
    let with_aux = Record {
        aux: Some(Bytes::from_static(b"view")),
        ..record(s(0), &[5], "a")
    };
    assert_eq!(
        engine.read_next(BOOK, Tag(5), s(0)),
        ReadPlan::Cached(with_aux.clone())
    );
    // A copy fetched from storage (without aux) keeps the cached aux data.
    engine.cache_insert(record(s(0), &[5], "a"));
    assert_eq!(
        engine.read_prev(BOOK, Tag::ANY, Seqnum::MAX),
        ReadPlan::Cached(with_aux)
    );
    for (book, seqnum) in [(BookId(1), s(0)), (BOOK, s(1))] {
        assert!(matches!(
            engine.set_aux_data(book, seqnum, Bytes::from_static(b"x")),
            Err(LogError::BadArgument(_))
        ));
    }
}

#[test]
fn restore_then_reads_and_conditions_continue_from_the_log() {
    let mut engine = engine();
    let restored = vec![
        IndexEntry {
            seqnum: s(0),
            book: BOOK,
            tags: tags(&[5]),
            kind: RecordKind::Data,
        },
        IndexEntry {
            seqnum: s(1),
            book: BOOK,
            tags: tags(&[6]),
            kind: RecordKind::Data,
        },
    ];
    engine.restore(None, restored, 4);
    assert_eq!(engine.stats().index_records, 2);
    assert_eq!(
        engine.read_next(BOOK, Tag(5), s(0)),
        ReadPlan::Fetch { seqnum: s(0) }
    );
    engine.cache_insert(record(s(0), &[5], "a"));
    assert_eq!(
        engine.read_next(BOOK, Tag(5), s(0)),
        ReadPlan::Cached(record(s(0), &[5], "a"))
    );
    assert_eq!(
        engine.on_metalog(&entry(3, 1, &[(OWN, 0, 1)])),
        vec![],
        "entries before the restored position are ignored"
    );
    append_ok(&mut engine, 1, vec![cond(&[5], "b", 5, 1)]);
    assert_eq!(
        engine.on_metalog(&entry(4, 2, &[(OWN, 0, 1)])),
        vec![appended(1, &[s(2)])]
    );
    assert_eq!(engine.metalog_position(), 5);
}

#[test]
fn metalog_entries_apply_in_position_order_and_duplicates_are_ignored() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[1], "a")]);
    append_ok(&mut engine, 2, vec![data(&[1], "b")]);
    let first = entry(0, 0, &[(OWN, 0, 1)]);
    let second = entry(1, 1, &[(OWN, 1, 1)]);
    assert_eq!(
        engine.on_metalog(&second),
        vec![],
        "buffered behind the gap"
    );
    assert_eq!(engine.on_metalog(&second), vec![], "a duplicate");
    assert_eq!(engine.stats().metalog_entries_buffered, 1);
    assert_eq!(
        engine.on_metalog(&first),
        vec![appended(1, &[s(0)]), appended(2, &[s(1)])]
    );
    assert_eq!(engine.on_metalog(&first), vec![], "an old position");
    let stats = engine.stats();
    assert_eq!(
        (stats.metalog_position, stats.metalog_entries_ignored),
        (2, 2)
    );
}

#[test]
fn entries_with_other_shards_wait_for_their_index_data() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![cond(&[9], "mine", 9, 1)]);
    // The other shard's record comes first in the entry and takes position 0 of tag 9.
    let mixed = entry(0, 0, &[(OTHER, 0, 1), (OWN, 0, 1)]);
    assert_eq!(engine.on_metalog(&mixed), vec![]);
    assert_eq!(engine.stats().metalog_entries_buffered, 1);
    let foreign = IndexEntry {
        seqnum: s(0),
        book: BOOK,
        tags: tags(&[9]),
        kind: RecordKind::Data,
    };
    assert_eq!(
        engine.on_index_data(vec![foreign.clone()]),
        vec![appended(1, &[s(1)])]
    );
    assert_eq!(
        engine.read_next(BOOK, Tag(9), s(0)),
        ReadPlan::Fetch { seqnum: s(0) },
        "other shards' records are fetched"
    );
    assert_eq!(engine.on_index_data(vec![foreign]), vec![]);
    assert_eq!(engine.stats().index_data_ignored, 1, "already applied");
}

#[test]
fn read_range_plans_each_record() {
    let mut engine = engine_with(cache_record_bytes(&record(s(0), &[1], "b")), 100);
    append_ok(
        &mut engine,
        1,
        vec![data(&[1], "a"), data(&[2], "x"), data(&[1], "b")],
    );
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 3)]));
    let cases: Vec<(Tag, Seqnum, Seqnum, usize, Vec<ReadPlan>)> = vec![
        (
            Tag(1),
            s(0),
            Seqnum::MAX,
            10,
            vec![
                ReadPlan::Fetch { seqnum: s(0) },
                ReadPlan::Cached(record(s(2), &[1], "b")),
            ],
        ),
        (
            Tag(1),
            s(0),
            s(2),
            10,
            vec![ReadPlan::Fetch { seqnum: s(0) }],
        ),
        (
            Tag::ANY,
            s(1),
            Seqnum::MAX,
            1,
            vec![ReadPlan::Fetch { seqnum: s(1) }],
        ),
        (Tag(1), s(2), s(0), 10, vec![]),
        (Tag(3), s(0), Seqnum::MAX, 10, vec![]),
    ];
    for (tag, from, to, limit, expect) in cases {
        assert_eq!(
            engine.read_range(BOOK, tag, from, to, limit),
            expect,
            "tag {tag} in [{from}, {to}) limit {limit}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Input {
        /// An op of `records` records on `tag`; conditional at `cond` if set.
        Append {
            records: usize,
            tag: u64,
            cond: Option<u64>,
        },
        /// The sequencer orders up to this many more replicated records in one entry.
        Cut(u64),
        Seal,
    }

    fn input() -> impl Strategy<Value = Input> {
        let append = (1usize..4, 1u64..4, proptest::option::of(0u64..3));
        prop_oneof![
            4 => append.prop_map(|(records, tag, cond)| {
                let records = if cond.is_some() { 1 } else { records };
                Input::Append { records, tag, cond }
            }),
            3 => (1u64..6).prop_map(Input::Cut),
            1 => Just(Input::Seal),
        ]
    }

    /// A one-shard sequencer: orders replicated records of the current view.
    struct Sequencer {
        view: ViewId,
        replicated: u64,
        ordered: u64,
        position: u64,
        next_seqnum: Seqnum,
    }

    impl Sequencer {
        fn order(&mut self, engine: &mut LogEngine, k: u64) -> Vec<Command> {
            let delta = k.min(self.replicated - self.ordered);
            if delta == 0 {
                return Vec::new();
            }
            let entry = MetalogEntry {
                position: self.position,
                view: self.view,
                start_seqnum: self.next_seqnum,
                cuts: vec![ShardCut {
                    shard: OWN,
                    start: self.ordered,
                    delta,
                }],
            };
            self.ordered += delta;
            self.position += 1;
            self.next_seqnum = entry.end_seqnum();
            engine.on_metalog(&entry)
        }

        fn seal(&mut self) -> ViewId {
            self.view = ViewId(self.view.0 + 1);
            self.replicated = 0;
            self.ordered = 0;
            self.next_seqnum = Seqnum::new(self.view, 0);
            self.view
        }
    }

    proptest! {
        /// Every append op is answered exactly once; answered seqnums are strictly increasing
        /// in answer order; the cache never exceeds its limit; pending counts drain to zero.
        #[test]
        fn every_op_is_answered_once_in_order(
            inputs in proptest::collection::vec(input(), 0..120),
        ) {
            let cache_bytes_max = 3 * cache_record_bytes(&record(s(0), &[1], "x"));
            let mut engine = engine_with(cache_bytes_max, 8);
            let mut sequencer = Sequencer {
                view: VIEW,
                replicated: 0,
                ordered: 0,
                position: 0,
                next_seqnum: s(0),
            };
            let mut open: BTreeMap<OpId, usize> = BTreeMap::new();
            let mut answered: BTreeSet<OpId> = BTreeSet::new();
            let mut last_seqnum: Option<Seqnum> = None;
            let mut commands = Vec::new();
            for (op, input) in (1..).zip(inputs) {
                match input {
                    Input::Append { records, tag, cond: c } => {
                        let batch = match c {
                            Some(p) => vec![cond(&[tag], "x", tag, p)],
                            None => (0..records).map(|_| data(&[tag], "x")).collect(),
                        };
                        let out = engine.append(op, BOOK, batch);
                        if let [Command::Replicate { first, records: r }] = out.as_slice() {
                            prop_assert_eq!(
                                *first,
                                LocalId::new(sequencer.view, sequencer.replicated)
                            );
                            sequencer.replicated += r.len() as u64;
                            open.insert(op, r.len());
                        } else {
                            commands.extend(out);
                        }
                    }
                    Input::Cut(k) => commands.extend(sequencer.order(&mut engine, k)),
                    Input::Seal => {
                        let next = sequencer.seal();
                        commands.extend(engine.seal(next));
                    }
                }
                prop_assert!(engine.stats().cache_bytes <= cache_bytes_max);
            }
            commands.extend(sequencer.order(&mut engine, u64::MAX));
            for command in commands {
                let Command::Reply { op, result } = command else {
                    prop_assert!(false, "only replies expected here");
                    continue;
                };
                prop_assert!(answered.insert(op), "op {} answered twice", op);
                match result {
                    Reply::Appended(seqnums) => {
                        prop_assert_eq!(Some(seqnums.len()), open.remove(&op));
                        for seqnum in seqnums {
                            prop_assert!(last_seqnum < Some(seqnum));
                            last_seqnum = Some(seqnum);
                        }
                    }
                    Reply::Err(LogError::CondFailed { seqnum, .. }) => {
                        prop_assert_eq!(open.remove(&op), Some(1));
                        prop_assert!(last_seqnum < Some(seqnum));
                        last_seqnum = Some(seqnum);
                    }
                    Reply::Err(LogError::Discarded) => {
                        prop_assert!(open.remove(&op).is_some());
                    }
                    Reply::Err(LogError::Unavailable(_)) => {
                        prop_assert!(!open.contains_key(&op));
                    }
                    other => prop_assert!(false, "unexpected reply {:?}", other),
                }
            }
            prop_assert!(open.is_empty(), "unanswered ops: {:?}", open);
            let stats = engine.stats();
            prop_assert_eq!((stats.pending_ops, stats.pending_records), (0, 0));
        }
    }
}

#[test]
fn a_storage_failure_fails_ops_from_the_failed_record_and_every_later_append() {
    let mut engine = engine();
    append_ok(&mut engine, 1, vec![data(&[1], "stored")]);
    append_ok(
        &mut engine,
        2,
        vec![data(&[1], "lost"), data(&[1], "lost too")],
    );
    append_ok(&mut engine, 3, vec![data(&[1], "queued")]);
    let error = LogError::Io("disk full".into());
    let failed_from = LocalId::new(engine.view(), 1);
    assert_eq!(
        engine.fail(Some(failed_from), error.clone()),
        vec![
            reply(2, Reply::Err(error.clone())),
            reply(3, Reply::Err(error.clone()))
        ]
    );
    assert_eq!(
        engine.append(4, BOOK, vec![data(&[1], "later")]),
        vec![reply(4, Reply::Err(error.clone()))]
    );
    // The stored record may still be ordered, and is acknowledged then.
    assert_eq!(
        engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)])),
        vec![appended(1, &[s(0)])]
    );
    assert_eq!(engine.fail(None, error), vec![], "nothing is left pending");
}

#[test]
fn cached_records_do_not_keep_the_buffer_their_data_came_in() {
    let mut engine = engine();
    let request_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let body = request_buffer.slice(0..4);
    engine.append(1, BOOK, vec![(tags(&[1]), RecordKind::Data, body.clone())]);
    engine.on_metalog(&entry(0, 0, &[(OWN, 0, 1)]));
    let ReadPlan::Cached(cached) = engine.read_next(BOOK, Tag(1), s(0)) else {
        panic!("the record is cached");
    };
    assert_eq!(cached.data, body);
    assert_ne!(
        cached.data.as_ptr(),
        body.as_ptr(),
        "the cache holds a compact copy"
    );
}
