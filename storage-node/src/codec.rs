//! The byte layout of segment files: encoding and decoding of frames. This module does no IO
//! and knows nothing of segments beyond the header frame's fields.
//!
//! # Frame
//!
//! Every frame, at any offset of a segment file:
//!
//! ```text
//! offset  size  field
//! 0       4     len    u32 LE: bytes after the CRC field (kind + body); 1..=FRAME_LEN_MAX
//! 4       4     crc    u32 LE: CRC-32 (crc32fast, IEEE) over the `len` bytes that follow
//! 8       1     kind   u8: 1 header, 2 record, 3 metalog, 4 checkpoint
//! 9       len-1 body   kind-specific, below
//! ```
//!
//! All integers are little-endian and fixed-width. An optional value is a `u8` presence flag
//! (0 absent, 1 present) followed by the value. A body must be consumed exactly: trailing bytes
//! are a decode error.
//!
//! # Bodies
//!
//! `MetalogEntry` (used inside several bodies):
//! `position u64, view u16, start_seqnum u64, cut_count u32, cut_count x (shard u32, start u64,
//! delta u64)`; an entry that fails `MetalogEntry::validate` is a bad body.
//!
//! Header (kind 1, the first frame of every segment; it carries the state that must survive
//! the deletion of older segments):
//! `version u32 (= 1), segment u64 (the file's number), max_view u16,
//! last_metalog optional MetalogEntry, shard_count u32,
//! shard_count x (shard u32, view u16, next_counter u64)`: per shard, the view of its newest
//! records and how many of that view's records precede this segment.
//!
//! Record (kind 2):
//! `shard u32, local_id u64, book u32, record_kind u8` then by `record_kind`:
//! 0 data: nothing; 1 cond: `tag u64, position u64`; 2 trim: `tag u64, below u64`;
//! 3 chained cond: `tag u64, position u64, token u64, after u64` (a cond with tokens);
//! then `tag_count u16, tag_count x tag u64, data_len u32, data`.
//!
//! Metalog (kind 3): one `MetalogEntry`.
//!
//! Checkpoint (kind 4): `below u64, data_len u32, data, last_metalog optional MetalogEntry`.

use bytes::{BufMut, Bytes};
use logbook::wire::{LocalId, LogRecord, MetalogEntry, RecordKind, ShardCut, ShardId};
use logbook::{BookId, Cond, Seqnum, Tag, ViewId};

/// Bytes before a frame's kind: the length and CRC fields.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// The segment format version written in every header.
pub const FORMAT_VERSION: u32 = 1;
/// Largest caller payload of a checkpoint frame, in bytes.
pub const CHECKPOINT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest value of a frame's `len` field: a checkpoint at its limit plus room for its fields.
pub const FRAME_LEN_MAX: usize = CHECKPOINT_BYTES_MAX + 64 * 1024;

const KIND_HEADER: u8 = 1;
const KIND_RECORD: u8 = 2;
const KIND_METALOG: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;

const RECORD_DATA: u8 = 0;
const RECORD_COND: u8 = 1;
const RECORD_TRIM: u8 = 2;
const RECORD_COND_CHAINED: u8 = 3;

/// One shard's position at the start of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCursor {
    pub shard: ShardId,
    /// The view of the shard's newest record.
    pub view: ViewId,
    /// How many records of `view` the shard has (the next local counter).
    pub next_counter: u64,
}

/// The first frame of every segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u64,
    pub max_view: ViewId,
    pub last_metalog: Option<MetalogEntry>,
    pub shards: Vec<ShardCursor>,
}

/// A record of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFrame {
    pub shard: ShardId,
    pub local_id: LocalId,
    pub record: LogRecord,
}

/// A checkpoint written by `reclaim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFrame {
    pub below: Seqnum,
    pub data: Bytes,
    pub last_metalog: Option<MetalogEntry>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Header(SegmentHeader),
    Record(RecordFrame),
    Metalog(MetalogEntry),
    Checkpoint(CheckpointFrame),
}

/// Why bytes at an offset are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the frame does (a torn tail if nothing valid follows).
    Incomplete,
    /// The length field is zero or above `FRAME_LEN_MAX`.
    BadLength(u32),
    /// The CRC does not match the bytes.
    BadCrc { stored: u32, computed: u32 },
    /// The CRC matches but the body does not parse: a bug or a format mismatch, never torn.
    BadBody(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete => write!(f, "incomplete frame"),
            DecodeError::BadLength(len) => write!(f, "bad frame length {len}"),
            DecodeError::BadCrc { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            DecodeError::BadBody(reason) => write!(f, "bad frame body: {reason}"),
        }
    }
}

/// Appends the encoding of `frame` to `out` and returns its length in bytes.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> usize {
    match frame {
        Frame::Header(h) => encode_header(h, out),
        Frame::Record(r) => encode_record(r.shard, r.local_id, &r.record, out),
        Frame::Metalog(e) => encode_metalog(e, out),
        Frame::Checkpoint(c) => encode_checkpoint(c.below, &c.data, c.last_metalog.as_ref(), out),
    }
}

/// Appends a header frame; returns its length.
pub fn encode_header(h: &SegmentHeader, out: &mut Vec<u8>) -> usize {
    framed(out, KIND_HEADER, |out| {
        out.put_u32_le(FORMAT_VERSION);
        out.put_u64_le(h.segment);
        out.put_u16_le(h.max_view.0);
        put_opt_metalog(out, h.last_metalog.as_ref());
        out.put_u32_le(u32::try_from(h.shards.len()).expect("fewer than 2^32 shards"));
        for c in &h.shards {
            out.put_u32_le(c.shard.0);
            out.put_u16_le(c.view.0);
            out.put_u64_le(c.next_counter);
        }
    })
}

/// Appends a record frame; returns its length. The caller has checked the record's limits.
pub fn encode_record(shard: ShardId, local_id: LocalId, r: &LogRecord, out: &mut Vec<u8>) -> usize {
    framed(out, KIND_RECORD, |out| {
        out.put_u32_le(shard.0);
        out.put_u64_le(local_id.0);
        out.put_u32_le(r.book.0);
        match r.kind {
            RecordKind::Data => out.put_u8(RECORD_DATA),
            RecordKind::Cond(c) if c.token == 0 && c.after == 0 => {
                out.put_u8(RECORD_COND);
                out.put_u64_le(c.tag.0);
                out.put_u64_le(c.position);
            }
            RecordKind::Cond(c) => {
                out.put_u8(RECORD_COND_CHAINED);
                out.put_u64_le(c.tag.0);
                out.put_u64_le(c.position);
                out.put_u64_le(c.token);
                out.put_u64_le(c.after);
            }
            RecordKind::Trim { tag, below } => {
                out.put_u8(RECORD_TRIM);
                out.put_u64_le(tag.0);
                out.put_u64_le(below.0);
            }
        }
        out.put_u16_le(u16::try_from(r.tags.len()).expect("tag count checked by the caller"));
        for t in &r.tags {
            out.put_u64_le(t.0);
        }
        out.put_u32_le(u32::try_from(r.data.len()).expect("data length checked by the caller"));
        out.put_slice(&r.data);
    })
}

/// Appends a metalog frame; returns its length.
pub fn encode_metalog(e: &MetalogEntry, out: &mut Vec<u8>) -> usize {
    framed(out, KIND_METALOG, |out| put_metalog(out, e))
}

/// Appends a checkpoint frame; returns its length. `data` is at most `CHECKPOINT_BYTES_MAX`.
pub fn encode_checkpoint(
    below: Seqnum,
    data: &[u8],
    last_metalog: Option<&MetalogEntry>,
    out: &mut Vec<u8>,
) -> usize {
    framed(out, KIND_CHECKPOINT, |out| {
        out.put_u64_le(below.0);
        out.put_u32_le(u32::try_from(data.len()).expect("checkpoint length checked by the caller"));
        out.put_slice(data);
        put_opt_metalog(out, last_metalog);
    })
}

/// Writes the prefix, the kind and the body, then fills in the length and CRC.
fn framed(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_BYTES]);
    out.put_u8(kind);
    body(out);
    let len = out.len() - start - FRAME_PREFIX_BYTES;
    assert!(
        len <= FRAME_LEN_MAX,
        "frame of {len} bytes exceeds FRAME_LEN_MAX"
    );
    let crc = crc32fast::hash(&out[start + FRAME_PREFIX_BYTES..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn put_metalog(out: &mut Vec<u8>, e: &MetalogEntry) {
    out.put_u64_le(e.position);
    out.put_u16_le(e.view.0);
    out.put_u64_le(e.start_seqnum.0);
    out.put_u32_le(u32::try_from(e.cuts.len()).expect("fewer than 2^32 cuts"));
    for c in &e.cuts {
        out.put_u32_le(c.shard.0);
        out.put_u64_le(c.start);
        out.put_u64_le(c.delta);
    }
}

fn put_opt_metalog(out: &mut Vec<u8>, e: Option<&MetalogEntry>) {
    match e {
        None => out.put_u8(0),
        Some(e) => {
            out.put_u8(1);
            put_metalog(out, e);
        }
    }
}

/// Checks the prefix and CRC of the frame at the start of `buf`; returns the frame's total
/// length. Does not parse the body.
pub fn check(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < FRAME_PREFIX_BYTES {
        return Err(DecodeError::Incomplete);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if len == 0 || len as usize > FRAME_LEN_MAX {
        return Err(DecodeError::BadLength(len));
    }
    let total = FRAME_PREFIX_BYTES + len as usize;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&buf[FRAME_PREFIX_BYTES..total]);
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    Ok(total)
}

/// A segment read frame by frame.
#[derive(Debug)]
pub struct Scan {
    /// Every frame, with its offset and length.
    pub frames: Vec<(usize, usize, Frame)>,
    /// Where a torn tail starts, if the segment has one.
    pub torn_at: Option<usize>,
}

/// Reads a segment's frames in order. A frame that does not decode ends the scan as a torn
/// tail if the segment is the last one and no valid frame follows it (a crash cut the last
/// write short); anywhere else, or if its CRC holds but its body does not parse, it is
/// corruption: `Err((offset, reason))`.
pub fn scan(bytes: &Bytes, is_last: bool) -> Result<Scan, (usize, String)> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match decode(&bytes.slice(offset..)) {
            Ok((frame, len)) => {
                frames.push((offset, len, frame));
                offset += len;
            }
            Err(DecodeError::BadBody(reason)) => return Err((offset, reason)),
            Err(e) => {
                if is_last && !valid_frame_after(bytes, offset + 1) {
                    return Ok(Scan {
                        frames,
                        torn_at: Some(offset),
                    });
                }
                return Err((offset, e.to_string()));
            }
        }
    }
    Ok(Scan {
        frames,
        torn_at: None,
    })
}

/// Whether any complete, CRC-valid frame starts at or after `from`: if so, a bad frame before
/// it is corruption, not a torn tail.
fn valid_frame_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len()).any(|p| check(&bytes[p..]).is_ok())
}

/// Decodes the frame at the start of `buf` (checking its CRC); returns it and its length.
/// Record data is a zero-copy slice of `buf`.
pub fn decode(buf: &Bytes) -> Result<(Frame, usize), DecodeError> {
    let total = check(buf)?;
    let body = buf.slice(FRAME_PREFIX_BYTES + 1..total);
    let mut r = Reader { buf: &body, pos: 0 };
    let frame = match buf[FRAME_PREFIX_BYTES] {
        KIND_HEADER => Frame::Header(decode_header(&mut r)?),
        KIND_RECORD => Frame::Record(decode_record(&mut r)?),
        KIND_METALOG => Frame::Metalog(r.metalog()?),
        KIND_CHECKPOINT => Frame::Checkpoint(CheckpointFrame {
            below: Seqnum(r.u64()?),
            data: r.bytes_u32()?,
            last_metalog: r.opt_metalog()?,
        }),
        other => return Err(DecodeError::BadBody(format!("unknown frame kind {other}"))),
    };
    if r.pos != body.len() {
        return Err(DecodeError::BadBody(format!(
            "{} trailing bytes after the body",
            body.len() - r.pos
        )));
    }
    Ok((frame, total))
}

fn decode_header(r: &mut Reader<'_>) -> Result<SegmentHeader, DecodeError> {
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadBody(format!(
            "segment format version {version}, expected {FORMAT_VERSION}"
        )));
    }
    let segment = r.u64()?;
    let max_view = ViewId(r.u16()?);
    let last_metalog = r.opt_metalog()?;
    let count = r.u32()? as usize;
    let mut shards = Vec::with_capacity(count.min(r.remaining() / 14));
    for _ in 0..count {
        shards.push(ShardCursor {
            shard: ShardId(r.u32()?),
            view: ViewId(r.u16()?),
            next_counter: r.u64()?,
        });
    }
    Ok(SegmentHeader {
        segment,
        max_view,
        last_metalog,
        shards,
    })
}

fn decode_record(r: &mut Reader<'_>) -> Result<RecordFrame, DecodeError> {
    let shard = ShardId(r.u32()?);
    let local_id = LocalId(r.u64()?);
    let book = BookId(r.u32()?);
    let kind = match r.u8()? {
        RECORD_DATA => RecordKind::Data,
        RECORD_COND => RecordKind::Cond(Cond::at(Tag(r.u64()?), r.u64()?)),
        RECORD_COND_CHAINED => {
            let cond = Cond::chained(Tag(r.u64()?), r.u64()?, r.u64()?, r.u64()?);
            if cond.token == 0 && cond.after == 0 {
                // Written as a plain cond: a frame decodes only from its record's one encoding.
                return Err(DecodeError::BadBody(
                    "a chained cond without tokens is a plain cond".into(),
                ));
            }
            RecordKind::Cond(cond)
        }
        RECORD_TRIM => RecordKind::Trim {
            tag: Tag(r.u64()?),
            below: Seqnum(r.u64()?),
        },
        other => return Err(DecodeError::BadBody(format!("unknown record kind {other}"))),
    };
    let count = r.u16()? as usize;
    let mut tags = Vec::with_capacity(count.min(r.remaining() / 8));
    for _ in 0..count {
        tags.push(Tag(r.u64()?));
    }
    let data = r.bytes_u32()?;
    Ok(RecordFrame {
        shard,
        local_id,
        record: LogRecord {
            book,
            tags,
            kind,
            data,
        },
    })
}

/// A bounds-checked cursor over a frame body.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::BadBody(format!(
                "body ends at {} but a field needs {n} bytes at {}",
                self.buf.len(),
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes_u32(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..start + len))
    }

    fn metalog(&mut self) -> Result<MetalogEntry, DecodeError> {
        let position = self.u64()?;
        let view = ViewId(self.u16()?);
        let start_seqnum = Seqnum(self.u64()?);
        let count = self.u32()? as usize;
        let mut cuts = Vec::with_capacity(count.min(self.remaining() / 20));
        for _ in 0..count {
            cuts.push(ShardCut {
                shard: ShardId(self.u32()?),
                start: self.u64()?,
                delta: self.u64()?,
            });
        }
        let entry = MetalogEntry {
            position,
            view,
            start_seqnum,
            cuts,
        };
        // Recovery and the index compute seqnums and counters from it.
        entry.validate().map_err(DecodeError::BadBody)?;
        Ok(entry)
    }

    fn opt_metalog(&mut self) -> Result<Option<MetalogEntry>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.metalog()?)),
            other => Err(DecodeError::BadBody(format!("bad presence flag {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record frame of kind `record_kind` with `fields` (u64s) as its kind's body.
    fn record_frame(record_kind: u8, fields: &[u64]) -> Bytes {
        let mut out = Vec::new();
        framed(&mut out, KIND_RECORD, |out| {
            out.put_u32_le(1); // shard
            out.put_u64_le(0); // local id
            out.put_u32_le(0); // book
            out.put_u8(record_kind);
            for f in fields {
                out.put_u64_le(*f);
            }
            out.put_u16_le(1);
            out.put_u64_le(5); // a tag
            out.put_u32_le(1);
            out.put_u8(b'x');
        });
        Bytes::from(out)
    }

    #[test]
    fn a_chained_cond_decodes_only_with_a_token() {
        // Both tokens 0 is a plain cond, which has an encoding of its own: refused, so every
        // frame that decodes encodes back to the same bytes (a fuzzing finding).
        let plain = record_frame(RECORD_COND_CHAINED, &[5, 3, 0, 0]);
        assert!(matches!(decode(&plain), Err(DecodeError::BadBody(_))));
        for fields in [[5, 3, 7, 0], [5, 3, 0, 7], [5, 3, 7, 7]] {
            let frame = record_frame(RECORD_COND_CHAINED, &fields);
            let (decoded, len) = decode(&frame).expect("a chained cond with a token");
            let mut out = Vec::new();
            assert_eq!(encode(&decoded, &mut out), len);
            assert_eq!(out, frame[..len]);
        }
    }

    /// Valid entries only (`MetalogEntry::validate`): the codec refuses the others.
    fn metalog_strategy() -> impl Strategy<Value = MetalogEntry> {
        (
            any::<u64>(),
            any::<u16>(),
            0..(1u64 << 40),
            prop::collection::btree_map(any::<u32>(), (0..(1u64 << 47), 0..(1u64 << 20)), 0..5),
        )
            .prop_map(|(position, view, start, cuts)| MetalogEntry {
                position,
                view: ViewId(view),
                start_seqnum: Seqnum::new(ViewId(view), start),
                cuts: cuts
                    .into_iter()
                    .map(|(s, (start, delta))| ShardCut {
                        shard: ShardId(s),
                        start,
                        delta,
                    })
                    .collect(),
            })
    }

    fn record_strategy() -> impl Strategy<Value = RecordFrame> {
        let kind = prop_oneof![
            Just(RecordKind::Data),
            (any::<u64>(), any::<u64>()).prop_map(|(t, p)| RecordKind::Cond(Cond::at(Tag(t), p))),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(t, p, k, a)| RecordKind::Cond(Cond::chained(Tag(t), p, k, a))),
            (any::<u64>(), any::<u64>()).prop_map(|(t, b)| RecordKind::Trim {
                tag: Tag(t),
                below: Seqnum(b)
            }),
        ];
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            kind,
            prop::collection::vec(any::<u64>(), 0..17),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(shard, local, book, kind, tags, data)| RecordFrame {
                shard: ShardId(shard),
                local_id: LocalId(local),
                record: LogRecord {
                    book: BookId(book),
                    tags: tags.into_iter().map(Tag).collect(),
                    kind,
                    data: Bytes::from(data),
                },
            })
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u16>(),
                prop::option::of(metalog_strategy()),
                prop::collection::vec((any::<u32>(), any::<u16>(), any::<u64>()), 0..4)
            )
                .prop_map(|(segment, v, last, shards)| Frame::Header(SegmentHeader {
                    segment,
                    max_view: ViewId(v),
                    last_metalog: last,
                    shards: shards
                        .into_iter()
                        .map(|(s, v, n)| ShardCursor {
                            shard: ShardId(s),
                            view: ViewId(v),
                            next_counter: n
                        })
                        .collect(),
                })),
            record_strategy().prop_map(Frame::Record),
            metalog_strategy().prop_map(Frame::Metalog),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::option::of(metalog_strategy())
            )
                .prop_map(|(below, data, last)| Frame::Checkpoint(CheckpointFrame {
                    below: Seqnum(below),
                    data: Bytes::from(data),
                    last_metalog: last,
                })),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_through_the_codec(frames in prop::collection::vec(frame_strategy(), 1..6)) {
            let mut buf = Vec::new();
            let mut lens = Vec::new();
            for f in &frames {
                lens.push(encode(f, &mut buf));
            }
            let buf = Bytes::from(buf);
            let mut offset = 0;
            for (f, len) in frames.iter().zip(lens) {
                let (got, got_len) = decode(&buf.slice(offset..)).expect("decodes");
                prop_assert_eq!(&got, f);
                prop_assert_eq!(got_len, len);
                offset += len;
            }
            prop_assert_eq!(offset, buf.len());
        }

        #[test]
        fn any_flipped_bit_is_detected(frame in frame_strategy(), bit in any::<usize>()) {
            let mut buf = Vec::new();
            let len = encode(&frame, &mut buf);
            let bit = bit % (len * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&Bytes::from(buf)).is_err());
        }

        #[test]
        fn every_strict_prefix_is_incomplete_or_bad(frame in frame_strategy(), cut in any::<usize>()) {
            let mut buf = Vec::new();
            let len = encode(&frame, &mut buf);
            buf.truncate(cut % len);
            prop_assert_eq!(decode(&Bytes::from(buf)).map(|_| ()), Err(DecodeError::Incomplete));
        }
    }

    #[test]
    fn metalog_entries_that_do_not_validate_are_bad_bodies() {
        // Recovery's index computed seqnums from these and panicked on overflow.
        let view = ViewId(1);
        let entry = |start_seqnum: Seqnum, cuts: &[(u32, u64, u64)]| MetalogEntry {
            position: 0,
            view,
            start_seqnum,
            cuts: cuts
                .iter()
                .map(|&(s, start, delta)| ShardCut {
                    shard: ShardId(s),
                    start,
                    delta,
                })
                .collect(),
        };
        let start = Seqnum::new(view, 0);
        for bad in [
            entry(start, &[(0, 0, u64::MAX), (1, 0, 2)]),
            entry(start, &[(0, u64::MAX, 1)]),
            entry(start, &[(0, 0, 1), (0, 1, 1)]),
            entry(Seqnum::new(ViewId(2), 0), &[(0, 0, 1)]),
        ] {
            let mut frames = Vec::new();
            encode_metalog(&bad, &mut frames);
            encode_checkpoint(Seqnum::ZERO, b"", Some(&bad), &mut frames);
            let frames = Bytes::from(frames);
            let (first, at) = (decode(&frames), check(&frames).expect("a valid prefix"));
            assert!(
                matches!(first, Err(DecodeError::BadBody(_))),
                "{bad:?}: {first:?}"
            );
            let second = decode(&frames.slice(at..));
            assert!(
                matches!(second, Err(DecodeError::BadBody(_))),
                "{bad:?}: {second:?}"
            );
        }
    }

    #[test]
    fn zero_filled_bytes_are_a_bad_length() {
        assert_eq!(check(&[0u8; 64]), Err(DecodeError::BadLength(0)));
    }
}
