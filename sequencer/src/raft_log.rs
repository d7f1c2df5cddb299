//! `DiskStorage`: a group member's Raft log and hard state, kept in one append-only file so a
//! member that crashes comes back with its vote, its log and its conf state.
//!
//! Reads are served from an in-memory `MemStorage` that mirrors the file; writes go to both.
//! `append` and `set_hard_state` update memory at once and queue frames; `sync` writes the
//! queued frames and fdatasyncs them. `GroupNode` syncs once per raft-rs `Ready`, before it
//! sends the Ready's persisted messages (a vote or an append acknowledgement must never be
//! sent for state that a crash could lose).
//!
//! It does not compact the log, take snapshots, change membership, or lock its directory
//! against a second opener: the file grows with every entry until those exist.
//!
//! # Layout of `raft.log`
//!
//! A sequence of frames, each
//!
//! ```text
//! len u32 LE | crc u32 LE | kind u8 | body
//! ```
//!
//! where `len` counts the bytes of `kind` and `body` (at least 1, at most `FRAME_BYTES_MAX`)
//! and `crc` is CRC-32 (crc32fast) over `kind` and `body`. Kinds and bodies (integers LE):
//!
//! - `1` Entry: `index u64 | term u64 | entry_type u8 | data_len u32 | data | context`
//!   (`context` is the rest of the body). Entry frames continue the log: each one's index is
//!   one past the last entry's.
//! - `2` HardState: `term u64 | vote u64 | commit u64`. The last one wins.
//! - `3` Truncate: `from_index u64`. Entries at `from_index` and above are dropped; it is
//!   written before entries that overwrite a conflicting suffix.
//! - `4` ConfState: `voter_count u32 | voter u64 ... | learner_count u32 | learner u64 ...`.
//!   Written once, when the file is created.
//!
//! Recovery replays the frames in order. A frame that is incomplete or fails its CRC, with no
//! CRC-valid frame starting at any later offset, is a torn tail: the file is truncated to the
//! frame's start. Any other bad frame is `RaftLogError::Corrupt`, never skipped.

use raft::prelude::{ConfState, Entry, EntryType, HardState};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The Raft log's file name inside a member's directory.
pub const RAFT_LOG_FILE: &str = "raft.log";
/// The largest frame (`kind` and `body`), in bytes. Metalog entries are far smaller; the limit
/// keeps a corrupt length from asking recovery for gigabytes.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes before a frame's `kind`: `len` and `crc`.
const FRAME_HEADER_BYTES: usize = 8;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_CONF_STATE: u8 = 4;

/// Why the Raft log could not be opened or written.
#[derive(Debug, Error)]
pub enum RaftLogError {
    #[error("raft log io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("raft log {path} is corrupt at offset {offset_bytes}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset_bytes: u64,
        reason: String,
    },
    #[error("raft log {path} holds conf state {stored:?}, but the group is {given:?}")]
    ConfStateMismatch {
        path: PathBuf,
        stored: Box<ConfState>,
        given: Box<ConfState>,
    },
    #[error("a raft log frame of {bytes} bytes exceeds the limit of {FRAME_BYTES_MAX}")]
    FrameTooLarge { bytes: usize },
}

/// A `raft::Storage` that `GroupNode` can also write: what its ready loop persists.
pub trait RaftStore: Storage {
    /// Appends entries raft-rs handed out, dropping any conflicting suffix they overwrite.
    fn append(&mut self, entries: &[Entry]) -> Result<(), RaftLogError>;
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), RaftLogError>;
    /// Records a commit index learned after the Ready was persisted. It need not be synced:
    /// a member that loses it learns the commit index again from the leader.
    fn set_commit(&mut self, commit: u64) -> Result<(), RaftLogError>;
    /// Makes everything appended and set so far durable.
    fn sync(&mut self) -> Result<(), RaftLogError>;
}

impl RaftStore for MemStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), RaftLogError> {
        self.wl()
            .append(entries)
            .expect("raft-rs hands out entries that continue the stored log");
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), RaftLogError> {
        self.wl().set_hardstate(hard_state.clone());
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), RaftLogError> {
        self.wl().mut_hard_state().set_commit(commit);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RaftLogError> {
        Ok(())
    }
}

/// A Raft log persisted to `dir/raft.log`.
pub struct DiskStorage {
    mem: MemStorage,
    file: File,
    path: PathBuf,
    /// Frames written to memory but not yet to the file.
    pending: Vec<u8>,
}

impl DiskStorage {
    /// Opens the Raft log in `dir`, creating both if missing, and replays it. A new log
    /// records `conf_state`; an existing one must hold the same conf state.
    pub fn open(dir: &Path, conf_state: ConfState) -> Result<DiskStorage, RaftLogError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RaftLogError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join(RAFT_LOG_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error(&path))?;
        if !existed {
            // The file's directory entry must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(dir))?;
        }
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let replay = replay(&bytes).map_err(|(offset_bytes, reason)| RaftLogError::Corrupt {
            path: path.clone(),
            offset_bytes,
            reason,
        })?;
        if replay.valid_bytes < bytes.len() {
            file.set_len(replay.valid_bytes as u64)
                .and_then(|()| file.sync_data())
                .map_err(io_error(&path))?;
        }
        let mut storage = DiskStorage {
            mem: MemStorage::new(),
            file,
            path,
            pending: Vec::new(),
        };
        match replay.conf_state {
            Some(stored) if stored != conf_state => {
                return Err(RaftLogError::ConfStateMismatch {
                    path: storage.path,
                    stored: Box::new(stored),
                    given: Box::new(conf_state),
                })
            }
            Some(_) => {}
            None => {
                if !replay.entries.is_empty() || replay.hard_state.is_some() {
                    return Err(RaftLogError::Corrupt {
                        path: storage.path,
                        offset_bytes: 0,
                        reason: "the log holds entries but no conf state".to_string(),
                    });
                }
                storage.pending.extend(conf_state_frame(&conf_state));
                storage.sync()?;
            }
        }
        storage.mem.initialize_with_conf_state(conf_state);
        {
            let mut core = storage.mem.wl();
            core.append(&replay.entries)
                .expect("replay checked that the entries are contiguous from index 1");
            if let Some(hard_state) = replay.hard_state {
                core.set_hardstate(hard_state);
            }
        }
        Ok(storage)
    }

    /// The path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory mirror, for reading what the log holds.
    pub fn mem(&self) -> &MemStorage {
        &self.mem
    }

    fn queue(&mut self, kind: u8, body: &[u8]) -> Result<(), RaftLogError> {
        let len = body.len() + 1;
        if len > FRAME_BYTES_MAX {
            return Err(RaftLogError::FrameTooLarge { bytes: len });
        }
        self.pending.extend(frame(kind, body));
        Ok(())
    }
}

impl RaftStore for DiskStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), RaftLogError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last_index =
            Storage::last_index(&self.mem).expect("MemStorage always knows its last index");
        assert!(
            first.index <= last_index + 1,
            "raft-rs appends entries that continue the log"
        );
        if first.index <= last_index {
            self.queue(KIND_TRUNCATE, &first.index.to_le_bytes())?;
        }
        for entry in entries {
            self.queue(KIND_ENTRY, &encode_entry(entry))?;
        }
        self.mem
            .wl()
            .append(entries)
            .expect("raft-rs hands out entries that continue the stored log");
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), RaftLogError> {
        self.queue(KIND_HARD_STATE, &encode_hard_state(hard_state))?;
        self.mem.wl().set_hardstate(hard_state.clone());
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), RaftLogError> {
        let mut hard_state = self.mem.rl().hard_state().clone();
        hard_state.set_commit(commit);
        self.set_hard_state(&hard_state)
    }

    fn sync(&mut self) -> Result<(), RaftLogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        self.pending.clear();
        result.map_err(|source| RaftLogError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.mem.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<raft::prelude::Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 1).expect("frames are at most FRAME_BYTES_MAX");
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(body);
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + 1 + body.len());
    bytes.extend(len.to_le_bytes());
    bytes.extend(hasher.finalize().to_le_bytes());
    bytes.push(kind);
    bytes.extend(body);
    bytes
}

fn conf_state_frame(conf_state: &ConfState) -> Vec<u8> {
    let mut body = Vec::new();
    for ids in [conf_state.get_voters(), conf_state.get_learners()] {
        let count = u32::try_from(ids.len()).expect("a group has few members");
        body.extend(count.to_le_bytes());
        for id in ids {
            body.extend(id.to_le_bytes());
        }
    }
    frame(KIND_CONF_STATE, &body)
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let data = entry.get_data();
    let context = entry.get_context();
    let mut body = Vec::with_capacity(21 + data.len() + context.len());
    body.extend(entry.index.to_le_bytes());
    body.extend(entry.term.to_le_bytes());
    body.push(entry_type_code(entry.get_entry_type()));
    let data_len = u32::try_from(data.len()).expect("entries are at most FRAME_BYTES_MAX");
    body.extend(data_len.to_le_bytes());
    body.extend(data);
    body.extend(context);
    body
}

fn encode_hard_state(hard_state: &HardState) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend(hard_state.term.to_le_bytes());
    body.extend(hard_state.vote.to_le_bytes());
    body.extend(hard_state.commit.to_le_bytes());
    body
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// Reads a body field by field; `None` when the body is too short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        let bytes = self.take(8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
}

fn decode_entry(body: &[u8]) -> Option<Entry> {
    let mut reader = Reader(body);
    let index = reader.u64()?;
    let term = reader.u64()?;
    let entry_type = match reader.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    };
    let data_len = usize::try_from(reader.u32()?).ok()?;
    let data = reader.take(data_len)?.to_vec().into();
    Some(Entry {
        index,
        term,
        entry_type,
        data,
        context: reader.0.to_vec().into(),
        ..Default::default()
    })
}

fn decode_hard_state(body: &[u8]) -> Option<HardState> {
    let mut reader = Reader(body);
    let hard_state = HardState {
        term: reader.u64()?,
        vote: reader.u64()?,
        commit: reader.u64()?,
        ..Default::default()
    };
    reader.0.is_empty().then_some(hard_state)
}

fn decode_conf_state(body: &[u8]) -> Option<ConfState> {
    let mut reader = Reader(body);
    let mut lists = [Vec::new(), Vec::new()];
    for ids in &mut lists {
        let count = reader.u32()?;
        for _ in 0..count {
            ids.push(reader.u64()?);
        }
    }
    let [voters, learners] = lists;
    reader
        .0
        .is_empty()
        .then(|| ConfState::from((voters, learners)))
}

/// The frame starting at `offset`, if it is complete and passes its CRC: (kind, body).
fn valid_frame(bytes: &[u8], offset: usize) -> Option<(u8, &[u8])> {
    let header = bytes.get(offset..offset + FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len == 0 || len > FRAME_BYTES_MAX {
        return None;
    }
    let start = offset + FRAME_HEADER_BYTES;
    let payload = bytes.get(start..start + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload[0], &payload[1..]))
}

/// What a replay of the file found.
struct Replay {
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    /// Bytes up to the end of the last valid frame; a torn tail starts here.
    valid_bytes: usize,
}

/// Replays frames from the start; `Err((offset_bytes, reason))` for corruption.
fn replay(bytes: &[u8]) -> Result<Replay, (u64, String)> {
    let mut replay = Replay {
        entries: Vec::new(),
        hard_state: None,
        conf_state: None,
        valid_bytes: 0,
    };
    let mut offset = 0;
    while offset < bytes.len() {
        let Some((kind, body)) = valid_frame(bytes, offset) else {
            // Torn only if no valid frame starts anywhere after it.
            if (offset + 1..bytes.len()).any(|later| valid_frame(bytes, later).is_some()) {
                return Err((
                    offset as u64,
                    "bad frame followed by valid frames".to_string(),
                ));
            }
            break;
        };
        let corrupt = |reason: &str| (offset as u64, reason.to_string());
        match kind {
            KIND_ENTRY => {
                let entry = decode_entry(body).ok_or_else(|| corrupt("undecodable entry"))?;
                let expected = replay.entries.last().map_or(1, |last| last.index + 1);
                if entry.index != expected {
                    return Err(corrupt(&format!(
                        "entry index {} where {expected} was expected",
                        entry.index
                    )));
                }
                replay.entries.push(entry);
            }
            KIND_HARD_STATE => {
                let hard_state =
                    decode_hard_state(body).ok_or_else(|| corrupt("undecodable hard state"))?;
                replay.hard_state = Some(hard_state);
            }
            KIND_TRUNCATE => {
                let from_index = Reader(body)
                    .u64()
                    .filter(|_| body.len() == 8)
                    .ok_or_else(|| corrupt("undecodable truncate"))?;
                if from_index == 0 {
                    return Err(corrupt("truncate from index 0"));
                }
                let keep = usize::try_from(from_index - 1).unwrap_or(usize::MAX);
                replay.entries.truncate(keep);
            }
            KIND_CONF_STATE => {
                if replay.conf_state.is_some() {
                    return Err(corrupt("a second conf state"));
                }
                let conf_state =
                    decode_conf_state(body).ok_or_else(|| corrupt("undecodable conf state"))?;
                replay.conf_state = Some(conf_state);
            }
            other => return Err(corrupt(&format!("unknown frame kind {other}"))),
        }
        offset += FRAME_HEADER_BYTES + 1 + body.len();
        replay.valid_bytes = offset;
    }
    let last_index = replay.entries.last().map_or(0, |last| last.index);
    if let Some(hard_state) = &replay.hard_state {
        if hard_state.commit > last_index {
            return Err((
                replay.valid_bytes as u64,
                format!(
                    "commit index {} is past the last entry {last_index}",
                    hard_state.commit
                ),
            ));
        }
    }
    Ok(replay)
}
