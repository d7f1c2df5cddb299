//! The gateway runtime's replication against a scripted shard: what reaches storage after a
//! view is sealed while batches are queued.

use async_trait::async_trait;
use bytes::Bytes;
use gateway::engine::EngineConfig;
use gateway::metrics::Metrics;
use gateway::runtime::{GatewayLog, Restore, Shard};
use logbook::wire::{LocalId, LogRecord, ShardId};
use logbook::{BookId, IndexCheckpoint, LogBook, LogError, Record, Seqnum, Tag, ViewId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// A shard whose `replicate` calls wait for a permit, and which records every call.
struct GatedShard {
    gate: Semaphore,
    calls: Mutex<Vec<(LocalId, Vec<Bytes>)>>,
}

#[async_trait]
impl Shard for GatedShard {
    async fn replicate(&self, first: LocalId, records: Vec<LogRecord>) -> Result<(), LogError> {
        self.calls
            .lock()
            .unwrap()
            .push((first, records.into_iter().map(|r| r.data).collect()));
        self.gate.acquire().await.expect("gate open").forget();
        Ok(())
    }

    async fn read_at(&self, _seqnum: Seqnum) -> Result<Option<Record>, LogError> {
        Ok(None)
    }

    async fn reclaim(&self, _checkpoint: IndexCheckpoint) -> Result<(), LogError> {
        Ok(())
    }
}

async fn wait_for_calls(shard: &GatedShard, count: usize) {
    for _ in 0..500 {
        if shard.calls.lock().unwrap().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{count} replicate calls never came");
}

#[tokio::test]
async fn batches_queued_across_a_seal_are_never_merged_into_one_call() {
    let shard = Arc::new(GatedShard {
        gate: Semaphore::new(0),
        calls: Mutex::new(Vec::new()),
    });
    let config = EngineConfig {
        shard: ShardId(0),
        view: ViewId(1),
        cache_bytes_max: 1 << 20,
        pending_appends_max: 1000,
    };
    let log = GatewayLog::start(config, shard.clone(), Restore::default(), Metrics::new());
    let append = |data: &'static str| {
        let log = log.clone();
        tokio::spawn(async move { log.append(BookId(0), &[Tag(1)], Bytes::from(data)).await })
    };
    // The first batch is in the shard's hands; the second waits in the queue.
    let _a = append("a");
    wait_for_calls(&shard, 1).await;
    let _b = append("b");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A seal discards both; the runtime appends them again in view 2, behind b's old batch.
    log.seal(ViewId(2));
    tokio::time::sleep(Duration::from_millis(50)).await;
    shard.gate.add_permits(100);
    wait_for_calls(&shard, 3).await;

    let calls = shard.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0],
        (LocalId::new(ViewId(1), 0), vec![Bytes::from("a")])
    );
    assert_eq!(
        calls[1],
        (LocalId::new(ViewId(1), 1), vec![Bytes::from("b")]),
        "b's old batch goes alone: the retried records belong to another view"
    );
    let retried: Vec<(LocalId, Vec<Bytes>)> = calls[2..].to_vec();
    let mut next = LocalId::new(ViewId(2), 0);
    for (first, data) in &retried {
        assert_eq!(*first, next, "view 2's records continue each other from 0");
        next = LocalId(first.0 + data.len() as u64);
    }
    let mut resent: Vec<Bytes> = retried.into_iter().flat_map(|(_, d)| d).collect();
    resent.sort();
    assert_eq!(resent, vec![Bytes::from("a"), Bytes::from("b")]);
}
