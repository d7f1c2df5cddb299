//! A full disk: appends fail with a clear error instead of hanging, later appends fail at
//! once, and once space returns a restart recovers every acknowledged append.

use bytes::Bytes;
use logbook::{BookId, LogBook, LogError, ReadRange, Seqnum, Tag};
use std::process::Command;
use std::time::Duration;
use tally_cli::node::{Node, NodeConfig};

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_appends_clearly_and_recovers_when_space_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let disk = SmallDisk::mount("2m").expect("mount a 2 MiB tmpfs");
    let mut config = NodeConfig::new(disk.dir.path().join("data"));
    config.segment_bytes_max = 256 * 1024;
    let node = Node::start(config.clone()).await.unwrap();
    let log = node.log.clone();

    let record = Bytes::from(vec![7u8; 64 * 1024]);
    let mut acked = Vec::new();
    let error = loop {
        let append = log.append(BookId(0), &[Tag(1)], record.clone());
        match tokio::time::timeout(Duration::from_secs(20), append)
            .await
            .expect("an append never hangs")
        {
            Ok(seqnum) => acked.push(seqnum),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "2 MiB cannot hold 100 records of 64 KiB");
    };
    assert!(!acked.is_empty());
    eprintln!("{} appends acknowledged before: {error}", acked.len());
    assert!(
        matches!(&error, LogError::Io(m) if m.contains("No space left")),
        "{error}"
    );
    assert!(!error.is_retryable());
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        log.append(BookId(0), &[Tag(1)], record.clone()),
    )
    .await
    .expect("later appends fail at once");
    assert!(matches!(again, Err(LogError::Io(_))), "{again:?}");
    let range = ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 1000,
    };
    assert_eq!(
        log.read_range(BookId(0), Tag(1), range)
            .await
            .unwrap()
            .len(),
        acked.len(),
        "reads still work"
    );

    node.shutdown();
    drop(log);
    drop(node);
    disk.resize("16m");
    let node = Node::start(config)
        .await
        .expect("restart once space returns");
    let records = node.log.read_range(BookId(0), Tag(1), range).await.unwrap();
    let seqnums: Vec<Seqnum> = records.iter().map(|r| r.seqnum).collect();
    assert_eq!(
        seqnums, acked,
        "every acknowledged append is there, in order"
    );
    node.log
        .append(BookId(0), &[Tag(1)], record)
        .await
        .expect("appends work again");
    node.shutdown();
}
