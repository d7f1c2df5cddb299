//! Clients reading through the gateways: the newest record with a tag, or the next one from a
//! seqnum some client was given; served from the gateway's cache or fetched from a storage node,
//! and checked against what was really appended.

use super::{Payload, Purpose, World};
use crate::gateway::BOOK;
use crate::invariants::Broken;
use gateway::engine::ReadPlan;
use logbook::wire::{LocalId, LogRecord, NodeId, ShardId};
use logbook::{Record, Seqnum, Tag};
use rand::Rng;

impl World {
    /// A client of gateway `id` reads a record with a random tag.
    pub(super) fn read(&mut self, id: NodeId) -> Result<(), Broken> {
        let tag = Tag(self.rng.random_range(1..=4));
        let from = self.ground.some_acknowledged(&mut self.rng);
        let tail = self.rng.random_bool(0.5);
        let Some(gateway) = self.gateways.get_mut(&id).filter(|g| g.up && g.ready) else {
            return Ok(());
        };
        let plan = match from {
            Some(from) if !tail => gateway.engine.read_next(BOOK, tag, from),
            _ => gateway.engine.read_prev(BOOK, tag, Seqnum::MAX),
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
