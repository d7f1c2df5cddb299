//! Every append is ordered without waiting for a later one: under steady load in both
//! durability modes, no append is left behind (the sequencer never misses a cut).

use bytes::Bytes;
use logbook::{BookId, LogBook, Tag};
use std::sync::Arc;
use std::time::Duration;
use storage_node::Durability;
use tally_cli::node::{Node, NodeConfig};

async fn appends_all_complete(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.durability = durability;
    let node = Node::start(config).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..16u64 {
        let log: Arc<dyn LogBook> = node.log.clone();
        tasks.push(tokio::spawn(async move {
            let tags = [Tag(client + 1)];
            for i in 0..1500u64 {
                let append = log.append(BookId(0), &tags, Bytes::from(format!("{client}-{i}")));
                tokio::time::timeout(Duration::from_secs(10), append)
                    .await
                    .unwrap_or_else(|_| panic!("append {i} of client {client} was left behind"))
                    .expect("append succeeds");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    node.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_append_is_left_behind_with_async_durability() {
    appends_all_complete(Durability::Async {
        flush_interval_ms: 10,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_append_is_left_behind_with_fsync_durability() {
    appends_all_complete(Durability::Fsync).await;
}
