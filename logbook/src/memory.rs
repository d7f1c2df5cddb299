//! An in-memory `LogBook`: one process, no durability. It defines the contract's behaviour in
//! the simplest form, and the libraries test against it. It passes the conformance suite.

use crate::wire::{IndexEntry, RecordKind};
use crate::{
    validate_append, validate_aux, validate_batch, validate_cond, validate_range, validate_timeout,
    AppendRequest, Applied, BookId, Cond, LogBook, LogError, ReadBudget, ReadRange, Record, Seqnum,
    Tag, TagIndex,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    index: TagIndex,
    records: HashMap<Seqnum, Record>,
    next_seqnum: u64,
}

impl State {
    fn order(
        &mut self,
        book: BookId,
        tags: Vec<Tag>,
        data: Bytes,
        kind: RecordKind,
    ) -> (Seqnum, Applied) {
        self.next_seqnum += 1;
        let seqnum = Seqnum(self.next_seqnum);
        let applied = self.index.apply(&IndexEntry {
            seqnum,
            book,
            tags: tags.clone(),
            kind,
        });
        if applied == Applied::Indexed {
            self.records.insert(
                seqnum,
                Record {
                    seqnum,
                    book,
                    tags,
                    data,
                    aux: None,
                },
            );
        }
        (seqnum, applied)
    }

    fn record(&self, book: BookId, seqnum: Option<Seqnum>) -> Option<Record> {
        seqnum.map(|s| {
            let record = self.records.get(&s).expect("indexed seqnum has a record");
            debug_assert_eq!(record.book, book);
            record.clone()
        })
    }
}

/// An in-memory `LogBook`.
#[derive(Default)]
pub struct MemoryLogBook {
    state: Mutex<State>,
    appended: Notify,
}

impl MemoryLogBook {
    pub fn new() -> MemoryLogBook {
        MemoryLogBook::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no panics while holding the log lock")
    }
}

#[async_trait]
impl LogBook for MemoryLogBook {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        let tags = validate_append(tags, &data)?;
        let (seqnum, _) = self.state().order(book, tags, data, RecordKind::Data);
        self.appended.notify_waiters();
        Ok(seqnum)
    }

    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        let tags = validate_append(tags, &data)?;
        validate_cond(&tags, cond)?;
        let (seqnum, applied) = self.state().order(book, tags, data, RecordKind::Cond(cond));
        self.appended.notify_waiters();
        match applied {
            Applied::CondFailed { stream_len } => Err(LogError::CondFailed { seqnum, stream_len }),
            _ => Ok(seqnum),
        }
    }

    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        validate_batch(&records)?;
        let checked = records
            .into_iter()
            .map(|r| Ok((validate_append(&r.tags, &r.data)?, r.data)))
            .collect::<Result<Vec<_>, LogError>>()?;
        let mut state = self.state();
        let seqnums = checked
            .into_iter()
            .map(|(tags, data)| state.order(book, tags, data, RecordKind::Data).0)
            .collect();
        drop(state);
        self.appended.notify_waiters();
        Ok(seqnums)
    }

    async fn read_next(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        let state = self.state();
        Ok(state.record(book, state.index.next(book, tag, min_seqnum)))
    }

    async fn read_prev(
        &self,
        book: BookId,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        let state = self.state();
        Ok(state.record(book, state.index.prev(book, tag, max_seqnum)))
    }

    async fn read_next_blocking(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        validate_timeout(timeout)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            if let Some(record) = self.read_next(book, tag, min_seqnum).await? {
                return Ok(Some(record));
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn set_aux_data(&self, book: BookId, seqnum: Seqnum, aux: Bytes) -> Result<(), LogError> {
        validate_aux(&aux)?;
        let mut state = self.state();
        if !state.index.contains(book, seqnum) {
            return Err(LogError::BadArgument(format!(
                "book {} has no record {seqnum}",
                book.0
            )));
        }
        state
            .records
            .get_mut(&seqnum)
            .expect("indexed seqnum has a record")
            .aux = Some(aux);
        Ok(())
    }

    async fn trim(&self, book: BookId, tag: Tag, below: Seqnum) -> Result<(), LogError> {
        if tag == Tag::RESERVED {
            return Err(LogError::BadArgument("tag u64::MAX is reserved".into()));
        }
        let mut state = self.state();
        state.order(
            book,
            Vec::new(),
            Bytes::new(),
            RecordKind::Trim { tag, below },
        );
        if tag == Tag::ANY {
            state.records.retain(|s, r| r.book != book || *s >= below);
        }
        Ok(())
    }

    async fn read_range(
        &self,
        book: BookId,
        tag: Tag,
        range: ReadRange,
    ) -> Result<Vec<Record>, LogError> {
        validate_range(range)?;
        let state = self.state();
        let mut budget = ReadBudget::default();
        Ok(state
            .index
            .range(book, tag, range.from, range.to, range.limit)
            .into_iter()
            .filter_map(|s| state.record(book, Some(s)))
            .take_while(|r| budget.admit(r.data.len()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    crate::conformance_tests!(|| async {
        let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
        (log, Box::new(()) as Box<dyn std::any::Any + Send>)
    });
}
