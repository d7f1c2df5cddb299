//! Checking what a log holds against what its clients were told: reading a whole book (or one
//! tag of it) from a gateway, and checking a bench's acknowledged appends against it.

use base64::Engine as _;
use bench::Ack;
use reqwest::blocking::Client;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A record as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub tags: Vec<u64>,
    pub data: Vec<u8>,
}

/// Every record of book 0 with `tag` (0: all) that the gateway at `base` (`http://host:port`)
/// holds, by seqnum, read in pages. With `seen`, the first read waits until the gateway covers
/// that seqnum (`X-Tally-Seen`).
pub fn read_tag(base: &str, tag: u64, seen: Option<u64>) -> BTreeMap<u64, Stored> {
    let http = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    read_tag_with(&http, base, tag, seen)
}

/// `read_tag` with `http` (an HTTPS gateway's client, say).
pub fn read_tag_with(
    http: &Client,
    base: &str,
    tag: u64,
    seen: Option<u64>,
) -> BTreeMap<u64, Stored> {
    let mut records = BTreeMap::new();
    let mut from = 0u64;
    loop {
        let tag_query = if tag == 0 {
            String::new()
        } else {
            format!("&tag={tag}")
        };
        let mut request = http.get(format!(
            "{base}/log/0/records?from={from}&limit=10000{tag_query}"
        ));
        if let Some(seen) = seen {
            request = request.header("x-tally-seen", seen);
        }
        let response = request.send().expect("the gateway answers");
        assert!(
            response.status().is_success(),
            "read from {base} failed: {}",
            response.status()
        );
        let page: Value = response.json().expect("a JSON page");
        for r in page["records"].as_array().expect("records") {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().expect("data"))
                .expect("base64 data");
            let tags = r["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .map(|t| t.as_u64().expect("a tag"))
                .collect();
            let seqnum = r["seqnum"].as_u64().expect("a seqnum");
            assert!(
                records.insert(seqnum, Stored { tags, data }).is_none(),
                "seqnum {seqnum} read twice"
            );
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return records,
        }
    }
}

/// Every record of book 0.
pub fn read_book(base: &str, seen: Option<u64>) -> BTreeMap<u64, Stored> {
    read_tag(base, 0, seen)
}

/// Lines written to a bench's ack log so far.
pub fn ack_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Checks that every acknowledged append is in `records` at its seqnum with the data its
/// client wrote, and that each client's appends kept their order.
pub fn check_acks(records: &BTreeMap<u64, Stored>, acks: &[Ack]) {
    for ack in acks {
        let stored = records
            .get(&ack.seqnum)
            .unwrap_or_else(|| panic!("acknowledged seqnum {} is lost", ack.seqnum));
        assert_eq!(
            bench::filler_origin(&stored.data),
            Some((ack.client, ack.counter)),
            "seqnum {} holds another record",
            ack.seqnum
        );
    }
    let mut by_client: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for ack in acks {
        by_client
            .entry(ack.client)
            .or_default()
            .push((ack.counter, ack.seqnum));
    }
    for (client, mut appends) in by_client {
        appends.sort();
        assert!(
            appends.windows(2).all(|w| w[0].1 < w[1].1),
            "client {client}'s appends were reordered"
        );
    }
}

/// Checks that no bench record is in the log twice: true unless a client retried an append
/// whose outcome it did not learn (its gateway died), which may then be in the log twice.
pub fn check_no_duplicates(records: &BTreeMap<u64, Stored>) {
    let mut origins = BTreeMap::new();
    for (seqnum, stored) in records {
        if let Some(origin) = bench::filler_origin(&stored.data) {
            if let Some(other) = origins.insert(origin, *seqnum) {
                panic!("record {origin:?} is in the log twice: at {other} and {seqnum}");
            }
        }
    }
}
