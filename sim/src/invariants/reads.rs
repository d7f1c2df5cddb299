//! A read returns what was appended: the record a gateway serves at a seqnum, from its cache
//! or fetched from a storage node, is the record the metalog put there (its book, tags and
//! data), and has the tag asked for.

use super::{Broken, Ground, Observer};
use logbook::wire::NodeId;
use logbook::{Record, Tag};

pub fn check(
    observer: &Observer,
    ground: &Ground,
    gateway: NodeId,
    record: &Record,
    tag: Tag,
) -> Result<(), Broken> {
    const NAME: &str = "a read returns what was appended";
    let Some((shard, id)) = observer.locate(record.seqnum) else {
        return Err((
            NAME,
            format!(
                "gateway {} read seqnum {}, which no metalog entry ordered",
                gateway.0, record.seqnum.0
            ),
        ));
    };
    let Some(appended) = ground.record(shard, id) else {
        return Err((
            NAME,
            format!(
                "gateway {} read seqnum {} ({:?} of shard {}), which no replica stored",
                gateway.0, record.seqnum.0, id, shard.0
            ),
        ));
    };
    if appended.book != record.book || appended.tags != record.tags || appended.data != record.data
    {
        return Err((
            NAME,
            format!(
                "gateway {} read {:?} at seqnum {}; the log has {:?} there",
                gateway.0, record, record.seqnum.0, appended
            ),
        ));
    }
    if tag != Tag::ANY && !record.tags.contains(&tag) {
        return Err((
            NAME,
            format!(
                "gateway {} asked for tag {} and read seqnum {} with tags {:?}",
                gateway.0, tag.0, record.seqnum.0, record.tags
            ),
        ));
    }
    Ok(())
}
