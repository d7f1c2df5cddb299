//! Clients reading through the gateways: the newest record with a tag, the next one from a
//! seqnum some client was given, or (a blocking read) the next one past the end of the log,
//! waiting for it a while; served from the gateway's cache or fetched from a storage node, and
//! checked against what was really appended.

use super::{Payload, Purpose, World};
use crate::gateway::BOOK;
use crate::invariants::Broken;
use gateway::engine::{ReadPlan, Reply};
use logbook::wire::{LocalId, LogRecord, NodeId, ShardId};
use logbook::{Record, Seqnum, Tag};
use rand::Rng;

/// How long a blocking read waits for a record, at most.
const BLOCKING_READ_WAIT: super::Time = 300 * super::MS;

impl World {
    /// A client of gateway `id` reads a record with a random tag.
    pub(super) fn read(&mut self, id: NodeId) -> Result<(), Broken> {
        let tag = Tag(self.rng.random_range(1..=4));
        let from = self.ground.some_acknowledged(&mut self.rng);
        let kind = self.rng.random_range(0..4);
        let now = self.now;
        self.next_op += 1;
        let op_id = self.next_op;
        let Some(gateway) = self.gateways.get_mut(&id).filter(|g| g.up && g.ready) else {
            return Ok(());
        };
        let plan = match (kind, from) {
            (0, _) => {
                let min = gateway.engine.applied_end();
                let deadline = now + BLOCKING_READ_WAIT;
                match gateway
                    .engine
                    .read_next_blocking(op_id, BOOK, tag, min, deadline)
                {
                    Ok(Some(plan)) => plan,
                    Ok(None) => {
                        gateway.parked.insert(op_id, (tag, min));
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                }
            }
            (1, Some(from)) => gateway.engine.read_next(BOOK, tag, from),
            _ => gateway.engine.read_prev(BOOK, tag, Seqnum::MAX),
        };
        self.serve_read(id, plan, tag)
    }

    /// A parked blocking read of gateway `id` ended: with a record at or after `min` with
    /// the tag, or empty at its deadline.
    pub(super) fn blocking_read_done(
        &mut self,
        id: NodeId,
        tag: Tag,
        min: Seqnum,
        reply: Reply,
    ) -> Result<(), Broken> {
        let plan = match reply {
            Reply::Plan(plan) => plan,
            other => {
                return Err((
                    "a blocking read returns a later record",
                    format!("gateway {} answered a blocking read with {other:?}", id.0),
                ))
            }
        };
        let seqnum = match &plan {
            ReadPlan::Empty => return Ok(()),
            ReadPlan::Cached(record) => record.seqnum,
            ReadPlan::Fetch { seqnum } => *seqnum,
        };
        if seqnum < min {
            return Err((
                "a blocking read returns a later record",
                format!(
                    "gateway {} waited for tag {} from seqnum {} and got {}",
                    id.0, tag.0, min.0, seqnum.0
                ),
            ));
        }
        self.serve_read(id, plan, tag)
    }

    /// Serves a read's plan: checks a cached record, asks a storage node for one that is not.
    fn serve_read(&mut self, id: NodeId, plan: ReadPlan, tag: Tag) -> Result<(), Broken> {
        let Some(gateway) = self.gateways.get_mut(&id).filter(|g| g.up) else {
            return Ok(());
        };
        match plan {
            ReadPlan::Empty => Ok(()),
            ReadPlan::Cached(record) => self.check_read(id, &record, tag),
            ReadPlan::Fetch { seqnum } => {
                let min_position = gateway.engine.metalog_position();
                let storage: Vec<NodeId> = self.storage.keys().copied().collect();
                let node = storage[self.rng.random_range(0..storage.len())];
                let payload = Payload::Fetch {
                    from: Seqnum::ZERO,
                    to: Seqnum::ZERO,
                    seqnums: vec![seqnum],
                    min_position,
                    purpose: Purpose::Read,
                };
                self.send(id, node, payload);
                Ok(())
            }
        }
    }

    /// A storage node's answer to a gateway's read: checked, then cached.
    pub(super) fn read_fetched(
        &mut self,
        to: NodeId,
        records: Vec<(Seqnum, ShardId, LocalId, LogRecord)>,
    ) -> Result<(), Broken> {
        for (seqnum, _, _, record) in records {
            let record = Record {
                seqnum,
                book: record.book,
                tags: record.tags,
                data: record.data,
                aux: None,
            };
            self.check_read(to, &record, Tag::ANY)?;
            if let Some(gateway) = self.gateway(to) {
                gateway.engine.cache_insert(record);
            }
        }
        Ok(())
    }

    fn check_read(&mut self, gateway: NodeId, record: &Record, tag: Tag) -> Result<(), Broken> {
        self.reads += 1;
        crate::invariants::reads::check(&self.observer, &self.ground, gateway, record, tag)
    }
}
