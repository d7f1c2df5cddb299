//! The log protocol end to end: `tally-client` against the gateway's `LogService` over an
//! in-memory log, on a loopback port.

use bytes::Bytes;
use futures::StreamExt as _;
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook, Seqnum, Tag};
use std::sync::Arc;
use std::time::Duration;
use tally_client::{Error, LogClient, Record};

const BOOK: BookId = BookId(3);

/// The log protocol served over a log on a free loopback port, in a runtime of its own, so
/// that stopping it ends its connections too.
struct Server {
    addr: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(log: Arc<dyn LogBook>) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tonic::transport::Server::builder()
            .add_service(gateway::log_service::LogService::new(
                log.clone(),
                None,
                gateway::auth::Tokens::unread(log, None),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    Server {
        addr,
        runtime: Some(runtime),
    }
}

/// The next record of a following read, within 10 s.
async fn next(tail: &mut futures::stream::BoxStream<'static, Result<Record, Error>>) -> Record {
    tokio::time::timeout(Duration::from_secs(10), tail.next())
        .await
        .expect("the tail answers")
        .expect("the tail goes on")
        .unwrap()
}

async fn all(client: &LogClient, tag: Tag, from: Seqnum) -> Vec<Record> {
    let records = client.read(BOOK, tag).from(from).await.unwrap();
    records.map(|r| r.unwrap()).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appends_in_flight_on_one_connection_each_get_their_own_seqnum() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let server = serve(log.clone());
    let client = Arc::new(LogClient::connect(&server.addr).await.unwrap());
    let appends = (0..500u32).map(|i| {
        let client = client.clone();
        async move {
            let tag = Tag(1 + u64::from(i % 3));
            let seqnum = client.append(BOOK, &[tag], i.to_string()).await.unwrap();
            (seqnum, tag, i)
        }
    });
    let mut acked = futures::future::join_all(appends).await;
    acked.sort();
    // Every append has its own seqnum, and the log holds its data there under its tag.
    let stored = all(&client, Tag::ANY, Seqnum::ZERO).await;
    assert_eq!(stored.len(), 500);
    for ((seqnum, tag, i), record) in acked.iter().zip(&stored) {
        assert_eq!(record.seqnum, *seqnum);
        assert_eq!(record.tags, vec![*tag]);
        assert_eq!(record.data, Bytes::from(i.to_string()));
    }
    assert_eq!(all(&client, Tag(2), Seqnum::ZERO).await.len(), 167);
    // A read from the middle starts there.
    let from = acked[250].0;
    assert_eq!(all(&client, Tag::ANY, from).await.len(), 250);
}

#[tokio::test]
async fn a_batch_lands_in_order_and_bad_appends_fail_alone() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let server = serve(log.clone());
    let client = LogClient::connect(&server.addr).await.unwrap();
    let batch = (0..10u8)
        .map(|i| (vec![Tag(9)], Bytes::from(vec![i; 3])))
        .collect();
    let seqnums = client.append_batch(BOOK, batch).await.unwrap();
    assert_eq!(seqnums.len(), 10);
    assert!(seqnums.windows(2).all(|w| w[0] < w[1]), "{seqnums:?}");
    let stored = all(&client, Tag(9), Seqnum::ZERO).await;
    let data: Vec<u8> = stored.iter().map(|r| r.data[0]).collect();
    assert_eq!(data, (0..10).collect::<Vec<u8>>());

    // The reserved book, and an empty record: refused, not retryable, nothing appended; the
    // connection goes on serving.
    let reserved = client.append(BookId(u32::MAX), &[Tag(1)], "x").await;
    match reserved {
        Err(e @ Error::Append { .. }) => {
            assert!(e.to_string().contains("reserved"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    assert!(client.append(BOOK, &[Tag(1)], "").await.is_err());
    let read = client.read(BookId(u32::MAX), Tag::ANY);
    assert!(matches!(read.await.map(|_| ()), Err(Error::Read { .. })));
    let after = client.append(BOOK, &[Tag(9)], "after").await.unwrap();
    assert!(after > seqnums[9]);
    assert_eq!(all(&client, Tag::ANY, Seqnum::ZERO).await.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_read_sees_records_appended_after_it_started() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let server = serve(log.clone());
    let client = LogClient::connect(&server.addr).await.unwrap();
    let first = client.append(BOOK, &[Tag(4)], "before").await.unwrap();
    let mut tail = client
        .read(BOOK, Tag(4))
        .from(first)
        .follow()
        .await
        .unwrap();
    assert_eq!(next(&mut tail).await.data, "before");
    // Records of another tag do not show; later ones of this tag do, in order.
    client.append(BOOK, &[Tag(5)], "other").await.unwrap();
    let later = client.append(BOOK, &[Tag(4)], "later").await.unwrap();
    let record = next(&mut tail).await;
    assert_eq!((record.seqnum, record.data), (later, Bytes::from("later")));
    client.append(BOOK, &[Tag(4)], "last").await.unwrap();
    assert_eq!(next(&mut tail).await.data, "last");
}

#[tokio::test]
async fn appends_fail_as_disconnected_once_the_server_is_gone_and_connect_says_why() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let mut server = serve(log);
    let addr = server.addr.clone();
    let client = LogClient::connect(&addr).await.unwrap();
    client.append(BOOK, &[Tag(1)], "one").await.unwrap();
    server.stop();
    // The stopped server's connections close; the client notices and fails from then on.
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.append(BOOK, &[Tag(1)], "two").await {
                Err(e @ Error::Disconnected { .. }) => return e,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("appends fail once the server is gone");
    assert!(failed.is_retryable());
    assert!(failed.to_string().contains(&addr), "{failed}");

    // A port nothing listens on refuses, and connect says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let refused = LogClient::connect(&closed_addr)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(refused, Error::Connect { .. }), "{refused}");
    assert!(refused.to_string().contains(&closed_addr), "{refused}");
    assert!(
        refused.to_string().to_lowercase().contains("refused"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_gateway_that_asks_for_tokens_takes_reads_and_appends_their_scopes_cover() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let server = serve(log.clone());
    let tokens = gateway::auth::Tokens::load(log.clone(), None)
        .await
        .unwrap();
    let scopes = |list: &[&str]| -> Vec<gateway::auth::Scope> {
        list.iter()
            .map(|s| gateway::auth::Scope::parse(s).unwrap())
            .collect()
    };
    let (token, _) = tokens
        .create("app", &scopes(&["read:3", "append:3"]))
        .await
        .unwrap();
    let client = LogClient::connect_with_token(&server.addr, Some(&token))
        .await
        .unwrap();
    let seqnum = client.append(BOOK, &[Tag(1)], "mine").await.unwrap();
    assert_eq!(all(&client, Tag(1), Seqnum::ZERO).await[0].seqnum, seqnum);
    // Another book: each append is refused alone, not retryable; reads fail at once.
    let refused = client
        .append(BookId(4), &[Tag(1)], "theirs")
        .await
        .unwrap_err();
    assert!(!refused.is_retryable());
    assert!(refused.to_string().contains("lacks the scope"), "{refused}");
    let refused = client.read(BookId(4), Tag(1)).await.err().expect("refused");
    assert!(refused.to_string().contains("lacks the scope"), "{refused}");
    // Without a token, or with a forged one: no connection.
    for token in [None, Some("tly_0123456789ab_forged")] {
        let refused = LogClient::connect_with_token(&server.addr, token)
            .await
            .err()
            .expect("refused");
        assert!(refused.to_string().contains("token"), "{refused}");
    }
    assert_eq!(all(&client, Tag::ANY, Seqnum::ZERO).await.len(), 1);
}
