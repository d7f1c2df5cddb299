//! Pushes and pops: FIFO per shard, spread over shards, batches, peek, lengths, idempotency
//! keys, and bad requests.

mod common;

use common::*;
use libqueue::{Error, Options, Queue, SystemClock};
use logbook::Seqnum;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn one_shard_pops_in_push_order_and_an_empty_queue_pops_none() {
    let log = memory();
    let queue = open(log.clone(), "q", 1, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    assert_eq!(group.pop().await.unwrap(), None);
    for i in 0..20 {
        queue.push(format!("m{i}")).await.unwrap();
    }
    for i in 0..20 {
        let d = group.pop().await.unwrap().expect("a message");
        assert_eq!(d.data, format!("m{i}"));
        assert_eq!(d.deliveries, 1);
        group.ack(&d).await.unwrap();
    }
    assert_eq!(group.pop().await.unwrap(), None);
    assert_eq!(queue.len().await.unwrap(), 0);
}

#[tokio::test]
async fn sharded_pushes_spread_and_each_shard_stays_fifo() {
    let log = memory();
    let queue = open(log.clone(), "q", 4, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40u32 {
        ids.push(queue.push(i.to_string()).await.unwrap());
    }
    for shard in 0..4 {
        assert_eq!(ids.iter().filter(|id| id.shard == shard).count(), 10);
    }
    // A second handle (another invocation) sees the same shard count.
    let other = Queue::open(ctx(log.clone(), "other"), "q").await.unwrap();
    assert_eq!(other.shards(), 4);
    let consumer = other.group("g").await.unwrap();
    let mut last = [None::<Seqnum>; 4];
    let mut seen = 0;
    while let Some(d) = consumer.pop().await.unwrap() {
        let shard = d.id.shard as usize;
        assert!(
            last[shard].is_none_or(|l| l < d.id.seqnum),
            "FIFO per shard"
        );
        last[shard] = Some(d.id.seqnum);
        consumer.ack(&d).await.unwrap();
        seen += 1;
    }
    assert_eq!(seen, 40);
    assert_eq!(group.stats().await.unwrap().acked, 40);
}

#[tokio::test]
async fn a_batch_is_one_append_and_each_group_sees_every_message() {
    let log = memory();
    let queue = open(log.clone(), "q", 2, Arc::new(SystemClock)).await;
    let (a, b) = (
        queue.group("a").await.unwrap(),
        queue.group("b").await.unwrap(),
    );
    let ids = queue.push_batch(["x", "y", "z"]).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(queue.len().await.unwrap(), 3);
    for group in [&a, &b] {
        let mut got = Vec::new();
        while let Some(d) = group.pop().await.unwrap() {
            got.push(d.data.clone());
            group.ack(&d).await.unwrap();
        }
        got.sort();
        assert_eq!(got, ["x", "y", "z"]);
    }
    assert_eq!(queue.len().await.unwrap(), 0);
    let empty: Vec<&str> = Vec::new();
    assert!(matches!(
        queue.push_batch(empty).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn peek_shows_the_next_message_and_takes_nothing() {
    let log = memory();
    let queue = open(log.clone(), "q", 1, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    assert_eq!(group.peek().await.unwrap(), None);
    let id = queue.push("first").await.unwrap();
    queue.push("second").await.unwrap();
    let peeked = group.peek().await.unwrap().unwrap();
    assert_eq!((peeked.id, peeked.deliveries), (id, 0));
    assert_eq!(group.peek().await.unwrap().unwrap().id, id);
    let d = group.pop().await.unwrap().unwrap();
    assert_eq!(d.id, id);
    assert_eq!(group.peek().await.unwrap().unwrap().data, "second");
    let stats = group.stats().await.unwrap();
    assert_eq!((stats.lag, stats.pending, stats.in_flight), (2, 1, 1));
}

#[tokio::test]
async fn a_group_sees_the_messages_pushed_after_it_was_created() {
    let log = memory();
    let queue = open(log.clone(), "q", 1, Arc::new(SystemClock)).await;
    queue.push("before").await.unwrap();
    let group = queue.group("late").await.unwrap();
    queue.push("after").await.unwrap();
    assert_eq!(group.pop().await.unwrap().unwrap().data, "after");
    assert_eq!(group.pop().await.unwrap(), None);
}

#[tokio::test]
async fn a_blocking_pop_wakes_on_a_push_and_times_out_without_one() {
    let log = memory();
    let queue = open(log.clone(), "q", 3, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    assert_eq!(
        group.pop_wait(Duration::from_millis(20)).await.unwrap(),
        None
    );
    let popper = {
        let group = group.clone();
        tokio::spawn(async move { group.pop_wait(Duration::from_secs(10)).await })
    };
    queue.push("late").await.unwrap();
    let d = popper.await.unwrap().unwrap().expect("woken by the push");
    assert_eq!(d.data, "late");
}

#[tokio::test]
async fn keyed_push_pop_and_ack_take_effect_once() {
    let log = memory();
    let queue = open(log.clone(), "q", 2, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    let first = queue.push_keyed("order-1", "one").await.unwrap();
    let again = queue.push_keyed("order-1", "one").await.unwrap();
    assert_eq!(first, again);
    let other = queue.push_keyed("order-2", "two").await.unwrap();
    assert_ne!(first, other);

    let d = group
        .pop_keyed("step-1", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let d2 = group
        .pop_keyed("step-1", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d, d2, "a re-run pop gets the same delivery");
    group.ack_keyed("ack-1", &d).await.unwrap();
    group.ack_keyed("ack-1", &d).await.unwrap();
    // Without a key, a second ack of the same delivery is refused.
    assert!(matches!(
        group.ack(&d).await,
        Err(Error::NotInFlight { .. })
    ));
    let rest = group.pop().await.unwrap().unwrap();
    group.ack(&rest).await.unwrap();
    assert_eq!(group.pop().await.unwrap(), None, "two messages, not three");
    assert_eq!(group.stats().await.unwrap().acked, 2);
}

#[tokio::test]
async fn a_duplicate_keyed_push_that_raced_in_is_never_delivered() {
    // Two executions of one step push under the same key at once: both records land, and
    // readers deliver only the first.
    let log = memory();
    let queue = open(log.clone(), "q", 1, Arc::new(SystemClock)).await;
    let group = queue.group("g").await.unwrap();
    let (a, b) = tokio::join!(queue.push_keyed("k", "m"), queue.push_keyed("k", "m"));
    assert_eq!(a.unwrap(), b.unwrap());
    queue.push("n").await.unwrap();
    let d = group.pop().await.unwrap().unwrap();
    assert_eq!(d.data, "m");
    group.ack(&d).await.unwrap();
    assert_eq!(group.pop().await.unwrap().unwrap().data, "n");
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_to_change() {
    let log = memory();
    let c = || ctx(log.clone(), "t");
    assert!(matches!(Queue::open(c(), "").await, Err(Error::Invalid(_))));
    assert!(matches!(
        Queue::open_with(c(), "q", Options::shards(0)).await,
        Err(Error::Invalid(_))
    ));
    Queue::open_with(c(), "q", Options::shards(2))
        .await
        .unwrap();
    let err = Queue::open_with(c(), "q", Options::shards(3))
        .await
        .err()
        .unwrap();
    assert!(err.is_bad_request(), "{err}");
    let queue = Queue::open(c(), "q").await.unwrap();
    let group = queue.group("g").await.unwrap();
    let id = queue.push("m").await.unwrap();
    assert!(matches!(
        group.requeue(id).await,
        Err(Error::NotDeadLetter { .. })
    ));
    assert!(matches!(
        group.ack_id(id, Seqnum(1)).await,
        Err(Error::NotInFlight { .. })
    ));
    let big = vec![0u8; libqueue::MESSAGE_BYTES_MAX + 1];
    assert!(matches!(queue.push(big).await, Err(Error::Invalid(_))));
}
