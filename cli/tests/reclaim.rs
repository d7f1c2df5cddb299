//! Trimming a book deletes the segments that hold only trimmed records, and a restart after
//! that still reads the same log and decides conditional appends at the same positions.

use bytes::Bytes;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Seqnum, Tag};
use tally_cli::node::{Node, NodeConfig};

const BOOK: BookId = BookId(0);
const STEPS: Tag = Tag(9);

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new(dir.to_path_buf());
    config.segment_bytes_max = 64 * 1024;
    config
}

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

async fn all(log: &dyn LogBook, tag: Tag) -> Vec<Seqnum> {
    let range = ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 10_000,
    };
    log.read_range(BOOK, tag, range)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.seqnum)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_reclaims_segments_and_restart_keeps_positions() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let log = node.log.clone();
    for position in 0..3 {
        log.cond_append(
            BOOK,
            &[STEPS],
            Bytes::from_static(b"step"),
            Cond::at(STEPS, position),
        )
        .await
        .unwrap();
    }
    let mut seqnums = Vec::new();
    for batch in 0..20 {
        let records = (0..30)
            .map(|i| AppendRequest::new(vec![Tag(1)], vec![(batch * 30 + i) as u8; 1024]))
            .collect();
        seqnums.extend(log.append_batch(BOOK, records).await.unwrap());
    }
    let before = segment_count(dir.path());
    assert!(before >= 8, "{before} segments");

    let keep_from = seqnums[500];
    log.trim(BOOK, Tag::ANY, keep_from).await.unwrap();
    let after = segment_count(dir.path());
    assert!(
        after < before / 2,
        "{before} segments before the trim, {after} after"
    );
    assert_eq!(all(&*log, Tag::ANY).await, seqnums[500..].to_vec());
    assert!(all(&*log, STEPS).await.is_empty());

    node.shutdown();
    drop(log);
    drop(node);
    let node = Node::start(config(dir.path())).await.unwrap();
    let log = node.log.clone();
    assert_eq!(
        all(&*log, Tag::ANY).await,
        seqnums[500..].to_vec(),
        "the same records after restart"
    );
    let record = log
        .read_next(BOOK, Tag(1), keep_from)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.data, vec![(500 % 256) as u8; 1024]);
    let stale = log
        .cond_append(
            BOOK,
            &[STEPS],
            Bytes::from_static(b"again"),
            Cond::at(STEPS, 2),
        )
        .await;
    assert!(
        matches!(stale, Err(LogError::CondFailed { stream_len: 3, .. })),
        "{stale:?}"
    );
    log.cond_append(
        BOOK,
        &[STEPS],
        Bytes::from_static(b"next"),
        Cond::at(STEPS, 3),
    )
    .await
    .unwrap();
    node.shutdown();
}
