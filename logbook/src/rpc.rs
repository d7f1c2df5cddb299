//! The gRPC wire protocol between roles (`proto/tally.proto`): the generated messages, clients
//! and servers (`pb`), and conversions between them and the domain types of `wire`.
//! Decoding checks every id that is narrower in the domain than on the wire and rejects
//! malformed messages with `WireError`, never panics.

use crate::wire::{
    GatewayMember, GroupEvent, IndexEntry, LogRecord, MetalogEntry, NodeId, RecordKind, ShardCut,
    ShardId, View,
};
use crate::{BookId, Cond, Seqnum, Tag, ViewId};
use std::collections::BTreeMap;
use thiserror::Error;

/// The generated code of `proto/tally.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tally.v1.rs"));
}

/// The generated code of `proto/worker.proto`: the worker protocol.
#[allow(clippy::all, missing_docs)]
pub mod worker_pb {
    include!(concat!(env!("OUT_DIR"), "/tally.worker.v1.rs"));
}

/// The generated code of `proto/log.proto`: the log client protocol.
#[allow(clippy::all, missing_docs)]
pub mod log_pb {
    include!(concat!(env!("OUT_DIR"), "/tally.log.v1.rs"));
}

/// A message that does not decode into the domain type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed message: {0}")]
pub struct WireError(pub String);

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A view id from its wire form.
pub fn view_id(view: u32) -> Result<ViewId, WireError> {
    u16::try_from(view)
        .map(ViewId)
        .map_err(|_| WireError(format!("view {view} is out of range")))
}

impl From<&LogRecord> for pb::LogRecord {
    fn from(r: &LogRecord) -> pb::LogRecord {
        let (cond, trim) = match r.kind {
            RecordKind::Data => (None, None),
            RecordKind::Cond(c) => (
                Some(pb::Cond {
                    tag: c.tag.0,
                    position: c.position,
                    token: c.token,
                    after: c.after,
                }),
                None,
            ),
            RecordKind::Trim { tag, below } => (
                None,
                Some(pb::Trim {
                    tag: tag.0,
                    below: below.0,
                }),
            ),
        };
        pb::LogRecord {
            book: r.book.0,
            tags: r.tags.iter().map(|t| t.0).collect(),
            data: r.data.clone(),
            cond,
            trim,
        }
    }
}

impl pb::LogRecord {
    /// The record's kind, from its optional `cond` and `trim`.
    pub fn kind(&self) -> Result<RecordKind, WireError> {
        match (&self.cond, &self.trim) {
            (None, None) => Ok(RecordKind::Data),
            (Some(c), None) => Ok(RecordKind::Cond(Cond::chained(
                Tag(c.tag),
                c.position,
                c.token,
                c.after,
            ))),
            (None, Some(t)) => Ok(RecordKind::Trim {
                tag: Tag(t.tag),
                below: Seqnum(t.below),
            }),
            (Some(_), Some(_)) => Err(WireError("a record is both a cond and a trim".into())),
        }
    }
}

impl pb::LogRecord {
    /// What the index needs of this record, ordered at `seqnum`.
    pub fn index_entry(self, seqnum: Seqnum) -> Result<IndexEntry, WireError> {
        Ok(IndexEntry {
            seqnum,
            book: BookId(self.book),
            kind: self.kind()?,
            tags: self.tags.into_iter().map(Tag).collect(),
        })
    }
}

impl TryFrom<pb::LogRecord> for LogRecord {
    type Error = WireError;
    fn try_from(r: pb::LogRecord) -> Result<LogRecord, WireError> {
        let kind = r.kind()?;
        Ok(LogRecord {
            book: BookId(r.book),
            tags: r.tags.into_iter().map(Tag).collect(),
            kind,
            data: r.data,
        })
    }
}

impl From<&MetalogEntry> for pb::MetalogEntry {
    fn from(e: &MetalogEntry) -> pb::MetalogEntry {
        pb::MetalogEntry {
            position: e.position,
            view: u32::from(e.view.0),
            start_seqnum: e.start_seqnum.0,
            cuts: e
                .cuts
                .iter()
                .map(|c| pb::ShardCut {
                    shard: c.shard.0,
                    start: c.start,
                    delta: c.delta,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::MetalogEntry> for MetalogEntry {
    type Error = WireError;
    fn try_from(e: pb::MetalogEntry) -> Result<MetalogEntry, WireError> {
        let entry = MetalogEntry {
            position: e.position,
            view: view_id(e.view)?,
            start_seqnum: Seqnum(e.start_seqnum),
            cuts: e
                .cuts
                .into_iter()
                .map(|c| ShardCut {
                    shard: ShardId(c.shard),
                    start: c.start,
                    delta: c.delta,
                })
                .collect(),
        };
        entry.validate().map_err(WireError)?;
        Ok(entry)
    }
}

impl From<&View> for pb::View {
    fn from(v: &View) -> pb::View {
        pb::View {
            id: u32::from(v.id.0),
            start_position: v.start_position,
            write_quorum: v.write_quorum as u32,
            shards: v
                .shards
                .iter()
                .map(|(shard, replicas)| pb::ShardReplicas {
                    shard: shard.0,
                    replicas: replicas.iter().map(|n| n.0).collect(),
                })
                .collect(),
            gateways: v
                .gateways
                .iter()
                .map(|(node, g)| pb::GatewayMember {
                    node: node.0,
                    incarnation: g.incarnation,
                    http_addr: g.http_addr.clone(),
                })
                .collect(),
            storage: v
                .storage
                .iter()
                .map(|(node, addr)| pb::StorageMember {
                    node: node.0,
                    rpc_addr: addr.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::View> for View {
    type Error = WireError;
    fn try_from(v: pb::View) -> Result<View, WireError> {
        let mut shards = BTreeMap::new();
        for s in v.shards {
            let replicas = s.replicas.into_iter().map(NodeId).collect();
            if shards.insert(ShardId(s.shard), replicas).is_some() {
                return Err(WireError(format!("view lists shard {} twice", s.shard)));
            }
        }
        let mut gateways = BTreeMap::new();
        for g in v.gateways {
            let member = GatewayMember {
                incarnation: g.incarnation,
                http_addr: g.http_addr,
            };
            if gateways.insert(NodeId(g.node), member).is_some() {
                return Err(WireError(format!("view lists gateway {} twice", g.node)));
            }
        }
        let mut storage = BTreeMap::new();
        for s in v.storage {
            if storage.insert(NodeId(s.node), s.rpc_addr).is_some() {
                return Err(WireError(format!(
                    "view lists storage node {} twice",
                    s.node
                )));
            }
        }
        Ok(View {
            id: view_id(v.id)?,
            start_position: v.start_position,
            write_quorum: v.write_quorum as usize,
            shards,
            gateways,
            storage,
        })
    }
}

impl pb::Event {
    pub fn new(index: u64, event: &GroupEvent) -> pb::Event {
        let kind = match event {
            GroupEvent::Metalog(e) => pb::event::Kind::Metalog(e.into()),
            GroupEvent::View(v) => pb::event::Kind::View(v.into()),
        };
        pb::Event {
            index,
            kind: Some(kind),
            ..Default::default()
        }
    }

    /// The event's index and domain form.
    pub fn decode(self) -> Result<(u64, GroupEvent), WireError> {
        let event = match self.kind {
            Some(pb::event::Kind::Metalog(e)) => GroupEvent::Metalog(e.try_into()?),
            Some(pb::event::Kind::View(v)) => GroupEvent::View(v.try_into()?),
            None => return Err(WireError(format!("event {} is empty", self.index))),
        };
        Ok((self.index, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn records_entries_and_views_round_trip() {
        for kind in [
            RecordKind::Data,
            RecordKind::Cond(Cond::at(Tag(3), 9)),
            RecordKind::Cond(Cond::chained(Tag(3), 9, 11, 12)),
            RecordKind::Trim {
                tag: Tag::ANY,
                below: Seqnum(77),
            },
        ] {
            let record = LogRecord {
                book: BookId(4),
                tags: vec![Tag(1), Tag(2)],
                kind,
                data: Bytes::from_static(b"abc"),
            };
            let wire = pb::LogRecord::from(&record);
            assert_eq!(LogRecord::try_from(wire).unwrap(), record);
        }
        let entry = MetalogEntry {
            position: 5,
            view: ViewId(2),
            start_seqnum: Seqnum::new(ViewId(2), 10),
            cuts: vec![ShardCut {
                shard: ShardId(7),
                start: 3,
                delta: 4,
            }],
        };
        let view = View {
            id: ViewId(2),
            start_position: 5,
            write_quorum: 2,
            shards: [(ShardId(7), vec![NodeId(10), NodeId(11)])].into(),
            gateways: [(
                NodeId(7),
                GatewayMember {
                    incarnation: 99,
                    http_addr: "127.0.0.1:1".into(),
                },
            )]
            .into(),
            storage: [(NodeId(10), "a".into()), (NodeId(11), "b".into())].into(),
        };
        for event in [GroupEvent::Metalog(entry), GroupEvent::View(view)] {
            let wire = pb::Event::new(3, &event);
            assert_eq!(wire.decode().unwrap(), (3, event));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let both = pb::LogRecord {
            cond: Some(pb::Cond::default()),
            trim: Some(pb::Trim::default()),
            ..Default::default()
        };
        assert!(LogRecord::try_from(both).is_err());
        let outside = pb::MetalogEntry {
            view: 3,
            start_seqnum: Seqnum::new(ViewId(2), 0).0,
            ..Default::default()
        };
        assert!(MetalogEntry::try_from(outside).is_err());
        let overflow = pb::MetalogEntry {
            view: 1,
            start_seqnum: Seqnum::new(ViewId(1), 5).0,
            cuts: vec![pb::ShardCut {
                shard: 0,
                start: 0,
                delta: u64::MAX,
            }],
            ..Default::default()
        };
        assert!(MetalogEntry::try_from(overflow).is_err());
        assert!(view_id(70_000).is_err());
        assert!(pb::Event::default().decode().is_err());
    }

    #[test]
    fn metalog_entries_past_a_views_counters_or_cutting_a_shard_twice_are_refused() {
        // A gateway's engine panicked on these: its own records named by a local id past a
        // view's counters, or one record ordered twice.
        let cut = |start| pb::ShardCut {
            shard: 3,
            start,
            delta: 1,
        };
        let past_counters = pb::MetalogEntry {
            view: 1,
            start_seqnum: Seqnum::new(ViewId(1), 5).0,
            cuts: vec![cut(1 << 48)],
            ..Default::default()
        };
        assert!(MetalogEntry::try_from(past_counters).is_err());
        let shard_twice = pb::MetalogEntry {
            view: 1,
            start_seqnum: Seqnum::new(ViewId(1), 5).0,
            cuts: vec![cut(0), cut(0)],
            ..Default::default()
        };
        assert!(MetalogEntry::try_from(shard_twice).is_err());
    }
}

/// The URI of a gRPC address given as `host:port`: `https://` over TLS, else `http://`; an
/// address that is a URI already stays as it is.
pub fn grpc_uri(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// A client's side of mutual TLS: the CA it trusts alone, and the certificate and key it
/// shows (PEM). Workers and log clients use it for a gateway's worker port, and the roles of
/// a cluster for each other, when the cluster speaks TLS (`[tls]` in its node files).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("ClientTls { .. }")
    }
}

impl ClientTls {
    /// From PEM text.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ClientTls {
        ClientTls {
            ca_pem: ca_pem.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        }
    }

    /// From PEM files (`tally cert`): the CA's certificate, this client's certificate and its
    /// key. An error names the file it could not read.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> std::io::Result<ClientTls> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })
        };
        Ok(ClientTls::new(&read(ca)?, &read(cert)?, &read(key)?))
    }

    /// The settings of a tonic channel (an `https://` endpoint's).
    pub fn config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }
}

/// What an error says (`head`), with the causes under it (from `source` on) that add
/// something: a refused TLS certificate, say, is a cause of a transport error.
pub fn causes(head: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut text = head;
    let mut cause = source;
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}
