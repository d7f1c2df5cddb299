//! A local id names one record: every replica that stores a record of a shard under a local
//! id stores the same one. Two different records under one id would give two replicas two
//! different records at the seqnum the metalog assigns to it.

use super::Broken;
use logbook::wire::{LocalId, LogRecord, ShardId};
use std::collections::BTreeMap;

pub fn check(
    records: &mut BTreeMap<(ShardId, LocalId), LogRecord>,
    shard: ShardId,
    id: LocalId,
    record: &LogRecord,
) -> Result<(), Broken> {
    match records.get(&(shard, id)) {
        Some(known) if known != record => Err((
            "a local id names one record",
            format!(
                "shard {} local id {:?} holds {known:?} on one replica and {record:?} on another",
                shard.0, id
            ),
        )),
        Some(_) => Ok(()),
        None => {
            records.insert((shard, id), record.clone());
            Ok(())
        }
    }
}
