//! The `LogBook` trait: the contract between the log and everything built on it.

use crate::{
    AppendRequest, BookId, Cond, LogError, Record, Seqnum, Tag, BATCH_RECORDS_MAX,
    RECORD_BYTES_MAX, TAGS_PER_RECORD_MAX,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// A half-open range of seqnums, `[from, to)`, with a cap on how many records to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    pub from: Seqnum,
    pub to: Seqnum,
    pub limit: usize,
}

/// A logical log, multiplexed onto the physical log by `BookId`.
///
/// Seqnums are strictly increasing in log order. Reads with `Tag::ANY` see every record of the
/// book; reads with a tag see the records carrying it. A read never returns a record that is not
/// ordered, and a caller always sees its own acknowledged appends.
#[async_trait]
pub trait LogBook: Send + Sync {
    /// Appends one record; durable once the seqnum is returned.
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError>;

    /// Appends one record that takes effect only if it lands at `cond.position` of
    /// `cond.tag`'s stream (`cond.tag` must be among `tags`). Every replica decides alike;
    /// the loser gets `CondFailed` and its record stays invisible.
    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError>;

    /// Appends several records, ordered in the batch's order; all or none are appended.
    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError>;

    /// The first record with `tag` at or after `min_seqnum`.
    async fn read_next(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError>;

    /// The last record with `tag` at or before `max_seqnum`.
    async fn read_prev(
        &self,
        book: BookId,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError>;

    /// Like `read_next`, but waits up to `timeout` for a record to be appended.
    async fn read_next_blocking(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError>;

    /// The last record with `tag`: `read_prev(tag, Seqnum::MAX)`.
    async fn check_tail(&self, book: BookId, tag: Tag) -> Result<Option<Record>, LogError> {
        self.read_prev(book, tag, Seqnum::MAX).await
    }

    /// Attaches a cache to a record. Best effort: a later read may or may not see it.
    async fn set_aux_data(&self, book: BookId, seqnum: Seqnum, aux: Bytes) -> Result<(), LogError>;

    /// Removes the records of `tag`'s stream (`Tag::ANY`: of the whole book) below `below`.
    /// Trims only move forward; a lower trim point than an earlier one changes nothing. A
    /// record that no stream of its tags shows any more leaves the book too (reads with
    /// `Tag::ANY`), and its space may be reclaimed; a record without tags leaves only with
    /// the book.
    async fn trim(&self, book: BookId, tag: Tag, below: Seqnum) -> Result<(), LogError>;

    /// The records with `tag` in `range`, in seqnum order: at most `range.limit` records and,
    /// past the first, at most `READ_RANGE_BYTES_MAX` bytes of data. Continue from the last
    /// seqnum plus one for more.
    async fn read_range(
        &self,
        book: BookId,
        tag: Tag,
        range: ReadRange,
    ) -> Result<Vec<Record>, LogError>;
}

/// Checks one append's tags and data against the limits, and returns its tags with
/// duplicates removed (first occurrence kept).
pub fn validate_append(tags: &[Tag], data: &[u8]) -> Result<Vec<Tag>, LogError> {
    if data.is_empty() {
        return Err(LogError::BadArgument("record data is empty".into()));
    }
    if data.len() > RECORD_BYTES_MAX {
        return Err(LogError::TooLarge {
            what: "record data",
            bytes: data.len(),
            max: RECORD_BYTES_MAX,
        });
    }
    let mut unique: Vec<Tag> = Vec::with_capacity(tags.len());
    for &tag in tags {
        if !tag.is_record_tag() {
            return Err(LogError::BadArgument(format!(
                "tag {} may not be carried by a record",
                tag.0
            )));
        }
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    if unique.len() > TAGS_PER_RECORD_MAX {
        return Err(LogError::BadArgument(format!(
            "a record carries at most {TAGS_PER_RECORD_MAX} tags, got {}",
            unique.len()
        )));
    }
    Ok(unique)
}

/// Checks a batch's size; each record is checked by `validate_append`.
pub fn validate_batch(records: &[AppendRequest]) -> Result<(), LogError> {
    validate_batch_len(records.len())
}

/// Checks how many records one append carries: 1 to `BATCH_RECORDS_MAX`.
pub fn validate_batch_len(records: usize) -> Result<(), LogError> {
    if records == 0 {
        return Err(LogError::BadArgument("append has no records".into()));
    }
    if records > BATCH_RECORDS_MAX {
        return Err(LogError::BadArgument(format!(
            "an append holds at most {BATCH_RECORDS_MAX} records, got {records}"
        )));
    }
    Ok(())
}

/// Checks a conditional append's condition against its (validated) tags.
pub fn validate_cond(tags: &[Tag], cond: Cond) -> Result<(), LogError> {
    if !tags.contains(&cond.tag) {
        return Err(LogError::BadArgument(format!(
            "condition tag {} is not among the record's tags",
            cond.tag
        )));
    }
    Ok(())
}

/// Checks a read range.
pub fn validate_range(range: ReadRange) -> Result<(), LogError> {
    if range.from > range.to {
        return Err(LogError::BadArgument(format!(
            "range starts at {} after its end {}",
            range.from, range.to
        )));
    }
    if range.limit == 0 || range.limit > crate::READ_RANGE_RECORDS_MAX {
        return Err(LogError::BadArgument(format!(
            "range limit must be 1..={}, got {}",
            crate::READ_RANGE_RECORDS_MAX,
            range.limit
        )));
    }
    Ok(())
}

/// Counts a range read's records against `READ_RANGE_BYTES_MAX`.
#[derive(Debug, Default)]
pub struct ReadBudget {
    bytes: usize,
    records: usize,
}

impl ReadBudget {
    /// Whether a record of `data_bytes` still fits; the first always does.
    pub fn admit(&mut self, data_bytes: usize) -> bool {
        if self.records > 0 && self.bytes + data_bytes > crate::READ_RANGE_BYTES_MAX {
            return false;
        }
        self.bytes += data_bytes;
        self.records += 1;
        true
    }
}

/// Checks a blocking read's timeout.
pub fn validate_timeout(timeout: Duration) -> Result<(), LogError> {
    if timeout > Duration::from_millis(crate::READ_BLOCKING_TIMEOUT_MS_MAX) {
        return Err(LogError::BadArgument(format!(
            "a blocking read waits at most {} ms",
            crate::READ_BLOCKING_TIMEOUT_MS_MAX
        )));
    }
    Ok(())
}

/// Checks aux data's size.
pub fn validate_aux(aux: &[u8]) -> Result<(), LogError> {
    if aux.len() > crate::AUX_BYTES_MAX {
        return Err(LogError::TooLarge {
            what: "aux data",
            bytes: aux.len(),
            max: crate::AUX_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_tags_are_removed_in_order() {
        let tags = validate_append(&[Tag(3), Tag(1), Tag(3)], b"x").unwrap();
        assert_eq!(tags, vec![Tag(3), Tag(1)]);
    }

    #[test]
    fn empty_data_and_zero_tag_are_bad_arguments() {
        assert!(matches!(
            validate_append(&[], b""),
            Err(LogError::BadArgument(_))
        ));
        assert!(matches!(
            validate_append(&[Tag(0)], b"x"),
            Err(LogError::BadArgument(_))
        ));
        assert!(matches!(
            validate_append(&[Tag(u64::MAX)], b"x"),
            Err(LogError::BadArgument(_))
        ));
    }
}
