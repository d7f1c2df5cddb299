//! Views follow each other: each has a higher id than the one before and starts at the metalog
//! position it commits at, so it seals the previous view there; and seqnums only grow across
//! views (a view's seqnums start above every seqnum of the views before).

use super::{Broken, Observer};
use logbook::wire::View;
use logbook::Seqnum;

pub fn check(observer: &Observer, view: &View) -> Result<(), Broken> {
    const NAME: &str = "views follow each other";
    if let Some(current) = observer.view() {
        if view.id <= current.id {
            return Err((
                NAME,
                format!("view {} committed after view {}", view.id.0, current.id.0),
            ));
        }
    }
    if view.start_position != observer.metalog_len {
        return Err((
            NAME,
            format!(
                "view {} starts at position {} after {} entries",
                view.id.0, view.start_position, observer.metalog_len
            ),
        ));
    }
    if Seqnum::new(view.id, 0) < observer.next_seqnum {
        return Err((
            NAME,
            format!(
                "view {} starts its seqnums below {}",
                view.id.0, observer.next_seqnum.0
            ),
        ));
    }
    Ok(())
}
