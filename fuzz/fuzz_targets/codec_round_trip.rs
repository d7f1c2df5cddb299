//! The segment codec on structured frames: every frame the encoder writes decodes to the same
//! frame and length, also behind other frames in one buffer, and every strict prefix of the
//! buffer's last frame is `Incomplete`. A metalog entry whose seqnums or local counters would
//! overflow is refused as a bad body instead (`MetalogEntry::validate`).

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use logbook::wire::{LocalId, LogRecord, MetalogEntry, RecordKind, ShardCut, ShardId};
use logbook::{BookId, Cond, Seqnum, Tag, ViewId};
use storage_node::codec::{
    self, CheckpointFrame, DecodeError, Frame, RecordFrame, SegmentHeader, ShardCursor,
};

#[derive(Arbitrary, Debug)]
struct Entry {
    position: u64,
    view: u16,
    /// Whether `start` is a position in `view` (as every real entry's) or any seqnum.
    start_in_view: bool,
    start: u64,
    cuts: Vec<(u32, u64, u64)>,
}

impl Entry {
    fn build(&self) -> MetalogEntry {
        let view = ViewId(self.view);
        MetalogEntry {
            position: self.position,
            view,
            start_seqnum: if self.start_in_view {
                Seqnum::new(view, self.start & Seqnum::POSITION_MAX)
            } else {
                Seqnum(self.start)
            },
            cuts: self
                .cuts
                .iter()
                .map(|&(shard, start, delta)| ShardCut {
                    shard: ShardId(shard),
                    start,
                    delta,
                })
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Data,
    Cond(u64, u64, u64, u64),
    Trim(u64, u64),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Header {
        segment: u64,
        max_view: u16,
        last: Option<Entry>,
        shards: Vec<(u32, u16, u64)>,
    },
    Record {
        shard: u32,
        local_id: u64,
        book: u32,
        kind: Kind,
        tags: Vec<u64>,
        data: Vec<u8>,
    },
    Metalog(Entry),
    Checkpoint {
        below: u64,
        data: Vec<u8>,
        last: Option<Entry>,
    },
}

impl Input {
    /// The frame, and whether its metalog entries (if any) are valid.
    fn build(&self) -> (Frame, bool) {
        let valid = |e: &Option<Entry>| {
            let e = e.as_ref().map(Entry::build);
            let ok = e.as_ref().is_none_or(|e| e.validate().is_ok());
            (e, ok)
        };
        match self {
            Input::Header {
                segment,
                max_view,
                last,
                shards,
            } => {
                let (last_metalog, ok) = valid(last);
                let header = SegmentHeader {
                    segment: *segment,
                    max_view: ViewId(*max_view),
                    last_metalog,
                    shards: shards
                        .iter()
                        .map(|&(shard, view, next_counter)| ShardCursor {
                            shard: ShardId(shard),
                            view: ViewId(view),
                            next_counter,
                        })
                        .collect(),
                };
                (Frame::Header(header), ok)
            }
            Input::Record {
                shard,
                local_id,
                book,
                kind,
                tags,
                data,
            } => {
                let kind = match *kind {
                    Kind::Data => RecordKind::Data,
                    Kind::Cond(tag, position, token, after) => {
                        RecordKind::Cond(Cond::chained(Tag(tag), position, token, after))
                    }
                    Kind::Trim(tag, below) => RecordKind::Trim {
                        tag: Tag(tag),
                        below: Seqnum(below),
                    },
                };
                let record = RecordFrame {
                    shard: ShardId(*shard),
                    local_id: LocalId(*local_id),
                    record: LogRecord {
                        book: BookId(*book),
                        tags: tags
                            .iter()
                            .take(u16::MAX as usize)
                            .map(|&t| Tag(t))
                            .collect(),
                        kind,
                        data: Bytes::copy_from_slice(data),
                    },
                };
                (Frame::Record(record), true)
            }
            Input::Metalog(e) => {
                let e = e.build();
                let ok = e.validate().is_ok();
                (Frame::Metalog(e), ok)
            }
            Input::Checkpoint { below, data, last } => {
                let (last_metalog, ok) = valid(last);
                let checkpoint = CheckpointFrame {
                    below: Seqnum(*below),
                    data: Bytes::copy_from_slice(data),
                    last_metalog,
                };
                (Frame::Checkpoint(checkpoint), ok)
            }
        }
    }
}

fuzz_target!(|inputs: Vec<Input>| {
    let frames: Vec<(Frame, bool)> = inputs.iter().take(8).map(Input::build).collect();
    let mut buf = Vec::new();
    let mut lens = Vec::new();
    for (frame, _) in &frames {
        lens.push(codec::encode(frame, &mut buf));
    }
    let buf = Bytes::from(buf);
    let mut offset = 0;
    for ((frame, valid), len) in frames.iter().zip(&lens) {
        match codec::decode(&buf.slice(offset..)) {
            Ok((got, got_len)) => {
                assert!(
                    valid,
                    "an entry that does not validate was decoded: {frame:?}"
                );
                assert_eq!(&got, frame);
                assert_eq!(got_len, *len);
            }
            Err(DecodeError::BadBody(_)) if !valid => {}
            Err(e) => panic!("{frame:?} does not decode: {e}"),
        }
        offset += len;
    }
    assert_eq!(offset, buf.len());
    if let Some(&len) = lens.last() {
        // A frame is at least 9 bytes, so every cut is a strict prefix.
        let start = buf.len() - len;
        for cut in [0, 1, len / 2, len - 1] {
            let torn = buf.slice(start..start + cut);
            assert_eq!(
                codec::decode(&torn).map(|_| ()),
                Err(DecodeError::Incomplete)
            );
        }
    }
});
