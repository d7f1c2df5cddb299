//! The conformance suite against the real single-node log: the gateway's engine and runtime,
//! the sequencer, and the segment store on disk (fsync durability).

use logbook::LogBook;
use std::sync::Arc;
use tally_cli::node::{Node, NodeConfig};

struct Guard {
    node: Node,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

async fn start() -> (Arc<dyn LogBook>, Box<dyn std::any::Any + Send>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(NodeConfig::new(dir.path().to_path_buf()))
        .await
        .expect("node starts");
    let log: Arc<dyn LogBook> = node.log.clone();
    (log, Box::new(Guard { node, _dir: dir }))
}

logbook::conformance_tests!(start);
