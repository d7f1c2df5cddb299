//! Tests of `DiskStorage`, the group member's Raft log on disk: what is appended, truncated
//! and set comes back on reopen; a torn tail is cut off; any other damage is an error.

use raft::prelude::{ConfState, Entry, HardState};
use raft::{GetEntriesContext, Storage};
use sequencer::raft_log::{DiskStorage, RaftLogError, RaftStore, RAFT_LOG_FILE};
use std::path::Path;

fn conf_state() -> ConfState {
    ConfState::from((vec![1, 2, 3], vec![]))
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        data: data.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// Every entry the storage holds, in index order.
fn entries(storage: &DiskStorage) -> Vec<Entry> {
    let first = storage.first_index().expect("first index");
    let last = storage.last_index().expect("last index");
    if last < first {
        return Vec::new();
    }
    storage
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries")
}

fn open(dir: &Path) -> DiskStorage {
    DiskStorage::open(dir, conf_state()).expect("open")
}

/// Writes entries 1..=3 in term 1 and a hard state, synced; returns the file's length.
fn write_three(dir: &Path) -> u64 {
    let mut storage = open(dir);
    storage
        .append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
        .expect("append");
    storage
        .set_hard_state(&hard_state(1, 1, 2))
        .expect("hard state");
    storage.sync().expect("sync");
    std::fs::metadata(storage.path()).expect("metadata").len()
}

#[test]
fn disk_storage_round_trips_entries_hard_state_and_truncation() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        write_three(dir.path());
        let mut storage = open(dir.path());
        // A new leader overwrites the suffix from index 2.
        storage
            .append(&[entry(2, 2, "B"), entry(3, 2, "C"), entry(4, 2, "D")])
            .expect("append");
        storage
            .set_hard_state(&hard_state(2, 3, 3))
            .expect("hard state");
        storage.sync().expect("sync");
        storage.set_commit(4).expect("commit");
        storage.sync().expect("sync");
    }
    let storage = open(dir.path());
    let expected = vec![
        entry(1, 1, "a"),
        entry(2, 2, "B"),
        entry(3, 2, "C"),
        entry(4, 2, "D"),
    ];
    assert_eq!(entries(&storage), expected);
    let state = storage.initial_state().expect("initial state");
    assert_eq!(state.hard_state, hard_state(2, 3, 4));
    assert_eq!(state.conf_state, conf_state());
    assert_eq!(storage.term(3).expect("term"), 2);
}

#[test]
fn unsynced_frames_are_not_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_three(dir.path());
    {
        let mut storage = open(dir.path());
        storage.append(&[entry(4, 1, "d")]).expect("append");
    }
    assert_eq!(entries(&open(dir.path())).len(), 3);
}

#[test]
fn a_new_log_with_another_conf_state_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_three(dir.path());
    let other = ConfState::from((vec![1, 2], vec![]));
    assert!(matches!(
        DiskStorage::open(dir.path(), other),
        Err(RaftLogError::ConfStateMismatch { .. })
    ));
}

#[test]
fn torn_tail_of_the_raft_log_is_truncated() {
    let path_of = |dir: &Path| dir.join(RAFT_LOG_FILE);
    // Cut the file at every length inside the last batch: each cut is a torn tail.
    let dir = tempfile::tempdir().expect("temp dir");
    let before = write_three(dir.path());
    let full = {
        let mut storage = open(dir.path());
        storage.append(&[entry(4, 1, "d")]).expect("append");
        storage
            .set_hard_state(&hard_state(1, 1, 4))
            .expect("hard state");
        storage.sync().expect("sync");
        std::fs::read(storage.path()).expect("read")
    };
    for cut in before..full.len() as u64 {
        std::fs::write(path_of(dir.path()), &full[..cut as usize]).expect("write");
        let storage = open(dir.path());
        let len = std::fs::metadata(path_of(dir.path()))
            .expect("metadata")
            .len();
        let entries = entries(&storage);
        let hard_state_now = storage.initial_state().expect("state").hard_state;
        if len == before {
            assert_eq!(entries.len(), 3, "cut {cut}");
            assert_eq!(hard_state_now, hard_state(1, 1, 2), "cut {cut}");
        } else {
            // The entry frame survived; the hard state frame was torn away.
            assert_eq!(entries.len(), 4, "cut {cut}");
            assert_eq!(hard_state_now, hard_state(1, 1, 2), "cut {cut}");
        }
        assert!(len <= cut, "cut {cut}: the torn frame is removed");
    }
    // A torn tail of garbage (a frame whose CRC fails, nothing valid after it) goes too.
    let mut garbage = full.clone();
    garbage.extend([9, 0, 0, 0, 1, 2, 3, 4, 1, 0, 0]);
    std::fs::write(path_of(dir.path()), &garbage).expect("write");
    assert_eq!(entries(&open(dir.path())).len(), 4);
    let len = std::fs::metadata(path_of(dir.path()))
        .expect("metadata")
        .len();
    assert_eq!(len, full.len() as u64);
}

#[test]
fn flipped_bit_in_the_raft_log_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_three(dir.path());
    let path = dir.path().join(RAFT_LOG_FILE);
    let clean = std::fs::read(&path).expect("read");
    // A flipped bit in any frame but the last is followed by valid frames: corruption.
    let last_frame_bytes = 8 + 1 + 24;
    for offset in 0..clean.len() - last_frame_bytes {
        let mut bytes = clean.clone();
        bytes[offset] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        match DiskStorage::open(dir.path(), conf_state()) {
            Err(RaftLogError::Corrupt { .. }) => {}
            Err(other) => panic!("offset {offset}: {other}"),
            Ok(_) => panic!("offset {offset}: a flipped bit was accepted"),
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "never truncated"
        );
    }
}
