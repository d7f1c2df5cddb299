//! The conformance suite: the behaviour every `LogBook` implementation must show. Each check is
//! a public async function over `&dyn LogBook`; `conformance_tests!` turns them into one test
//! each for an implementation, given an async constructor returning the log and a guard that
//! keeps its resources (temp dirs, servers) alive.

use crate::{
    AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Seqnum, Tag, BATCH_RECORDS_MAX,
    RECORD_BYTES_MAX, TAGS_PER_RECORD_MAX,
};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

const B: BookId = BookId(7);

fn tags(ts: &[u64]) -> Vec<Tag> {
    ts.iter().map(|t| Tag(*t)).collect()
}

async fn append(log: &dyn LogBook, book: BookId, ts: &[u64], data: &str) -> Seqnum {
    log.append(book, &tags(ts), Bytes::copy_from_slice(data.as_bytes()))
        .await
        .expect("append succeeds")
}

async fn read_all(log: &dyn LogBook, book: BookId, tag: Tag) -> Vec<(Seqnum, String)> {
    let range = ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 10_000,
    };
    log.read_range(book, tag, range)
        .await
        .expect("read_range succeeds")
        .into_iter()
        .map(|r| {
            (
                r.seqnum,
                String::from_utf8(r.data.to_vec()).expect("utf-8 test data"),
            )
        })
        .collect()
}

/// Seqnums grow strictly in append order, and every record reads back with its tags and data.
pub async fn appends_get_strictly_increasing_seqnums(log: &dyn LogBook) {
    let mut last = Seqnum::ZERO;
    for i in 0..20 {
        let s = append(log, B, &[1], &format!("r{i}")).await;
        assert!(s > last, "seqnum {s} after {last}");
        last = s;
    }
    let record = log
        .read_prev(B, Tag(1), Seqnum::MAX)
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(
        (record.seqnum, record.tags.clone(), &record.data[..]),
        (last, tags(&[1]), &b"r19"[..])
    );
}

/// A tag-filtered read returns exactly the records carrying that tag, in order.
pub async fn tag_filtered_reads_return_only_that_tag(log: &dyn LogBook) {
    let a1 = append(log, B, &[10], "a1").await;
    let b1 = append(log, B, &[11], "b1").await;
    let ab = append(log, B, &[10, 11], "ab").await;
    let _none = append(log, B, &[], "untagged").await;
    assert_eq!(
        read_all(log, B, Tag(10)).await,
        vec![(a1, "a1".into()), (ab, "ab".into())]
    );
    assert_eq!(
        read_all(log, B, Tag(11)).await,
        vec![(b1, "b1".into()), (ab, "ab".into())]
    );
    assert_eq!(
        log.read_next(B, Tag(10), a1.next())
            .await
            .unwrap()
            .unwrap()
            .seqnum,
        ab
    );
    assert_eq!(
        log.read_prev(B, Tag(10), ab.0.checked_sub(1).map(Seqnum).unwrap())
            .await
            .unwrap()
            .unwrap()
            .seqnum,
        a1
    );
    assert_eq!(
        log.read_next(B, Tag(10), a1).await.unwrap().unwrap().seqnum,
        a1,
        "read_next is inclusive"
    );
    assert_eq!(
        log.read_prev(B, Tag(11), b1).await.unwrap().unwrap().seqnum,
        b1,
        "read_prev is inclusive"
    );
    assert!(log
        .read_next(B, Tag(12), Seqnum::ZERO)
        .await
        .unwrap()
        .is_none());
    assert!(log
        .read_next(B, Tag(10), ab.next())
        .await
        .unwrap()
        .is_none());
}

/// `Tag::ANY` reads every record of the book, tagged or not.
pub async fn any_tag_reads_every_record_of_the_book(log: &dyn LogBook) {
    let s1 = append(log, B, &[], "x").await;
    let s2 = append(log, B, &[3], "y").await;
    assert_eq!(
        read_all(log, B, Tag::ANY).await,
        vec![(s1, "x".into()), (s2, "y".into())]
    );
    assert_eq!(
        log.check_tail(B, Tag::ANY).await.unwrap().unwrap().seqnum,
        s2
    );
}

/// A record appended in one book is never visible in another.
pub async fn books_are_isolated(log: &dyn LogBook) {
    let other = BookId(8);
    append(log, B, &[1], "mine").await;
    assert!(log
        .read_next(other, Tag::ANY, Seqnum::ZERO)
        .await
        .unwrap()
        .is_none());
    assert!(log.check_tail(other, Tag(1)).await.unwrap().is_none());
    let s = append(log, other, &[1], "theirs").await;
    assert_eq!(
        read_all(log, other, Tag(1)).await,
        vec![(s, "theirs".into())]
    );
    assert_eq!(read_all(log, B, Tag(1)).await.len(), 1);
}

/// Concurrent appenders each get distinct seqnums, and all their records are readable.
pub async fn concurrent_appends_are_all_ordered_once(log: Arc<dyn LogBook>) {
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                mine.push(append(&*log, B, &[100 + w], &format!("{w}-{i}")).await);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.expect("appender task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one appender's seqnums increase"
        );
        all.extend(mine);
    }
    let read: Vec<Seqnum> = read_all(&*log, B, Tag::ANY)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    all.sort();
    assert_eq!(
        read, all,
        "every acknowledged append is read back exactly once, in seqnum order"
    );
}

/// Many concurrent conditional appends race for each position of a stream; exactly one wins
/// each position, and the losers' records stay invisible.
pub async fn cond_append_races_have_one_winner_per_position(log: Arc<dyn LogBook>) {
    let stream = Tag(42);
    for position in 0..4u64 {
        let mut tasks = Vec::new();
        for w in 0..6 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(format!("p{position}-w{w}"));
                log.cond_append(B, &[stream, Tag(43)], data, Cond::at(stream, position))
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.expect("appender task") {
                Ok(_) => winners += 1,
                Err(LogError::CondFailed { stream_len, .. }) => assert!(stream_len > position),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(winners, 1, "exactly one winner at position {position}");
    }
    let records = read_all(&*log, B, stream).await;
    assert_eq!(records.len(), 4);
    for (i, (_, data)) in records.iter().enumerate() {
        assert!(
            data.starts_with(&format!("p{i}-")),
            "position {i} holds {data}"
        );
    }
    assert_eq!(
        read_all(&*log, B, Tag(43)).await.len(),
        4,
        "losers are invisible under every tag"
    );
    assert_eq!(
        read_all(&*log, B, Tag::ANY).await.len(),
        4,
        "losers are invisible to Tag::ANY"
    );
}

/// A conditional append at a stale or future position fails; one whose condition tag is not
/// among its tags is a bad argument.
pub async fn cond_append_at_wrong_position_fails(log: &dyn LogBook) {
    let t = Tag(50);
    let data = || Bytes::from_static(b"c");
    assert!(log
        .cond_append(B, &[t], data(), Cond::at(t, 0))
        .await
        .is_ok());
    let stale = log.cond_append(B, &[t], data(), Cond::at(t, 0)).await;
    assert!(
        matches!(stale, Err(LogError::CondFailed { stream_len: 1, .. })),
        "{stale:?}"
    );
    let future = log.cond_append(B, &[t], data(), Cond::at(t, 5)).await;
    assert!(
        matches!(future, Err(LogError::CondFailed { stream_len: 1, .. })),
        "{future:?}"
    );
    let absent = log.cond_append(B, &[Tag(51)], data(), Cond::at(t, 1)).await;
    assert!(
        matches!(absent, Err(LogError::BadArgument(_))),
        "{absent:?}"
    );
    assert!(log
        .cond_append(B, &[t], data(), Cond::at(t, 1))
        .await
        .is_ok());
}

/// A chained conditional append (`Cond::chained`) lands only right after a record written
/// with the token it names: once one link of a writer's chain loses its position to another
/// writer, every later link loses too, though its position is free.
pub async fn chained_cond_appends_stop_at_the_first_lost_link(log: &dyn LogBook) {
    let t = Tag(52);
    const TOKEN_A: u64 = 0xa;
    const TOKEN_B: u64 = 0xb;
    let append = |d: &'static str, cond: Cond| {
        log.cond_append(
            B,
            std::slice::from_ref(&t),
            Bytes::from_static(d.as_bytes()),
            cond,
        )
    };
    // Writer A's first link names no predecessor; its second names A.
    append("a0", Cond::chained(t, 0, TOKEN_A, 0))
        .await
        .expect("a0 lands");
    append("a1", Cond::chained(t, 1, TOKEN_A, TOKEN_A))
        .await
        .expect("a1 lands");
    // B takes position 2 first; A's link at 2 loses on its position, and A's link at 3 loses
    // on its predecessor, although position 3 is free.
    append("b2", Cond::chained(t, 2, TOKEN_B, 0))
        .await
        .expect("b2 lands");
    let lost = append("a2", Cond::chained(t, 2, TOKEN_A, TOKEN_A)).await;
    assert!(
        matches!(lost, Err(LogError::CondFailed { stream_len: 3, .. })),
        "{lost:?}"
    );
    let behind_b = append("a3", Cond::chained(t, 3, TOKEN_A, TOKEN_A)).await;
    assert!(
        matches!(behind_b, Err(LogError::CondFailed { stream_len: 3, .. })),
        "a link after another writer's record must lose: {behind_b:?}"
    );
    // B's chain goes on; a plain record clears the stream's token.
    append("b3", Cond::chained(t, 3, TOKEN_B, TOKEN_B))
        .await
        .expect("b3 lands");
    log.append(B, &[t], Bytes::from_static(b"plain"))
        .await
        .expect("a plain append");
    let after_plain = append("b5", Cond::chained(t, 5, TOKEN_B, TOKEN_B)).await;
    assert!(
        matches!(after_plain, Err(LogError::CondFailed { stream_len: 5, .. })),
        "{after_plain:?}"
    );
    append("x5", Cond::at(t, 5))
        .await
        .expect("a plain condition holds");
    let got: Vec<String> = read_all(log, B, t)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got, ["a0", "a1", "b2", "b3", "plain", "x5"]);
}

/// A blocking read returns a record appended after it started waiting.
pub async fn blocking_read_is_woken_by_a_later_append(log: Arc<dyn LogBook>) {
    let start = append(&*log, B, &[60], "before").await;
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.read_next_blocking(B, Tag(60), start.next(), Duration::from_secs(20))
                .await
        })
    };
    // The reader may or may not have parked yet; either way it must see the append.
    let s = append(&*log, B, &[60], "after").await;
    let got = reader
        .await
        .expect("reader task")
        .expect("read succeeds")
        .expect("woken with a record");
    assert_eq!(got.seqnum, s);
}

/// A blocking read with nothing to find returns empty after its timeout, not an error.
pub async fn blocking_read_times_out_empty(log: &dyn LogBook) {
    let start = std::time::Instant::now();
    let got = log
        .read_next_blocking(B, Tag(61), Seqnum::ZERO, Duration::from_millis(200))
        .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "returned after {:?}",
        start.elapsed()
    );
    let ignored = append(log, B, &[62], "other tag").await;
    let got = log
        .read_next_blocking(B, Tag(61), ignored, Duration::from_millis(100))
        .await;
    assert!(
        matches!(got, Ok(None)),
        "a record of another tag does not satisfy the read: {got:?}"
    );
}

/// Trim removes the records below its point from reads; later trims never move it back. A
/// record leaves the book once every stream of its tags is trimmed past it; one without tags,
/// only with the book.
pub async fn trim_removes_a_prefix(log: &dyn LogBook) {
    let s: Vec<Seqnum> = futures_free_appends(log, 4, &[70]).await;
    let both = append(log, B, &[70, 71], "both tags").await;
    let untagged = append(log, B, &[], "no tags").await;
    let seqnums = |records: Vec<(Seqnum, String)>| records.iter().map(|r| r.0).collect::<Vec<_>>();
    log.trim(B, Tag(70), s[1]).await.expect("trim a tag");
    assert_eq!(
        seqnums(read_all(log, B, Tag(70)).await),
        [&s[1..], &[both]].concat()
    );
    assert_eq!(
        seqnums(read_all(log, B, Tag::ANY).await),
        [&s[1..], &[both, untagged]].concat(),
        "s0 had no other stream: it left the book"
    );
    log.trim(B, Tag(70), untagged)
        .await
        .expect("trim the tag past both");
    assert_eq!(
        seqnums(read_all(log, B, Tag::ANY).await),
        vec![both, untagged],
        "a record another stream still shows stays in the book"
    );
    assert_eq!(seqnums(read_all(log, B, Tag(71)).await), vec![both]);
    log.trim(B, Tag::ANY, untagged)
        .await
        .expect("trim the book");
    assert_eq!(seqnums(read_all(log, B, Tag::ANY).await), vec![untagged]);
    assert!(read_all(log, B, Tag(71)).await.is_empty());
    log.trim(B, Tag::ANY, s[0])
        .await
        .expect("a lower trim is accepted");
    assert_eq!(
        read_all(log, B, Tag::ANY).await.len(),
        1,
        "a lower trim restores nothing"
    );
    let after = append(log, B, &[70], "after trim").await;
    assert_eq!(
        log.check_tail(B, Tag(70)).await.unwrap().unwrap().seqnum,
        after
    );
}

async fn futures_free_appends(log: &dyn LogBook, n: usize, ts: &[u64]) -> Vec<Seqnum> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(append(log, B, ts, &format!("t{i}")).await);
    }
    out
}

/// Aux data attached to a record comes back with it; aux data for a missing record is refused.
pub async fn aux_data_is_returned_with_its_record(log: &dyn LogBook) {
    let s = append(log, B, &[80], "with aux").await;
    log.set_aux_data(B, s, Bytes::from_static(b"view"))
        .await
        .expect("set aux");
    let got = log
        .read_next(B, Tag(80), Seqnum::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.aux.as_deref(), Some(&b"view"[..]));
    assert!(
        log.set_aux_data(BookId(99), s, Bytes::from_static(b"x"))
            .await
            .is_err(),
        "wrong book"
    );
}

/// Batches are ordered in their own order and read back whole.
pub async fn append_batch_keeps_batch_order(log: &dyn LogBook) {
    let batch = (0..5)
        .map(|i| AppendRequest::new(tags(&[90]), format!("b{i}")))
        .collect();
    let seqnums = log.append_batch(B, batch).await.expect("batch");
    assert!(seqnums.windows(2).all(|w| w[0] < w[1]));
    let read = read_all(log, B, Tag(90)).await;
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), seqnums);
    assert_eq!(read[4].1, "b4");
}

/// `read_range` is half-open and honours its limit.
pub async fn read_range_is_half_open_and_limited(log: &dyn LogBook) {
    let s = futures_free_appends(log, 5, &[95]).await;
    let got = log
        .read_range(
            B,
            Tag(95),
            ReadRange {
                from: s[1],
                to: s[4],
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.seqnum).collect::<Vec<_>>(),
        s[1..4].to_vec()
    );
    let got = log
        .read_range(
            B,
            Tag(95),
            ReadRange {
                from: s[0],
                to: Seqnum::MAX,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
}

/// A range read stops before its byte budget runs out, and continues where it stopped.
pub async fn read_range_stops_at_its_byte_budget(log: &dyn LogBook) {
    let record = Bytes::from(vec![3u8; RECORD_BYTES_MAX]);
    let count = crate::READ_RANGE_BYTES_MAX / RECORD_BYTES_MAX + 4;
    let mut appended = Vec::new();
    for _ in 0..count {
        appended.push(
            log.append(B, &[Tag(96)], record.clone())
                .await
                .expect("append"),
        );
    }
    let mut read = Vec::new();
    let mut from = Seqnum::ZERO;
    loop {
        let page = log
            .read_range(
                B,
                Tag(96),
                ReadRange {
                    from,
                    to: Seqnum::MAX,
                    limit: 1000,
                },
            )
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        assert!(
            page.len() < count,
            "one page holds {} records of 1 MiB",
            page.len()
        );
        assert!(page.iter().map(|r| r.data.len()).sum::<usize>() <= crate::READ_RANGE_BYTES_MAX);
        from = last.seqnum.next();
        read.extend(page.iter().map(|r| r.seqnum));
    }
    assert_eq!(read, appended);
}

/// Records up to the size limit are accepted whole; larger ones, too many tags or too big a
/// batch are refused with `TooLarge` or `BadArgument`.
pub async fn limits_are_enforced(log: &dyn LogBook) {
    let big = Bytes::from(vec![7u8; RECORD_BYTES_MAX]);
    let s = log
        .append(B, &[Tag(1)], big.clone())
        .await
        .expect("a record at the limit");
    assert_eq!(
        log.read_next(B, Tag(1), s).await.unwrap().unwrap().data,
        big
    );
    let over = log
        .append(B, &[Tag(1)], Bytes::from(vec![0u8; RECORD_BYTES_MAX + 1]))
        .await;
    assert!(matches!(over, Err(LogError::TooLarge { .. })), "{over:?}");
    let many: Vec<Tag> = (1..=TAGS_PER_RECORD_MAX as u64 + 1).map(Tag).collect();
    assert!(matches!(
        log.append(B, &many, Bytes::from_static(b"x")).await,
        Err(LogError::BadArgument(_))
    ));
    let batch = (0..=BATCH_RECORDS_MAX)
        .map(|_| AppendRequest::new(vec![], "x"))
        .collect();
    assert!(matches!(
        log.append_batch(B, batch).await,
        Err(LogError::BadArgument(_))
    ));
    assert!(matches!(
        log.set_aux_data(B, s, Bytes::from(vec![0u8; crate::AUX_BYTES_MAX + 1]))
            .await,
        Err(LogError::TooLarge { .. })
    ));
}

/// Malformed requests are refused with `BadArgument` and change nothing.
pub async fn bad_arguments_are_refused(log: &dyn LogBook) {
    let x = || Bytes::from_static(b"x");
    assert!(matches!(
        log.append(B, &[Tag::ANY], x()).await,
        Err(LogError::BadArgument(_))
    ));
    assert!(matches!(
        log.append(B, &[Tag::RESERVED], x()).await,
        Err(LogError::BadArgument(_))
    ));
    assert!(matches!(
        log.append(B, &[Tag(1)], Bytes::new()).await,
        Err(LogError::BadArgument(_))
    ));
    assert!(matches!(
        log.append_batch(B, vec![]).await,
        Err(LogError::BadArgument(_))
    ));
    let reversed = ReadRange {
        from: Seqnum(10),
        to: Seqnum(5),
        limit: 10,
    };
    assert!(matches!(
        log.read_range(B, Tag::ANY, reversed).await,
        Err(LogError::BadArgument(_))
    ));
    let forever = Duration::from_secs(3600);
    assert!(matches!(
        log.read_next_blocking(B, Tag(1), Seqnum::ZERO, forever)
            .await,
        Err(LogError::BadArgument(_))
    ));
    let bad_batch = vec![
        AppendRequest::new(vec![Tag(1)], "ok"),
        AppendRequest::new(vec![Tag(0)], "bad"),
    ];
    assert!(matches!(
        log.append_batch(B, bad_batch).await,
        Err(LogError::BadArgument(_))
    ));
    assert!(
        log.check_tail(B, Tag::ANY).await.unwrap().is_none(),
        "nothing was appended"
    );
}

/// Generates one `#[tokio::test]` per conformance check. `$make` is a closure returning a
/// future of `(Arc<dyn LogBook>, Box<dyn Any + Send>)`: the log and a guard kept alive for the
/// test's duration.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@ref $make;
            appends_get_strictly_increasing_seqnums,
            tag_filtered_reads_return_only_that_tag,
            any_tag_reads_every_record_of_the_book,
            books_are_isolated,
            cond_append_at_wrong_position_fails,
            chained_cond_appends_stop_at_the_first_lost_link,
            blocking_read_times_out_empty,
            trim_removes_a_prefix,
            aux_data_is_returned_with_its_record,
            append_batch_keeps_batch_order,
            read_range_is_half_open_and_limited,
            read_range_stops_at_its_byte_budget,
            limits_are_enforced,
            bad_arguments_are_refused
        );
        $crate::conformance_tests!(@arc $make;
            concurrent_appends_are_all_ordered_once,
            cond_append_races_have_one_winner_per_position,
            blocking_read_is_woken_by_a_later_append
        );
    };
    (@ref $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (log, _guard) = ($make)().await;
                $crate::conformance::$name(&*log).await;
            }
        )*
    };
    (@arc $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (log, _guard) = ($make)().await;
                $crate::conformance::$name(log).await;
            }
        )*
    };
}
