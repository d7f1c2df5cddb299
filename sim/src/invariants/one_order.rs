//! Every reader sees a prefix of one total order: what two gateways have applied of the book
//! is the same sequence of seqnums, up to the shorter one's end. Conditional appends are
//! decided identically everywhere, or one gateway's index would hold a record another's lacks.
//! A gateway that applied a trim the other has not yet hides records the other still shows:
//! only what the trims either applied leave shown is compared.

use super::Broken;
use logbook::wire::NodeId;
use logbook::Seqnum;

/// `seen`: each gateway, the seqnum after what its index applied, and its index of the book;
/// `shown(seqnum, upto)`: whether the trims ordered below `upto` leave the book showing the
/// record at `seqnum`.
pub fn check(
    seen: &[(NodeId, Seqnum, Vec<Seqnum>)],
    shown: impl Fn(Seqnum, Seqnum) -> bool,
) -> Result<(), Broken> {
    for (i, (a, a_end, a_index)) in seen.iter().enumerate() {
        for (b, b_end, b_index) in &seen[i + 1..] {
            let end = (*a_end).min(*b_end);
            let upto = (*a_end).max(*b_end);
            let a_prefix = a_index
                .iter()
                .filter(|s| shown(**s, upto))
                .take_while(|s| **s < end);
            let b_prefix = b_index
                .iter()
                .filter(|s| shown(**s, upto))
                .take_while(|s| **s < end);
            if let Some((x, y)) = a_prefix.zip(b_prefix).find(|(x, y)| x != y) {
                return Err((
                    "every reader sees a prefix of one order",
                    format!(
                        "below seqnum {}, gateway {} has {} where gateway {} has {}",
                        end.0, a.0, x.0, b.0, y.0
                    ),
                ));
            }
            let count = |index: &Vec<Seqnum>| {
                index
                    .iter()
                    .filter(|s| shown(**s, upto) && **s < end)
                    .count()
            };
            if count(a_index) != count(b_index) {
                return Err((
                    "every reader sees a prefix of one order",
                    format!(
                        "below seqnum {}, gateway {} indexes {} records and gateway {} {}",
                        end.0,
                        a.0,
                        count(a_index),
                        b.0,
                        count(b_index)
                    ),
                ));
            }
        }
    }
    Ok(())
}
