//! Behaviour of `Store` through its public API: recovery, torn tails, corruption, group
//! commit, segment roll and reclaim, and local-id checks. Uses real files in temp dirs.

use bytes::Bytes;
use logbook::wire::{IndexEntry, LocalId, LogRecord, MetalogEntry, RecordKind, ShardCut, ShardId};
use logbook::{BookId, Cond, Seqnum, Tag, ViewId};
use std::path::Path;
use storage_node::{codec, segment_path, Durability, Store, StoreConfig, StoreError};

fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
}

fn open(config: StoreConfig) -> (Store, storage_node::Recovery) {
    Store::open(config).expect("open store")
}

fn record(tag: u64, data: &str) -> LogRecord {
    LogRecord {
        book: BookId(1),
        tags: vec![Tag(tag)],
        kind: RecordKind::Data,
        data: Bytes::from(data.to_string()),
    }
}

fn id(view: u16, counter: u64) -> LocalId {
    LocalId::new(ViewId(view), counter)
}

fn seq(view: u16, position: u64) -> Seqnum {
    Seqnum::new(ViewId(view), position)
}

fn entry(position: u64, view: u16, start: u64, cuts: &[(u32, u64, u64)]) -> MetalogEntry {
    MetalogEntry {
        position,
        view: ViewId(view),
        start_seqnum: seq(view, start),
        cuts: cuts
            .iter()
            .map(|&(shard, start, delta)| ShardCut {
                shard: ShardId(shard),
                start,
                delta,
            })
            .collect(),
    }
}

/// Offsets of the frames in a segment file, in order.
fn frame_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        offsets.push(offset as u64);
        offset += codec::check(&bytes[offset..]).expect("valid frame");
    }
    offsets
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write segment");
}

async fn append_one_by_one(store: &Store, shard: u32, view: u16, counters: std::ops::Range<u64>) {
    for c in counters {
        store
            .append_records(
                ShardId(shard),
                id(view, c),
                vec![record(7, &format!("s{shard}v{view}c{c}"))],
            )
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn torn_tail_is_truncated_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 0, 0..5).await;
    store.shutdown();
    let seg0 = segment_path(dir.path(), 0);
    let len = std::fs::metadata(&seg0).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg0)
        .expect("open");
    file.set_len(len - 3).expect("chop");
    drop(file);

    let (store, recovery) = open(config(dir.path()));
    assert_eq!(recovery.records, 4);
    assert!(recovery.truncated_tail_bytes > 0);
    assert_eq!(store.progress().get(&ShardId(0)), Some(&(ViewId(0), 4)));
    // The torn record is gone, so appending it again is accepted.
    append_one_by_one(&store, 0, 0, 4..6).await;
    store
        .append_metalog(entry(0, 0, 0, &[(0, 0, 6)]))
        .await
        .expect("metalog");
    for c in 0..6 {
        let got = store.read(seq(0, c)).await.expect("read").expect("present");
        assert_eq!(got.record.data, Bytes::from(format!("s0v0c{c}")));
    }
    store.shutdown();
}

#[tokio::test]
async fn zero_filled_tail_is_truncated_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 0, 0..5).await;
    store.shutdown();
    let seg0 = segment_path(dir.path(), 0);
    let mut bytes = std::fs::read(&seg0).expect("read");
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&seg0, bytes).expect("write");

    let (store, recovery) = open(config(dir.path()));
    assert_eq!((recovery.records, recovery.truncated_tail_bytes), (5, 4096));
    append_one_by_one(&store, 0, 0, 5..6).await;
    store.shutdown();
    let (_store, recovery) = open(config(dir.path()));
    assert_eq!((recovery.records, recovery.truncated_tail_bytes), (6, 0));
}

#[tokio::test]
async fn flipped_bit_in_sealed_data_is_reported_as_corruption() {
    // A bad record followed by valid frames in the last segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 0, 0..5).await;
    store.shutdown();
    let seg0 = segment_path(dir.path(), 0);
    let offsets = frame_offsets(&seg0);
    let bad = offsets[3]; // header, records 0 and 1, then record 2
    flip_bit(&seg0, bad + 20);
    match Store::open(config(dir.path())) {
        Err(StoreError::Corrupt {
            segment,
            offset_bytes,
            ..
        }) => assert_eq!(
            (segment.as_str(), offset_bytes),
            ("00000000000000000000.seg", bad)
        ),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
    // Nothing was truncated: the file is as damaged as before.
    assert_eq!(
        frame_offsets_len(&seg0),
        std::fs::metadata(&seg0).expect("stat").len()
    );

    // The tail of an earlier segment is never a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 0, 0..3).await;
    store.shutdown();
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 0, 3..5).await;
    store.shutdown();
    let seg0 = segment_path(dir.path(), 0);
    let last = *frame_offsets(&seg0).last().expect("frames");
    flip_bit(&seg0, last + 12);
    match Store::open(config(dir.path())) {
        Err(StoreError::Corrupt {
            segment,
            offset_bytes,
            ..
        }) => assert_eq!(
            (segment.as_str(), offset_bytes),
            ("00000000000000000000.seg", last)
        ),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn crc_valid_metalog_entry_that_overflows_is_reported_as_corruption() {
    // Recovery panicked on overflow computing this entry's seqnums.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    append_one_by_one(&store, 0, 1, 0..2).await;
    store.shutdown();
    let seg0 = segment_path(dir.path(), 0);
    let mut bytes = std::fs::read(&seg0).expect("read");
    let at = bytes.len() as u64;
    codec::encode_metalog(&entry(0, 1, 0, &[(0, 0, u64::MAX), (1, 0, 2)]), &mut bytes);
    std::fs::write(&seg0, bytes).expect("write");
    match Store::open(config(dir.path())) {
        Err(StoreError::Corrupt {
            segment,
            offset_bytes,
            reason,
        }) => {
            assert_eq!(
                (segment.as_str(), offset_bytes),
                ("00000000000000000000.seg", at)
            );
            assert!(reason.contains("past a view's local counters"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
}

/// The file's length as the sum of its frames, reading past bad CRCs by their length field.
fn frame_offsets_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read segment");
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        offset += 8 + len as usize;
    }
    offset as u64
}

#[tokio::test]
async fn recovery_round_trip_restores_metalog_index_progress_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, recovery) = open(config(dir.path()));
    assert_eq!(recovery.segments, 0);
    // Shard 2 has leftovers of view 0 that are never ordered.
    append_one_by_one(&store, 2, 0, 0..2).await;
    append_one_by_one(&store, 0, 1, 0..3).await;
    let cond = LogRecord {
        book: BookId(2),
        tags: vec![Tag(3), Tag(4)],
        kind: RecordKind::Cond(Cond::at(Tag(3), 0)),
        data: Bytes::from_static(b"cond"),
    };
    let trim = LogRecord {
        book: BookId(2),
        tags: vec![],
        kind: RecordKind::Trim {
            tag: Tag::ANY,
            below: seq(1, 1),
        },
        data: Bytes::new(),
    };
    store
        .append_records(
            ShardId(1),
            id(1, 0),
            vec![cond.clone(), trim.clone(), record(9, "unordered")],
        )
        .await
        .expect("append");
    let metalog = vec![
        entry(0, 1, 0, &[(0, 0, 2), (1, 0, 2)]),
        entry(1, 1, 4, &[(0, 2, 1)]),
    ];
    for e in &metalog {
        store.append_metalog(e.clone()).await.expect("metalog");
    }
    let mut before = Vec::new();
    for p in 0..6 {
        before.push(store.read(seq(1, p)).await.expect("read"));
    }
    assert!(before[..5].iter().all(Option::is_some));
    assert_eq!(before[5], None);
    assert_eq!(before[2].as_ref().map(|r| &r.record), Some(&cond));
    let progress = store.progress();
    store.shutdown();
    assert!(matches!(
        store.read(seq(1, 0)).await,
        Err(StoreError::Closed)
    ));

    let (store, recovery) = open(config(dir.path()));
    assert_eq!(recovery.metalog, metalog);
    assert_eq!(recovery.last_metalog.as_ref(), metalog.last());
    assert_eq!(recovery.max_view, ViewId(1));
    assert_eq!(recovery.records, 8);
    let data = |s: u64, tag: u64| IndexEntry {
        seqnum: seq(1, s),
        book: BookId(1),
        tags: vec![Tag(tag)],
        kind: RecordKind::Data,
    };
    let expected = vec![
        data(0, 7),
        data(1, 7),
        IndexEntry {
            seqnum: seq(1, 2),
            book: BookId(2),
            tags: cond.tags.clone(),
            kind: cond.kind,
        },
        IndexEntry {
            seqnum: seq(1, 3),
            book: BookId(2),
            tags: vec![],
            kind: trim.kind,
        },
        data(4, 7),
    ];
    assert_eq!(recovery.ordered, expected);
    assert_eq!(store.progress(), progress);
    assert_eq!(
        progress.into_iter().collect::<Vec<_>>(),
        vec![
            (ShardId(0), (ViewId(1), 3)),
            (ShardId(1), (ViewId(1), 3)),
            (ShardId(2), (ViewId(0), 2)),
        ]
    );
    for (p, want) in before.iter().enumerate() {
        assert_eq!(&store.read(seq(1, p as u64)).await.expect("read"), want);
    }
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    let before = store.stats();
    let tasks: Vec<_> = (0..200u32)
        .map(|shard| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_records(ShardId(shard), id(0, 0), vec![record(1, "x")])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let after = store.stats();
    let (appends, fsyncs) = (after.appends - before.appends, after.fsyncs - before.fsyncs);
    assert_eq!(appends, 200);
    assert!(
        fsyncs * 4 <= appends,
        "{fsyncs} fsyncs for {appends} appends"
    );
    assert_eq!(store.progress().len(), 200);
    store.shutdown();
}

#[tokio::test]
async fn metalog_entries_queued_together_are_durable_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    let max = storage_node::METALOG_IN_FLIGHT_MAX as u64;
    // Each round: records queued, then their entry queued behind them before the records (or
    // any earlier entry) are durable, as a pipelining sequencer does.
    let mut pending = Vec::new();
    for round in 0..3 * max {
        let durable = store
            .enqueue_records(ShardId(0), id(0, round), vec![record(round, "r")])
            .await
            .expect("queue records");
        pending.push(tokio::spawn(durable));
        let committed = store.append_metalog(entry(round, 0, round, &[(0, round, 1)]));
        pending.push(tokio::spawn(committed));
        if pending.len() as u64 >= 2 * max {
            for p in pending.drain(..2) {
                p.await.expect("join").expect("durable");
            }
        }
    }
    for p in pending {
        p.await.expect("join").expect("durable");
    }
    store.shutdown();
    let (store, recovery) = open(config(dir.path()));
    let positions: Vec<u64> = recovery.metalog.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..3 * max).collect::<Vec<_>>());
    for p in 0..3 * max {
        let got = store.read(seq(0, p)).await.expect("read").expect("ordered");
        assert_eq!(got.record.tags, vec![Tag(p)]);
    }
    store.shutdown();
}

/// Appends `batches` batches of 10 records of shard 0 (record `c` tagged `c + 1`), each
/// ordered by a metalog entry of its own.
async fn append_ordered(store: &Store, batches: u64, payload: &str) {
    for batch in 0..batches {
        for c in batch * 10..batch * 10 + 10 {
            store
                .append_records(ShardId(0), id(0, c), vec![record(c + 1, payload)])
                .await
                .expect("append");
        }
        store
            .append_metalog(entry(batch, 0, batch * 10, &[(0, batch * 10, 10)]))
            .await
            .expect("metalog");
    }
}

#[tokio::test]
async fn segment_roll_and_reclaim_delete_only_an_ordered_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = || StoreConfig {
        segment_bytes_max: 4096,
        ..config(dir.path())
    };
    let (store, _) = open(small());
    let payload = "p".repeat(200);
    append_ordered(&store, 10, &payload).await;
    let segments_before = list_segments(dir.path());
    assert!(
        segments_before.len() >= 5,
        "rolled into {segments_before:?}"
    );

    let freed = store
        .reclaim(seq(0, 50), Bytes::from_static(b"cp1"))
        .await
        .expect("reclaim");
    assert!(freed.segments >= 1 && freed.bytes > 0, "{freed:?}");
    let segments_after = list_segments(dir.path());
    assert_eq!(segments_after.len(), segments_before.len() - freed.segments);
    assert_eq!(
        segments_after[..],
        segments_before[freed.segments..],
        "only a prefix is deleted"
    );
    for p in 0..50 {
        assert_eq!(store.read(seq(0, p)).await.expect("read"), None);
    }
    for p in 50..100 {
        let got = store.read(seq(0, p)).await.expect("read").expect("kept");
        assert_eq!(got.record.tags, vec![Tag(p + 1)]);
    }
    assert_eq!(store.stats().segments_deleted, freed.segments as u64);
    store.shutdown();

    let (store, recovery) = open(small());
    assert_eq!(
        recovery.checkpoint,
        Some((seq(0, 50), Bytes::from_static(b"cp1")))
    );
    assert_eq!(recovery.last_metalog, Some(entry(9, 0, 90, &[(0, 90, 10)])));
    let ordered: Vec<u64> = recovery
        .ordered
        .iter()
        .map(|e| e.seqnum.position())
        .collect();
    assert_eq!(ordered, (50..100).collect::<Vec<_>>());
    assert_eq!(store.progress().get(&ShardId(0)), Some(&(ViewId(0), 100)));
    assert_eq!(store.read(seq(0, 10)).await.expect("read"), None);
    assert!(store.read(seq(0, 99)).await.expect("read").is_some());
    // The shard continues where it was, even with its early segments gone.
    store
        .append_records(ShardId(0), id(0, 100), vec![record(1, "next")])
        .await
        .expect("append");

    // Reclaiming everything ordered leaves the active segment and the newest checkpoint.
    store
        .append_metalog(entry(10, 0, 100, &[(0, 100, 1)]))
        .await
        .expect("metalog");
    store
        .reclaim(seq(0, 101), Bytes::from_static(b"cp2"))
        .await
        .expect("reclaim");
    store.shutdown();
    let (_store, recovery) = open(small());
    assert_eq!(
        recovery.checkpoint,
        Some((seq(0, 101), Bytes::from_static(b"cp2")))
    );
    assert_eq!(recovery.last_metalog.map(|e| e.position), Some(10));
    assert!(recovery.ordered.is_empty());
}

#[tokio::test]
async fn compaction_drops_the_payloads_of_dead_records_and_recovery_finds_the_same_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = || StoreConfig {
        segment_bytes_max: 8192,
        ..config(dir.path())
    };
    let (store, before) = open(small());
    assert!(before.ordered.is_empty());
    let payload = "p".repeat(300);
    append_ordered(&store, 6, &payload).await;
    let sealed = store.sealed_segments();
    assert!(sealed.len() >= 2, "{sealed:?}");
    let (number, bytes) = sealed[0];
    // Odd positions are dead.
    let dead =
        |asked: &[Seqnum]| -> Vec<bool> { asked.iter().map(|s| s.position() % 2 == 1).collect() };
    // Too few dead bytes for the fraction asked: nothing changes.
    let kept = store.compact(number, 0.99, dead).expect("compact");
    assert!(!kept.rewritten);
    assert_eq!(
        std::fs::metadata(segment_path(dir.path(), number))
            .unwrap()
            .len(),
        bytes
    );
    let done = store.compact(number, 0.2, dead).expect("compact");
    assert!(done.rewritten && done.records > 0, "{done:?}");
    assert_eq!(done.bytes_before, bytes);
    assert_eq!(done.bytes_after, bytes - done.records * 300, "{done:?}");
    assert_eq!(
        std::fs::metadata(segment_path(dir.path(), number))
            .unwrap()
            .len(),
        done.bytes_after
    );
    assert_eq!(store.stats().bytes_compacted, bytes - done.bytes_after);
    // Live records read back whole from the new file, dead ones with no payload; later
    // segments are untouched.
    let check = |got: storage_node::StoredRecord, p: u64| {
        assert_eq!(got.record.tags, vec![Tag(p + 1)]);
        let expected = if p % 2 == 1 && got.local_id.counter() < done.records * 2 {
            ""
        } else {
            payload.as_str()
        };
        assert_eq!(got.record.data, expected.as_bytes(), "{p}");
    };
    for p in 0..60 {
        check(store.read(seq(0, p)).await.expect("read").expect("kept"), p);
    }
    // A second pass finds nothing more to drop; the newest segment is not compacted.
    assert!(!store.compact(number, 0.0, dead).expect("compact").rewritten);
    let newest = list_segments(dir.path()).len() as u64 - 1;
    assert!(store.compact(newest, 0.0, dead).is_err());
    store.shutdown();
    // A leftover of a compaction cut short is removed; recovery finds every record.
    std::fs::write(
        dir.path().join("00000000000000000001.seg.compacting"),
        b"torn",
    )
    .unwrap();
    let (store, after) = open(small());
    let seqnums: Vec<u64> = after.ordered.iter().map(|e| e.seqnum.position()).collect();
    assert_eq!(seqnums, (0..60).collect::<Vec<_>>());
    assert!(after.ordered.iter().all(|e| e.tags.len() == 1));
    for p in 0..60 {
        check(store.read(seq(0, p)).await.expect("read").expect("kept"), p);
    }
    assert!(!dir
        .path()
        .join("00000000000000000001.seg.compacting")
        .exists());
}

#[tokio::test]
async fn unordered_leftovers_of_an_older_view_are_reclaimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = || StoreConfig {
        segment_bytes_max: 4096,
        ..config(dir.path())
    };
    let (store, _) = open(small());
    let payload = "q".repeat(500);
    for c in 0..20 {
        store
            .append_records(ShardId(0), id(0, c), vec![record(1, &payload)])
            .await
            .expect("append");
    }
    // View 0 ends with only 5 of the 20 records ordered.
    store
        .append_metalog(entry(0, 0, 0, &[(0, 0, 5)]))
        .await
        .expect("metalog");
    // While view 0 is the newest, the unordered records may still be ordered: keep them.
    let kept = store
        .reclaim(seq(0, 5), Bytes::new())
        .await
        .expect("reclaim");
    assert_eq!(kept.segments, 0);
    store
        .append_records(ShardId(0), id(1, 0), vec![record(1, "v1")])
        .await
        .expect("append");
    store
        .append_metalog(entry(1, 1, 0, &[(0, 0, 1)]))
        .await
        .expect("metalog");
    let freed = store
        .reclaim(seq(1, 0), Bytes::new())
        .await
        .expect("reclaim");
    assert!(freed.segments >= 2, "{freed:?}");
    assert!(store.read(seq(1, 0)).await.expect("read").is_some());
    store.shutdown();
}

fn list_segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn local_id_gaps_and_repeats_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    let shard = ShardId(4);
    let append = |first: LocalId, n: usize| {
        let store = store.clone();
        async move {
            store
                .append_records(shard, first, (0..n).map(|_| record(1, "r")).collect())
                .await
        }
    };
    append(id(2, 0), 3).await.expect("first append");
    assert!(
        matches!(append(id(2, 4), 1).await, Err(StoreError::BadArgument(m)) if m.contains("gap"))
    );
    assert!(
        matches!(append(id(2, 2), 1).await, Err(StoreError::BadArgument(m)) if m.contains("repeats"))
    );
    assert!(matches!(
        append(id(3, 1), 1).await,
        Err(StoreError::BadArgument(_))
    ));
    assert!(matches!(
        append(id(1, 0), 1).await,
        Err(StoreError::BadArgument(_))
    ));
    assert!(matches!(
        append(id(2, 3), 0).await,
        Err(StoreError::BadArgument(_))
    ));
    append(id(2, 3), 2).await.expect("continues");
    assert_eq!(store.progress().get(&shard), Some(&(ViewId(2), 5)));
    store.shutdown();

    // The cursor survives a restart.
    let (store, _) = open(config(dir.path()));
    let append = |first: LocalId| {
        let store = store.clone();
        async move {
            store
                .append_records(shard, first, vec![record(1, "r")])
                .await
        }
    };
    assert!(matches!(
        append(id(2, 4)).await,
        Err(StoreError::BadArgument(_))
    ));
    append(id(2, 5)).await.expect("continues after reopen");
    append(id(3, 0)).await.expect("a newer view starts at 0");
    store.shutdown();
}

#[tokio::test]
async fn metalog_gaps_and_repeats_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    store
        .append_metalog(entry(0, 0, 0, &[(0, 0, 2)]))
        .await
        .expect("first");
    for bad in [
        entry(0, 0, 0, &[(0, 0, 2)]),
        entry(2, 0, 2, &[]),
        entry(1, 0, 1, &[]),
    ] {
        assert!(matches!(
            store.append_metalog(bad).await,
            Err(StoreError::BadArgument(_))
        ));
    }
    store
        .append_metalog(entry(1, 0, 2, &[]))
        .await
        .expect("next");
    store.shutdown();
}

#[tokio::test]
async fn calls_after_shutdown_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(config(dir.path()));
    store.shutdown();
    store.shutdown();
    let res = store
        .append_records(ShardId(0), id(0, 0), vec![record(1, "r")])
        .await;
    assert!(matches!(res, Err(StoreError::Closed)));
    assert!(matches!(
        store.append_metalog(entry(0, 0, 0, &[])).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.reclaim(Seqnum::ZERO, Bytes::new()).await,
        Err(StoreError::Closed)
    ));
}

#[tokio::test]
async fn async_durability_acknowledges_and_recovers_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = || StoreConfig {
        durability: Durability::Async {
            flush_interval_ms: 5,
        },
        ..config(dir.path())
    };
    let (store, _) = open(cfg());
    append_one_by_one(&store, 0, 0, 0..10).await;
    store.shutdown();
    let (_store, recovery) = open(cfg());
    assert_eq!(recovery.records, 10);
}

#[tokio::test]
async fn oversized_records_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = StoreConfig {
        segment_bytes_max: 10,
        ..config(dir.path())
    };
    assert!(matches!(Store::open(bad), Err(StoreError::BadArgument(_))));
    let (store, _) = open(config(dir.path()));
    let mut big = record(1, "");
    big.data = Bytes::from(vec![0u8; logbook::RECORD_BYTES_MAX + 1]);
    let res = store.append_records(ShardId(0), id(0, 0), vec![big]).await;
    assert!(matches!(res, Err(StoreError::BadArgument(_))));
    store.shutdown();

    // Records at the limit fit even in a store of small segments: each gets its own segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let small = || StoreConfig {
        segment_bytes_max: 4096,
        ..config(dir.path())
    };
    let (store, _) = open(small());
    let mut max = record(1, "");
    max.data = Bytes::from(vec![7u8; logbook::RECORD_BYTES_MAX]);
    store
        .append_records(ShardId(0), id(0, 0), vec![max.clone(), max.clone()])
        .await
        .expect("append max records");
    store
        .append_metalog(entry(0, 0, 0, &[(0, 0, 2)]))
        .await
        .expect("metalog");
    store.shutdown();
    let (store, recovery) = open(small());
    assert_eq!(recovery.records, 2);
    let got = store.read(seq(0, 1)).await.expect("read").expect("present");
    assert_eq!(got.record, max);
    store.shutdown();
}

#[test]
fn a_second_store_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Store::open(StoreConfig::new(dir.path())).unwrap();
    let second = Store::open(StoreConfig::new(dir.path()));
    let err = second.err().expect("the dir is locked");
    assert!(err.to_string().contains("in use"), "{err}");
    first.shutdown();
    drop(first);
    Store::open(StoreConfig::new(dir.path())).expect("the lock goes with the store");
}

#[tokio::test]
async fn a_lower_checkpoint_after_a_higher_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes_max = 4096;
    let (store, _) = open(cfg.clone());
    let records: Vec<LogRecord> = (0..100).map(|i| record(1, &"x".repeat(200 + i))).collect();
    for (i, r) in records.into_iter().enumerate() {
        store
            .append_records(ShardId(0), id(1, i as u64), vec![r])
            .await
            .unwrap();
        store
            .append_metalog(entry(i as u64, 1, i as u64, &[(0, i as u64, 1)]))
            .await
            .unwrap();
    }
    let high = store
        .reclaim(seq(1, 80), Bytes::from_static(b"high"))
        .await
        .unwrap();
    assert!(high.segments > 0);
    let low = store
        .reclaim(seq(1, 20), Bytes::from_static(b"low"))
        .await
        .unwrap();
    assert_eq!(low.segments, 0);
    store.shutdown();
    drop(store);
    let (_store, recovery) = open(cfg);
    assert_eq!(
        recovery.checkpoint,
        Some((seq(1, 80), Bytes::from_static(b"high")))
    );
    assert_eq!(recovery.ordered.first().map(|e| e.seqnum), Some(seq(1, 80)));
}
