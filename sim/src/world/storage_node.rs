//! What `tally storage` does around its engine, for the simulated storage nodes: take
//! replicated batches, write and sync them, acknowledge what is durable, follow the committed
//! events, carry out the engine's commands (store entries, fetch from peers), serve reads and
//! index data, report progress.

use super::{Event, Payload, Purpose, World, MS, REPORT_EVERY};
use crate::invariants::Broken;
use crate::storage::Pending;
use logbook::wire::{GroupEvent, LocalId, LogRecord, NodeId, ShardId};
use logbook::Seqnum;
use rand::Rng;
use storage_node::engine::{Accept, Command};

/// Committed events a storage node takes ahead of what it applied, at most.
const BACKLOG_MAX: usize = 64;
/// A batch of a view the node has not applied yet waits this long before it is refused.
const VIEW_WAIT: super::Time = 1_000 * MS;
/// A repair no peer helped with is tried again this often.
const RETRY_EVERY: super::Time = 50 * MS;
/// Records one fetch returns, at most (as `FETCH_RECORDS_MAX`).
const FETCH_RECORDS_MAX: u64 = 1024;

impl World {
    /// A gateway's batch for storage node `to`.
    pub(super) fn storage_batch(
        &mut self,
        from: NodeId,
        to: NodeId,
        shard: ShardId,
        first: LocalId,
        records: Vec<LogRecord>,
    ) -> Result<(), Broken> {
        let now = self.now;
        let Some(node) = self.storage.get_mut(&to).filter(|n| n.up()) else {
            return Ok(());
        };
        let engine = node.engine.as_mut().expect("up");
        match engine.accept(shard, first, &records) {
            Accept::Write => self.write_records(to, shard, first, &records, Some(from))?,
            Accept::NotYet => {
                node.deferred
                    .push((now + VIEW_WAIT, from, shard, first, records));
            }
            Accept::Refused(_) => {
                let durable = engine.durable_count(shard, first.view());
                let view = first.view();
                self.send(to, from, Payload::Ack { view, durable });
            }
        }
        Ok(())
    }

    /// Writes records the engine took (a gateway's batch, acknowledged to it once synced, or a
    /// repair), and starts a sync.
    fn write_records(
        &mut self,
        id: NodeId,
        shard: ShardId,
        first: LocalId,
        records: &[LogRecord],
        ack_to: Option<NodeId>,
    ) -> Result<(), Broken> {
        for (i, record) in records.iter().enumerate() {
            self.ground
                .store(shard, LocalId(first.0 + i as u64), record)?;
        }
        let node = self.storage.get_mut(&id).expect("a storage node");
        let end = node.disk.write_records(shard, first, records);
        let count = records.len() as u64;
        node.pending.push((
            end,
            Pending {
                shard,
                first,
                count,
                ack_to,
            },
        ));
        self.start_sync(id);
        Ok(())
    }

    /// Starts a sync of everything written, unless one is in flight.
    fn start_sync(&mut self, id: NodeId) {
        let node = self.storage.get_mut(&id).expect("a storage node");
        if node.syncing.is_some() {
            return;
        }
        let Some(target) = node.disk.sync_target() else {
            return;
        };
        node.syncing = Some(target);
        let incarnation = node.incarnation;
        let (min, max) = (self.faults.fsync_min, self.faults.fsync_max);
        let took = self.rng.random_range(min..=max);
        self.schedule(took, Event::SyncDone(id, incarnation));
    }

    /// A sync ended: what it covered is durable; acknowledge it, tell the engine, sync again
    /// if more was written meanwhile.
    pub(super) fn sync_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), Broken> {
        let Some(node) = self.storage.get_mut(&id).filter(|n| n.up()) else {
            return Ok(());
        };
        if node.incarnation != incarnation {
            return Ok(());
        }
        let Some(target) = node.syncing.take() else {
            return Ok(());
        };
        node.disk.synced(target);
        let done: Vec<Pending> = {
            let split = node.pending.partition_point(|(end, _)| *end <= target);
            node.pending.drain(..split).map(|(_, p)| p).collect()
        };
        for Pending {
            shard,
            first,
            count,
            ack_to,
        } in done
        {
            if let Some(gateway) = ack_to {
                let view = first.view();
                let durable = first.counter() + count;
                self.send(id, gateway, Payload::Ack { view, durable });
            }
            let node = self.storage.get_mut(&id).expect("up");
            let engine = node.engine.as_mut().expect("up");
            let commands = engine.on_durable(shard, first, count);
            let durable = engine.durable_count(shard, first.view());
            self.ground.hold(id, first.view(), shard, durable)?;
            self.storage_commands(id, commands)?;
        }
        self.start_sync(id);
        Ok(())
    }

    /// Carries out a storage engine's commands.
    pub(super) fn storage_commands(
        &mut self,
        id: NodeId,
        commands: Vec<Command>,
    ) -> Result<(), Broken> {
        let mut queue: std::collections::VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            let node = self.storage.get_mut(&id).expect("a storage node");
            match command {
                Command::Write {
                    shard,
                    first,
                    records,
                } => self.write_records(id, shard, first, &records, None)?,
                Command::StoreMetalog(entry) => {
                    // Stored once written: the sequencers' Raft log is where it is durable.
                    node.disk.write_metalog(&entry);
                    let engine = node.engine.as_mut().expect("up");
                    queue.extend(engine.on_metalog_stored(entry.position));
                    self.start_sync(id);
                }
                Command::Fetch {
                    peer,
                    from,
                    to,
                    min_position,
                } => {
                    self.send_fetch(id, peer, (from, to), min_position, Purpose::Repair);
                }
                Command::Resubscribe { from } => {
                    node.events_seen = self.observer.subscription_start(from);
                }
            }
        }
        Ok(())
    }

    /// Asks storage node `to` for the records in `range`, in calls of at most
    /// `FETCH_RECORDS_MAX` (as `fetch_range` does).
    pub(super) fn send_fetch(
        &mut self,
        from: NodeId,
        to: NodeId,
        range: (Seqnum, Seqnum),
        min_position: u64,
        purpose: Purpose,
    ) {
        let mut at = range.0 .0;
        while at < range.1 .0 {
            let upto = range.1 .0.min(at + FETCH_RECORDS_MAX);
            let payload = Payload::Fetch {
                from: Seqnum(at),
                to: Seqnum(upto),
                seqnums: Vec::new(),
                min_position,
                purpose,
            };
            self.send(from, to, payload);
            at = upto;
        }
    }

    /// Committed events for storage node `to`, the first with index `first`.
    pub(super) fn storage_events(
        &mut self,
        to: NodeId,
        first: u64,
        events: Vec<GroupEvent>,
    ) -> Result<(), Broken> {
        for (i, event) in events.into_iter().enumerate() {
            let Some(node) = self.storage.get_mut(&to).filter(|n| n.up()) else {
                return Ok(());
            };
            let engine = node.engine.as_mut().expect("up");
            if first + i as u64 != node.events_seen || engine.backlog() >= BACKLOG_MAX {
                continue;
            }
            node.events_seen += 1;
            let commands = engine.on_event(event);
            self.storage_commands(to, commands)?;
            self.offer_deferred(to)?;
        }
        Ok(())
    }

    /// Batches that waited for a view are offered again (or refused once they waited long).
    fn offer_deferred(&mut self, id: NodeId) -> Result<(), Broken> {
        let now = self.now;
        let node = self.storage.get_mut(&id).expect("a storage node");
        let Some(view) = node.engine.as_ref().and_then(|e| e.view_id()) else {
            return Ok(());
        };
        let deferred = std::mem::take(&mut node.deferred);
        for (deadline, from, shard, first, records) in deferred {
            if first.view() <= view {
                self.storage_batch(from, id, shard, first, records)?;
            } else if now >= deadline {
                let ack = Payload::Ack {
                    view: first.view(),
                    durable: 0,
                };
                self.send(id, from, ack);
            } else {
                let node = self.storage.get_mut(&id).expect("a storage node");
                node.deferred.push((deadline, from, shard, first, records));
            }
        }
        Ok(())
    }

    /// A fetch for storage node `to`: served once it applied the metalog up to `min_position`
    /// (else unanswered; the asker asks again).
    pub(super) fn storage_fetch(
        &mut self,
        from: NodeId,
        to: NodeId,
        range: (Seqnum, Seqnum),
        seqnums: Vec<Seqnum>,
        min_position: u64,
        purpose: Purpose,
    ) -> Result<(), Broken> {
        let Some(node) = self.storage.get(&to).filter(|n| n.up()) else {
            return Ok(());
        };
        let engine = node.engine.as_ref().expect("up");
        if !engine.can_serve(min_position) {
            // UNAVAILABLE, as `tally storage` answers once its wait for the position ends.
            let applied = engine.applied();
            let payload = Payload::Fetched {
                records: Vec::new(),
                applied,
                purpose,
            };
            self.send(to, from, payload);
            return Ok(());
        }
        let asked: Vec<Seqnum> = if seqnums.is_empty() {
            let end = range.1 .0.min(range.0 .0.saturating_add(FETCH_RECORDS_MAX));
            (range.0 .0..end).map(Seqnum).collect()
        } else {
            seqnums
        };
        let mut records = Vec::new();
        for seqnum in &asked {
            match node.disk.read(*seqnum) {
                Some((shard, id, record)) => records.push((*seqnum, shard, id, record)),
                None => {
                    crate::invariants::served::check(&self.observer, to, engine.applied(), *seqnum)?
                }
            }
        }
        let applied = engine.applied();
        self.send(
            to,
            from,
            Payload::Fetched {
                records,
                applied,
                purpose,
            },
        );
        Ok(())
    }

    /// What a storage node answered to a fetch, at storage node `to` (a repair).
    pub(super) fn storage_fetched(
        &mut self,
        from: NodeId,
        to: NodeId,
        records: Vec<(Seqnum, ShardId, LocalId, LogRecord)>,
    ) -> Result<(), Broken> {
        let Some(node) = self.storage.get_mut(&to).filter(|n| n.up()) else {
            return Ok(());
        };
        let engine = node.engine.as_mut().expect("up");
        let records = records
            .into_iter()
            .map(|(_, shard, id, record)| (shard, id, record))
            .collect();
        let commands = engine.on_fetched(from, records);
        self.storage_commands(to, commands)
    }

    /// Now and then: report progress, take the committed events missed, offer deferred
    /// batches again, retry a repair that stalled.
    pub(super) fn storage_step(&mut self, id: NodeId) -> Result<(), Broken> {
        let now = self.now;
        let Some(node) = self.storage.get_mut(&id).filter(|n| n.up()) else {
            return Ok(());
        };
        let engine = node.engine.as_ref().expect("up");
        // Reported when it changed, and now and then in any case (a heartbeat).
        let due = now.saturating_sub(node.last_report) >= REPORT_EVERY;
        if due || node.reported != *engine.durable() {
            node.last_report = now;
            node.reported = engine.durable().clone();
            let (shards, _applied) = engine.report();
            let sequencers: Vec<NodeId> = self.sequencers.keys().copied().collect();
            for progress in shards {
                for to in &sequencers {
                    self.send(id, *to, Payload::Progress(progress));
                }
            }
        }
        let node = self.storage.get_mut(&id).expect("up");
        let from = node.events_seen as usize;
        let room = BACKLOG_MAX.saturating_sub(node.engine.as_ref().expect("up").backlog());
        let missed: Vec<GroupEvent> = self
            .observer
            .committed
            .iter()
            .skip(from)
            .take(room.min(super::CATCH_UP_BATCH))
            .cloned()
            .collect();
        if !missed.is_empty() {
            let leader = *self.sequencers.keys().next().expect("sequencers exist");
            self.send(leader, id, Payload::Events(from as u64, missed));
        }
        self.offer_deferred(id)?;
        let node = self.storage.get_mut(&id).expect("up");
        if now.saturating_sub(node.last_retry) >= RETRY_EVERY {
            node.last_retry = now;
            let engine = node.engine.as_mut().expect("up");
            if engine.stall().is_some() {
                let commands = engine.retry();
                self.storage_commands(id, commands)?;
            }
        }
        Ok(())
    }

    /// Storage node `id` crashes: memory gone, unsynced writes lost or torn.
    pub(super) fn storage_crash(&mut self, id: NodeId) -> bool {
        let node = self.storage.get_mut(&id).expect("a storage node");
        if !node.up() {
            return false;
        }
        node.crash(&mut self.rng);
        true
    }

    /// Storage node `id` starts again on what its disk kept.
    pub(super) fn storage_restart(&mut self, id: NodeId) -> Result<(), Broken> {
        let node = self.storage.get_mut(&id).expect("a storage node");
        if node.up() {
            return Ok(());
        }
        node.restart().map_err(|e| ("the disk recovers", e))?;
        let applied = node.disk.applied();
        node.events_seen = self.observer.subscription_start(applied);
        let cursors = node.disk.cursors().clone();
        for (shard, (view, count)) in cursors {
            self.ground.hold(id, view, shard, count)?;
        }
        Ok(())
    }
}
