//! The visibility timeout rule, on a clock moved by hand: redelivery after the timeout and
//! not before, refused stale acks, dead letters after `max_deliveries`, requeue and discard,
//! and writers whose clocks disagree.

mod common;

use common::*;
use libqueue::{Error, Group, Queue, Settings};
use std::sync::Arc;
use std::time::Duration;

fn settings(timeout_ms: u64, max_deliveries: u32) -> Settings {
    Settings {
        visibility_timeout: Duration::from_millis(timeout_ms),
        max_deliveries,
        ..Settings::default()
    }
}

async fn world(max_deliveries: u32) -> (Queue, Group, Arc<ManualClock>) {
    let clock = ManualClock::at(1_000);
    let queue = open(memory(), "q", 1, clock.clone()).await;
    let group = queue
        .group_with("g", settings(100, max_deliveries))
        .await
        .unwrap();
    (queue, group, clock)
}

#[tokio::test]
async fn an_unacked_message_comes_back_after_its_timeout_and_not_before() {
    let (queue, group, clock) = world(5).await;
    let id = queue.push("m").await.unwrap();
    let first = group.pop().await.unwrap().unwrap();
    clock.advance(99);
    assert_eq!(group.pop().await.unwrap(), None, "still in flight");
    clock.advance(1);
    let second = group
        .pop()
        .await
        .unwrap()
        .expect("timed out: delivered again");
    assert_eq!((second.id, second.deliveries), (id, 2));
    // The first delivery's ack comes too late: refused, and changes nothing.
    assert!(matches!(
        group.ack(&first).await,
        Err(Error::NotInFlight { .. })
    ));
    group.ack(&second).await.unwrap();
    assert!(matches!(
        group.ack(&second).await,
        Err(Error::NotInFlight { .. })
    ));
    clock.advance(1_000);
    assert_eq!(group.pop().await.unwrap(), None, "acked: never again");
}

#[tokio::test]
async fn a_late_ack_counts_if_no_pop_took_the_message_again() {
    let (queue, group, clock) = world(5).await;
    queue.push("m").await.unwrap();
    let d = group.pop().await.unwrap().unwrap();
    clock.advance(500);
    group.ack(&d).await.unwrap();
    assert_eq!(group.pop().await.unwrap(), None);
}

#[tokio::test]
async fn a_redelivery_comes_before_newer_messages() {
    let (queue, group, clock) = world(5).await;
    let a = queue.push("a").await.unwrap();
    let b = queue.push("b").await.unwrap();
    let da = group.pop().await.unwrap().unwrap();
    assert_eq!(da.id, a);
    clock.advance(100);
    let again = group.pop().await.unwrap().unwrap();
    assert_eq!((again.id, again.deliveries), (a, 2));
    assert_eq!(group.pop().await.unwrap().unwrap().id, b);
}

#[tokio::test]
async fn after_max_deliveries_a_message_is_a_dead_letter_and_can_be_requeued_or_discarded() {
    let (queue, group, clock) = world(2).await;
    let id = queue.push("poison").await.unwrap();
    let other = queue.push("fine").await.unwrap();
    assert_eq!(group.pop().await.unwrap().unwrap().id, id);
    clock.advance(100);
    assert_eq!(group.pop().await.unwrap().unwrap().deliveries, 2);
    clock.advance(100);
    // The next pop moves it to the dead letters and takes the next message.
    let d = group.pop().await.unwrap().unwrap();
    assert_eq!(d.id, other);
    group.ack(&d).await.unwrap();
    let dead = group.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].deliveries), (id, 2));
    assert_eq!(dead[0].data, "poison");
    let stats = group.stats().await.unwrap();
    assert_eq!((stats.dead_letters, stats.lag), (1, 0));

    group.requeue(id).await.unwrap();
    assert!(group.dead_letters().await.unwrap().is_empty());
    let back = group.pop().await.unwrap().unwrap();
    assert_eq!((back.id, back.deliveries), (id, 1));
    clock.advance(100);
    group.pop().await.unwrap().unwrap();
    clock.advance(100);
    assert_eq!(group.pop().await.unwrap(), None);
    assert_eq!(group.dead_letters().await.unwrap().len(), 1);
    group.discard(id).await.unwrap();
    assert!(matches!(
        group.discard(id).await,
        Err(Error::NotDeadLetter { .. })
    ));
    assert!(group.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_blocking_pop_waits_for_a_timeout_to_pass() {
    // Real time here: the pop must wake when the delivery times out, with no push.
    let queue = open(memory(), "q", 2, Arc::new(libqueue::SystemClock)).await;
    let group = queue.group_with("g", settings(50, 5)).await.unwrap();
    queue.push("m").await.unwrap();
    let first = group.pop().await.unwrap().unwrap();
    let again = group
        .pop_wait(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("delivered again after 50 ms");
    assert_eq!((again.id, again.deliveries), (first.id, 2));
}

#[tokio::test]
async fn skewed_clocks_change_when_a_message_returns_never_whether_two_hold_it() {
    // Writer A's clock is an hour behind, B's is right. The group's clock is the greatest
    // time its records carry, so A's records cannot hold a message back, and B's pops see
    // A's delivery as timed out only once B's clock passes it plus the timeout.
    let log = memory();
    let slow = ManualClock::at(1_000);
    let right = ManualClock::at(3_601_000);
    let qa = open(log.clone(), "q", 1, slow.clone()).await;
    let qb = open(log.clone(), "q", 1, right.clone()).await;
    let (a, b) = (
        qa.group_with("g", settings(100, 5)).await.unwrap(),
        qb.group_with("g", settings(100, 5)).await.unwrap(),
    );
    qa.push("m1").await.unwrap();
    qa.push("m2").await.unwrap();
    let db = b.pop().await.unwrap().unwrap();
    assert_eq!(db.data, "m1");
    // A's slow clock does not make B's delivery expire, and does not hold m2 back.
    let da = a.pop().await.unwrap().unwrap();
    assert_eq!(da.data, "m2");
    assert_eq!(a.pop().await.unwrap(), None);
    // A's delivery of m2 was made at the group's clock (B's time), so B must wait out the
    // timeout in its own time, too.
    right.advance(99);
    assert_eq!(b.pop().await.unwrap(), None);
    right.advance(1);
    let again = b.pop().await.unwrap().unwrap();
    assert_eq!((again.data.as_ref(), again.deliveries), (&b"m1"[..], 2));
    // Both old receipts are refused or counted exactly as the log says.
    assert!(matches!(b.ack(&db).await, Err(Error::NotInFlight { .. })));
    b.ack(&again).await.unwrap();
    let m2 = b.pop().await.unwrap().unwrap();
    assert_eq!(m2.deliveries, 2);
    assert!(matches!(a.ack(&da).await, Err(Error::NotInFlight { .. })));
    a.ack(&m2).await.unwrap();
}
