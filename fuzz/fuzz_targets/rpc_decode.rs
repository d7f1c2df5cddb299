//! The gRPC messages between roles on arbitrary bytes: prost decodes them as each message a
//! role receives, and the conversions of `logbook::rpc` turn them into domain types or refuse
//! them with a `WireError`, never panicking. What they accept must be safe to use: a metalog
//! entry's seqnums and local counters are computed by its consumers (the gateway's engine,
//! the storage node's apply loop) without overflow, and every accepted value converts back to
//! the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logbook::rpc::{pb, view_id, worker_pb};
use logbook::wire::{GroupEvent, LocalId, LogRecord, MetalogEntry, View};
use logbook::Seqnum;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // `pb::Event` has an inherent `decode` (to the domain type): name prost's.
    if let Ok(event) = <pb::Event as Message>::decode(data) {
        if let Ok((index, event)) = event.decode() {
            match &event {
                GroupEvent::Metalog(entry) => check_entry(entry),
                GroupEvent::View(view) => check_view(view),
            }
            assert_eq!(pb::Event::new(index, &event).decode(), Ok((index, event)));
        }
    }
    if let Ok(entry) = pb::MetalogEntry::decode(data) {
        if let Ok(entry) = MetalogEntry::try_from(entry) {
            check_entry(&entry);
        }
    }
    if let Ok(view) = pb::View::decode(data) {
        if let Ok(view) = View::try_from(view) {
            check_view(&view);
        }
    }
    if let Ok(batch) = pb::ReplicateBatch::decode(data) {
        let _ = LocalId(batch.first_local_id).counter();
        for record in batch.records {
            check_record(record);
        }
    }
    if let Ok(reply) = pb::FetchReply::decode(data) {
        for fetched in reply.records {
            if let Some(record) = fetched.record {
                let _ = record.clone().index_entry(Seqnum(fetched.seqnum));
                check_record(record);
            }
        }
    }
    if let Ok(reply) = pb::FetchIndexReply::decode(data) {
        for record in reply.records {
            check_record(record);
        }
    }
    if let Ok(report) = pb::ProgressReport::decode(data) {
        for shard in report.shards {
            let _ = view_id(shard.view);
        }
    }
    let _ = pb::GatewayHeartbeat::decode(data);
    let _ = pb::SubscribeRequest::decode(data);
    let _ = pb::FetchRequest::decode(data);
    let _ = pb::ReplicateAck::decode(data);
    let _ = worker_pb::FromWorker::decode(data);
    let _ = worker_pb::ToWorker::decode(data);
});

/// What the consumers of an accepted entry compute.
fn check_entry(entry: &MetalogEntry) {
    let end = entry.end_seqnum();
    assert!(end >= entry.start_seqnum);
    assert_eq!(end.0 - entry.start_seqnum.0, entry.record_count());
    for cut in entry.cuts.iter().filter(|c| c.delta > 0) {
        let last = cut.start + cut.delta - 1;
        // The gateway's engine names its own records by local id.
        let id = LocalId::new(entry.view, last);
        assert_eq!((id.view(), id.counter()), (entry.view, last));
        let first_seq = entry
            .seqnum_of(cut.shard, cut.start)
            .expect("the cut orders its start");
        let last_seq = entry
            .seqnum_of(cut.shard, last)
            .expect("the cut orders its end");
        assert!(first_seq <= last_seq && last_seq < end);
        assert_eq!(entry.seqnum_of(cut.shard, u64::MAX), None);
    }
    for (_, counter, seqnum) in entry.assignments().take(256) {
        let _ = LocalId::new(entry.view, counter);
        assert!(seqnum < end);
    }
    assert_eq!(
        MetalogEntry::try_from(pb::MetalogEntry::from(entry)).as_ref(),
        Ok(entry)
    );
}

fn check_view(view: &View) {
    let wire = pb::View::from(view);
    if u32::try_from(view.write_quorum).is_ok() {
        assert_eq!(View::try_from(wire).as_ref(), Ok(view));
    }
}

fn check_record(record: pb::LogRecord) {
    if let Ok(domain) = LogRecord::try_from(record) {
        assert_eq!(
            LogRecord::try_from(pb::LogRecord::from(&domain)),
            Ok(domain)
        );
    }
}
