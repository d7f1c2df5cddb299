//! Segment recovery on arbitrary files: `Store::open` over a data dir holding fuzzed segment
//! files returns the store or a clean error (`Corrupt`, `Io`), never panics and never hangs
//! (run with libFuzzer's `-timeout`). A store that opened must open again, recovering the same
//! state: the first open truncated any torn tail, so the second finds nothing to cut.
//!
//! Input: one flags byte, then the segment files' bytes separated by `SEPARATOR` (at most
//! `SEGMENTS_MAX` files, numbered from `flags >> 5`). Bit `i` of the flags fills in the length
//! and CRC fields of every complete frame of file `i`, walking from offset 0, so the fuzzer's
//! bodies reach the parsers; without it the file's bytes are taken as they are (bad CRCs, torn
//! tails, garbage).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use storage_node::codec::{FRAME_LEN_MAX, FRAME_PREFIX_BYTES};
use storage_node::{segment_path, Recovery, Store, StoreConfig, StoreError, SEGMENT_BYTES_MIN};

const SEPARATOR: &[u8] = b"TALLYSEG";
const SEGMENTS_MAX: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dir = data_dir();
    clear(dir);
    let first = u64::from(flags >> 5);
    for (i, bytes) in split(rest).into_iter().take(SEGMENTS_MAX).enumerate() {
        let mut bytes = bytes.to_vec();
        if flags & (1 << i) != 0 {
            fix_frames(&mut bytes);
        }
        std::fs::write(segment_path(dir, first + i as u64), &bytes).expect("write a segment");
    }
    let first = match open(dir) {
        Ok(recovery) => recovery,
        Err(StoreError::Corrupt { .. }) => return,
        Err(e) => panic!("recovery failed with other than corruption: {e}"),
    };
    let second = open(dir).unwrap_or_else(|e| panic!("a store that opened does not reopen: {e}"));
    assert_eq!(
        second.truncated_tail_bytes, 0,
        "the first open left a torn tail"
    );
    assert_eq!(
        second.segments,
        first.segments + 1,
        "each open adds one segment"
    );
    let same = |r: &Recovery| {
        (
            r.metalog.clone(),
            r.last_metalog.clone(),
            r.checkpoint.clone(),
            r.ordered.clone(),
            r.max_view,
            r.records,
        )
    };
    assert_eq!(
        same(&second),
        same(&first),
        "a reopened store recovers another state"
    );
});

fn open(dir: &Path) -> Result<Recovery, StoreError> {
    let config = StoreConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StoreConfig::new(dir)
    };
    let (store, recovery) = Store::open(config)?;
    store.shutdown();
    Ok(recovery)
}

/// One data dir per process, emptied before each input; in memory when `/dev/shm` exists, so
/// the store's fsyncs cost nothing.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("create a temp dir");
        let path = dir.path().join("store");
        (dir, path)
    });
    path
}

fn clear(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("clear {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir).expect("create the data dir");
}

fn split(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        files.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    files.push(rest);
    files
}

/// Writes the right CRC into every complete frame, from offset 0 until a length field is
/// out of range or the frame runs past the end.
fn fix_frames(bytes: &mut [u8]) {
    let mut offset = 0;
    while offset + FRAME_PREFIX_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        let end = offset + FRAME_PREFIX_BYTES + len as usize;
        if len == 0 || len as usize > FRAME_LEN_MAX || end > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[offset + FRAME_PREFIX_BYTES..end]);
        bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end;
    }
}
