//! Recovery at open: scans every segment in order, rebuilds the index, truncates a torn tail
//! of the last segment, and reports corruption anywhere else. It writes nothing but that
//! truncation (and the removal of a last segment torn inside its header).

use crate::codec::{self, Frame};
use crate::index::{Index, Slot};
use crate::{segment_name, segment_path, Recovery, StoreError};
use bytes::Bytes;
use logbook::wire::RecordKind;
use logbook::wire::{IndexEntry, LocalId, ShardId};
use logbook::{BookId, Seqnum, Tag};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

/// What recovery hands to `Store::open`.
pub(crate) struct Recovered {
    pub index: Index,
    pub recovery: Recovery,
    /// The number the next segment gets.
    pub next_segment: u64,
}

/// The segment numbers in `dir`, ascending. Files not named like segments are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("list {}", dir.display()), &e))?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("list {}", dir.display()), &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse::<u64>() {
                numbers.push(n);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

struct Pending {
    shard: ShardId,
    local_id: LocalId,
    book: BookId,
    tags: Vec<Tag>,
    kind: RecordKind,
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    let numbers = list_segments(dir)?;
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StoreError::Corrupt {
                segment: segment_name(pair[0] + 1),
                offset_bytes: 0,
                reason: format!(
                    "segment missing between {} and {}",
                    segment_name(pair[0]),
                    segment_name(pair[1])
                ),
            });
        }
    }
    let mut index = Index::default();
    let mut recovery = Recovery::default();
    let mut records = Vec::new();
    let mut started = false;
    let mut next_segment = numbers.first().copied().unwrap_or(0);
    for (i, &number) in numbers.iter().enumerate() {
        let is_last = i + 1 == numbers.len();
        let path = segment_path(dir, number);
        let corrupt = |offset: usize, reason: String| StoreError::Corrupt {
            segment: segment_name(number),
            offset_bytes: offset as u64,
            reason,
        };
        let bytes = Bytes::from(
            std::fs::read(&path)
                .map_err(|e| StoreError::io(format!("read {}", path.display()), &e))?,
        );
        let scan =
            codec::scan(&bytes, is_last).map_err(|(offset, reason)| corrupt(offset, reason))?;
        let torn_at = scan.torn_at;
        for (offset, len, frame) in scan.frames {
            match (offset == 0, frame) {
                (true, Frame::Header(h)) => {
                    if h.segment != number {
                        return Err(corrupt(0, format!("header names segment {}", h.segment)));
                    }
                    if !started {
                        index.start_from(&h);
                        started = true;
                    }
                    index.add_segment(number, Arc::new(open_read(&path)?), 0);
                }
                (true, _) => return Err(corrupt(0, "first frame is not a segment header".into())),
                (false, Frame::Header(_)) => {
                    return Err(corrupt(offset, "segment header inside a segment".into()))
                }
                (false, Frame::Record(r)) => {
                    let slot = Slot {
                        segment: number,
                        offset: offset as u64,
                        len: len as u32,
                        data_len: r.record.data.len() as u32,
                    };
                    index
                        .apply_record(r.shard, r.local_id, slot)
                        .map_err(|reason| corrupt(offset, reason))?;
                    records.push(Pending {
                        shard: r.shard,
                        local_id: r.local_id,
                        book: r.record.book,
                        tags: r.record.tags,
                        kind: r.record.kind,
                    });
                    recovery.records += 1;
                }
                (false, Frame::Metalog(entry)) => {
                    index.apply_metalog(&entry, number);
                    recovery.metalog.push(entry);
                }
                (false, Frame::Checkpoint(c)) => {
                    if let Some(e) = &c.last_metalog {
                        index.note_last_metalog(e);
                    }
                    // The newest checkpoint summarises the most; never step back.
                    if recovery
                        .checkpoint
                        .as_ref()
                        .is_none_or(|(b, _)| c.below > *b)
                    {
                        recovery.checkpoint = Some((c.below, c.data));
                    }
                }
            }
        }
        if let Some(at) = torn_at {
            recovery.truncated_tail_bytes = (bytes.len() - at) as u64;
            if at == 0 {
                // Torn inside its header: the segment holds nothing; the next one replaces it.
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io(format!("remove {}", path.display()), &e))?;
                index.segments.remove(&number);
                next_segment = number;
                tracing::warn!(segment = %segment_name(number), "removed a segment torn inside its header");
                continue;
            }
            truncate(&path, at as u64)?;
            tracing::warn!(segment = %segment_name(number), offset_bytes = at, torn_bytes = bytes.len() - at, "truncated a torn tail");
        } else if bytes.is_empty() {
            if is_last {
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io(format!("remove {}", path.display()), &e))?;
                next_segment = number;
                continue;
            }
            return Err(corrupt(0, "empty segment".into()));
        } else if is_last {
            // What a crash left of the last segment may be only in the page cache (the
            // process died, the machine did not): sync it before any of it counts as durable,
            // or a power loss soon after would take records this node then reports as held.
            sync(&path)?;
        }
        index.grow_segment(
            number,
            (bytes.len() - recovery.truncated_tail_bytes as usize) as u64,
        );
        recovery.segments += 1;
        next_segment = number + 1;
    }
    let below = recovery.checkpoint.as_ref().map_or(Seqnum::ZERO, |c| c.0);
    index.drop_segments(&[], below);
    let mut ordered: Vec<IndexEntry> = records
        .into_iter()
        .filter_map(|p| {
            let seqnum = index.seq_of(p.shard, p.local_id.view(), p.local_id.counter())?;
            (seqnum >= below).then_some(IndexEntry {
                seqnum,
                book: p.book,
                tags: p.tags,
                kind: p.kind,
            })
        })
        .collect();
    ordered.sort_by_key(|e| e.seqnum);
    recovery.ordered = ordered;
    recovery.last_metalog = index.last_metalog.clone();
    recovery.max_view = index.max_view;
    Ok(Recovered {
        index,
        recovery,
        next_segment,
    })
}

fn open_read(path: &Path) -> Result<File, StoreError> {
    File::open(path).map_err(|e| StoreError::io(format!("open {}", path.display()), &e))
}

fn sync(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| StoreError::io(format!("sync {}", path.display()), &e))
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), &e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(format!("truncate {}", path.display()), &e))
}
