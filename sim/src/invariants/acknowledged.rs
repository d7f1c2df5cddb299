//! No acknowledged append is lost, and a seqnum holds one record: a client told its append
//! is at seqnum `s` finds, at every gateway once the log has settled, its record at `s`, with
//! its data and tags; and no two appends are ever acknowledged at the same seqnum.

use super::{Broken, Ground, Observer};
use crate::gateway::Op;
use logbook::wire::RecordKind;
use logbook::Seqnum;
use std::collections::BTreeMap;

const NAME: &str = "no acknowledged append is lost";

/// On every acknowledgement: one record per seqnum.
pub fn on_ack(acked: &mut BTreeMap<Seqnum, Op>, seqnum: Seqnum, op: &Op) -> Result<(), Broken> {
    if let Some(earlier) = acked.get(&seqnum) {
        return Err((
            "one record per seqnum",
            format!(
                "seqnum {} acknowledged to {:?} and to {:?}",
                seqnum.0, earlier.data, op.data
            ),
        ));
    }
    acked.insert(seqnum, op.clone());
    Ok(())
}

/// At the end: every acknowledged append is in `index` (a gateway's whole book, in order),
/// and the record the metalog put at its seqnum is its record.
/// A record below the book's trim point, or trimmed from every stream of its tags, is gone by
/// design (`trims` checks that it is), and a trim record is never in the index.
pub fn check(ground: &Ground, observer: &Observer, index: &[Seqnum]) -> Result<(), Broken> {
    for (seqnum, op) in &ground.acked {
        let visible =
            observer.shows(*seqnum, &op.tags) && !matches!(op.kind, RecordKind::Trim { .. });
        if visible && index.binary_search(seqnum).is_err() {
            return Err((
                NAME,
                format!(
                    "{:?} acknowledged at {} is not in the index",
                    op.data, seqnum.0
                ),
            ));
        }
        let record = observer
            .locate(*seqnum)
            .and_then(|(shard, id)| ground.record(shard, id));
        let Some(record) = record else {
            return Err((NAME, format!("no record was ordered at {}", seqnum.0)));
        };
        if record.data != op.data || record.tags != op.tags || record.kind != op.kind {
            return Err((
                NAME,
                format!(
                    "{:?} acknowledged at {}, but the record there is {record:?}",
                    op.data, seqnum.0
                ),
            ));
        }
    }
    Ok(())
}
