//! Orders through a sharded queue, against the in-memory log: producers push orders (keyed,
//! so a retried push is the same message), two consumer groups (`billing` and `shipping`)
//! each pop every order and ack it; one billing consumer "dies" with an order in hand, which
//! comes back after its visibility timeout. At the end each group's stats, and a trim.
//!
//! Run with `cargo run -p libqueue --example orders`.

use libqueue::{Error, Group, Options, Queue, Settings};
use logbook::memory::MemoryLogBook;
use logbook::BookId;
use std::sync::Arc;
use std::time::Duration;
use tally_sdk::Ctx;

const ORDERS: u64 = 1_000;

async fn consume(group: Group, drop_one: bool) -> Result<u64, Error> {
    let mut acked = 0;
    let mut dropped = !drop_one;
    while let Some(delivery) = group.pop_wait(Duration::from_millis(700)).await? {
        if !dropped {
            // This consumer loses the order (as a crashed one would): no ack.
            dropped = true;
            println!("{}: dropped {} in hand", group.name(), delivery.id);
            continue;
        }
        if delivery.deliveries > 1 {
            println!(
                "{}: {} delivered again (delivery {})",
                group.name(),
                delivery.id,
                delivery.deliveries
            );
        }
        match group.ack(&delivery).await {
            Ok(()) => acked += 1,
            // Taken again after its timeout: someone else's ack counts.
            Err(Error::NotInFlight { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(acked)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let log = Arc::new(MemoryLogBook::new());
    let ctx = |id: &str| Ctx::new(log.clone(), BookId(1), id.to_string());
    let queue = Queue::open_with(ctx("setup"), "orders", Options::shards(4)).await?;
    let settings = Settings {
        visibility_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let billing = queue.group_with("billing", settings).await?;
    let shipping = queue.group_with("shipping", settings).await?;

    let mut producers = Vec::new();
    for p in 0..4 {
        let queue = Queue::open(ctx(&format!("producer-{p}")), "orders").await?;
        producers.push(tokio::spawn(async move {
            for i in (p..ORDERS).step_by(4) {
                let order = format!("order-{i}");
                queue.push_keyed(&order, order.clone()).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for producer in producers {
        producer.await.expect("a producer runs")?;
    }

    let mut consumers = Vec::new();
    for (group, n) in [(&billing, 0), (&billing, 1), (&shipping, 2), (&shipping, 3)] {
        let group = group.clone();
        consumers.push(tokio::spawn(consume(group, n == 0)));
    }
    let mut acked = 0;
    for consumer in consumers {
        acked += consumer.await.expect("a consumer runs")?;
    }
    println!("acked {acked} deliveries for {ORDERS} orders in two groups");
    for group in [&billing, &shipping] {
        println!("{}: {:?}", group.name(), group.stats().await?);
    }
    queue.trim().await?;
    let report = queue.trim().await?;
    println!("trimmed: {report:?}; length now {}", queue.len().await?);
    Ok(())
}
