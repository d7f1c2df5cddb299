//! Exactly-once key-value tables of a workflow, in the log.
//!
//! A key's versions are the records that carry its tag (`entry::key_tag`), each holding the
//! write in its `writes`; the value of a key at a seqnum is the last write to it at or before
//! that seqnum. Three protocols decide what is logged, per table, fixed for an instance when it
//! starts (so a replay uses the protocol the first execution used, and a table switches
//! protocol under running instances without a pause):
//!
//! | protocol | read | write |
//! |---|---|---|
//! | `Symmetric` (Boki, Beldi) | logged: the latest value, 1 append | logged: 1 append |
//! | `WriteLog` (Halfmoon) | log-free: the value at the instance's logical time | logged: 1 append |
//! | `ReadLog` (Halfmoon) | logged: the latest value, 1 append | log-free: carried by the instance's next record |
//!
//! The logical time of an instance is the seqnum of its last record: a write-log read sees
//! every write ordered before it, the same on every replay, since the log below a seqnum never
//! changes. A read-log write is buffered and written with the next record the instance makes
//! (whatever it is), so it costs no append of its own; two writes to one key before that record
//! are both kept, in order, and the later is the key's value. Until then only the instance
//! itself sees it.

use crate::entry::{key_tag, Entry, Op, Write};
use crate::{Error, Flow};
use logbook::Seqnum;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a table logs: see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Reads and writes are logged (Boki's BokiFlow, Beldi).
    Symmetric,
    /// Writes are logged as versions; reads are log-free (Halfmoon's log-free reads: for
    /// read-heavy tables).
    #[default]
    WriteLog,
    /// Reads are logged; writes are log-free (Halfmoon's log-free writes: for write-heavy
    /// tables).
    ReadLog,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Symmetric => "symmetric",
            Protocol::WriteLog => "write-log",
            Protocol::ReadLog => "read-log",
        }
    }

    fn logs_reads(self) -> bool {
        matches!(self, Protocol::Symmetric | Protocol::ReadLog)
    }

    fn logs_writes(self) -> bool {
        matches!(self, Protocol::Symmetric | Protocol::WriteLog)
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "symmetric" => Ok(Protocol::Symmetric),
            "write-log" => Ok(Protocol::WriteLog),
            "read-log" => Ok(Protocol::ReadLog),
            other => Err(format!(
                "unknown protocol {other:?}: symmetric, write-log or read-log"
            )),
        }
    }
}

/// A table of a workflow instance: `flow.table("accounts")`. Every operation is exactly
/// once: a replayed instance reads what its first execution read and writes nothing twice.
///
/// ```no_run
/// # async fn f(flow: libflow::Flow) -> Result<(), libflow::Error> {
/// let counters = flow.table("counters");
/// let n: u64 = counters.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
/// assert_eq!(counters.get::<u64>("visits").await?, Some(n));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Table {
    pub(crate) flow: Flow,
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
}

impl Table {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol this instance uses for the table.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The value of `key`, or `None` if it has none (never written, or deleted).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let value = if self.protocol.logs_reads() {
            self.logged_read(key).await?
        } else {
            let at = self.flow.logical_time().await?;
            value_at(&self.flow, &self.name, key, at).await?
        };
        value
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    }

    /// Sets `key` to `value`.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let value = serde_json::to_value(value)?;
        self.write(key, Some(value)).await
    }

    /// Removes `key`'s value.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.write(key, None).await
    }

    /// Reads `key`, sets it to `f(value)` and returns the new value.
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<T>) -> T,
    {
        let new = f(self.get(key).await?);
        self.put(key, &new).await?;
        Ok(new)
    }

    async fn write(&self, key: &str, value: Option<Value>) -> Result<(), Error> {
        let write = Write {
            table: self.name.clone(),
            key: key.to_string(),
            value,
        };
        if self.protocol.logs_writes() {
            let op = Op::Write {
                table: self.name.clone(),
                key: key.to_string(),
            };
            let mut slot = self.flow.slot_with(Some(write)).await?;
            if slot.replayed(&op)?.is_some() {
                return Ok(());
            }
            slot.commit(op).await?;
            Ok(())
        } else {
            self.flow.buffer(write).await
        }
    }

    async fn logged_read(&self, key: &str) -> Result<Option<Value>, Error> {
        let probe = Op::Read {
            table: self.name.clone(),
            key: key.to_string(),
            value: None,
        };
        let mut slot = self.flow.slot();
        if let Some((_, entry)) = slot.replayed(&probe)? {
            return match entry.op {
                Op::Read { value, .. } => Ok(value),
                _ => unreachable!("replayed checks the kind"),
            };
        }
        slot.wait_sent().await?;
        // The instance's own writes not yet in the log come first: it reads what it wrote.
        let own = slot
            .carried()
            .iter()
            .rev()
            .find(|w| w.table == self.name && w.key == key)
            .map(|w| w.value.clone())
            .or_else(|| self.flow.in_flight_write(&self.name, key, slot.pos()));
        let value = match own {
            Some(value) => value,
            None => value_at(&self.flow, &self.name, key, Seqnum::MAX).await?,
        };
        slot.commit(Op::Read {
            table: self.name.clone(),
            key: key.to_string(),
            value: value.clone(),
        })
        .await?;
        Ok(value)
    }
}

/// The value of `table`/`key` as of seqnum `at`: the last write to it in the records of its
/// tag at or before `at`. Records of other keys that share the tag (a hash collision) are
/// passed over.
pub(crate) async fn value_at(
    flow: &Flow,
    table: &str,
    key: &str,
    at: Seqnum,
) -> Result<Option<Value>, Error> {
    value_at_tag(flow.ctx(), key_tag(table, key), table, key, at).await
}

/// `value_at` over a `Ctx`: the last write to `table`/`key` in `tag`'s records at or before
/// `at`.
pub(crate) async fn value_at_tag(
    ctx: &tally_sdk::Ctx,
    tag: logbook::Tag,
    table: &str,
    key: &str,
    at: Seqnum,
) -> Result<Option<Value>, Error> {
    let mut at = at;
    loop {
        let Some(record) = ctx.read_prev(tag, at).await? else {
            return Ok(None);
        };
        if let Ok(entry) = serde_json::from_slice::<Entry>(&record.data) {
            if let Some(w) = entry
                .writes
                .iter()
                .rev()
                .find(|w| w.table == table && w.key == key)
            {
                return Ok(w.value.clone());
            }
        }
        if record.seqnum.0 == 0 {
            return Ok(None);
        }
        at = Seqnum(record.seqnum.0 - 1);
    }
}
