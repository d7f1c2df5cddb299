//! View changes in the replicated sequencer group: gateways join by heartbeat, leave when
//! their heartbeats stop, rejoin with a new incarnation after a restart; every member applies
//! the same views at the same metalog positions, and seqnums keep growing across views.

use logbook::wire::{GatewayMember, GroupEvent, NodeId, ShardId, ShardProgress, View};
use logbook::{Seqnum, ViewId};
use raft::prelude::Message;
use sequencer::group::{GroupConfig, GroupNode, Output};
use std::collections::{BTreeMap, VecDeque};

const MEMBERS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];
const STORAGE: [NodeId; 3] = [NodeId(10), NodeId(11), NodeId(12)];
const TIMEOUT_TICKS: u64 = 30;

struct Group {
    nodes: BTreeMap<NodeId, GroupNode>,
    network: VecDeque<(NodeId, Message)>,
    /// Each member's committed events, in order.
    events: BTreeMap<NodeId, Vec<GroupEvent>>,
    /// Gateways sending heartbeats, with their incarnation.
    gateways: BTreeMap<NodeId, u64>,
    /// Per (view, shard): records durable on every storage node.
    durable: BTreeMap<(ViewId, ShardId), u64>,
}

impl Group {
    fn new() -> Group {
        let storage: BTreeMap<NodeId, String> =
            STORAGE.iter().map(|n| (*n, format!("s{}", n.0))).collect();
        let nodes = MEMBERS
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let config = GroupConfig {
                    id: *id,
                    members: MEMBERS.to_vec(),
                    election_tick: 10 + 3 * i,
                    storage: storage.clone(),
                    replication: 3,
                    gateway_timeout_ticks: TIMEOUT_TICKS,
                    max_in_flight: 2,
                };
                (*id, GroupNode::new(config).expect("valid config"))
            })
            .collect();
        Group {
            nodes,
            network: VecDeque::new(),
            events: MEMBERS.iter().map(|id| (*id, Vec::new())).collect(),
            gateways: BTreeMap::new(),
            durable: BTreeMap::new(),
        }
    }

    fn absorb(&mut self, from: NodeId, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, message } => self.network.push_back((to, message)),
                Output::Committed { index, event } => {
                    let events = self.events.get_mut(&from).expect("a member");
                    assert_eq!(index, events.len() as u64, "indexes count events");
                    events.push(event);
                }
                Output::Refused { raft_index, reason } => {
                    panic!("member {from:?} refused Raft entry {raft_index}: {reason}")
                }
            }
        }
    }

    /// One tick: heartbeats to every member, a tick each, progress reports of the current
    /// view's shards, then every message delivered.
    fn tick(&mut self) {
        for id in MEMBERS {
            for (gateway, incarnation) in self.gateways.clone() {
                let member = GatewayMember {
                    incarnation,
                    http_addr: format!("g{}", gateway.0),
                };
                self.nodes
                    .get_mut(&id)
                    .unwrap()
                    .on_gateway_heartbeat(gateway, member);
            }
            for ((view, shard), durable) in self.durable.clone() {
                for node in STORAGE {
                    let progress = ShardProgress {
                        node,
                        shard,
                        view,
                        durable,
                    };
                    self.nodes.get_mut(&id).unwrap().on_progress(progress);
                }
            }
            let outputs = self.nodes.get_mut(&id).unwrap().tick();
            self.absorb(id, outputs);
        }
        while let Some((to, message)) = self.network.pop_front() {
            let outputs = self.nodes.get_mut(&to).unwrap().step(message);
            self.absorb(to, outputs);
        }
    }

    fn run_until(&mut self, ticks_max: usize, done: impl Fn(&Group) -> bool) {
        for _ in 0..ticks_max {
            if done(self) {
                return;
            }
            self.tick();
        }
        assert!(done(self), "condition not reached in {ticks_max} ticks");
    }

    fn views(&self, id: NodeId) -> Vec<View> {
        self.events[&id]
            .iter()
            .filter_map(|e| match e {
                GroupEvent::View(v) => Some(v.clone()),
                GroupEvent::Metalog(_) => None,
            })
            .collect()
    }

    fn current_view(&self) -> Option<View> {
        self.views(MEMBERS[0]).last().cloned()
    }

    /// `records` more records of `gateway`'s shard become durable in the current view.
    fn append(&mut self, gateway: NodeId, records: u64) {
        let view = self.current_view().expect("a view").id;
        *self
            .durable
            .entry((view, View::shard_of(gateway)))
            .or_default() += records;
    }

    fn ordered_in_view(&self, view: ViewId, shard: ShardId) -> u64 {
        self.events[&MEMBERS[0]]
            .iter()
            .filter_map(|e| match e {
                GroupEvent::Metalog(m) if m.view == view => Some(m),
                _ => None,
            })
            .flat_map(|m| m.cuts.iter().filter(|c| c.shard == shard).map(|c| c.delta))
            .sum()
    }

    fn view_has(&self, gateways: &[(NodeId, u64)]) -> bool {
        self.current_view().is_some_and(|v| {
            let got: Vec<(NodeId, u64)> = v
                .gateways
                .iter()
                .map(|(n, m)| (*n, m.incarnation))
                .collect();
            got == gateways
        })
    }
}

#[test]
fn views_follow_gateways_joining_leaving_and_restarting() {
    let (a, b) = (NodeId(20), NodeId(21));
    let mut group = Group::new();
    group.run_until(100, |g| g.nodes.values().any(|n| n.is_leader()));
    assert_eq!(group.current_view(), None, "no gateway, no view");

    group.gateways.insert(a, 1);
    group.run_until(50, |g| g.view_has(&[(a, 1)]));
    group.append(a, 5);
    group.run_until(50, |g| g.ordered_in_view(ViewId(1), View::shard_of(a)) == 5);

    // A second gateway joins: a new view with both shards, each on all three replicas.
    group.gateways.insert(b, 1);
    group.run_until(50, |g| g.view_has(&[(a, 1), (b, 1)]));
    let view = group.current_view().unwrap();
    assert_eq!(view.id, ViewId(2));
    assert_eq!(view.write_quorum, 2);
    assert!(view.shards.values().all(|r| r.len() == 3));
    group.append(a, 3);
    group.append(b, 4);
    group.run_until(50, |g| {
        g.ordered_in_view(ViewId(2), View::shard_of(a)) == 3
            && g.ordered_in_view(ViewId(2), View::shard_of(b)) == 4
    });

    // `b` stops sending heartbeats: after the timeout it leaves the view.
    group.gateways.remove(&b);
    group.run_until(3 * TIMEOUT_TICKS as usize, |g| g.view_has(&[(a, 1)]));
    // `a` restarts: a new incarnation, so a new view (and fresh local counters).
    group.gateways.insert(a, 2);
    group.run_until(3 * TIMEOUT_TICKS as usize, |g| g.view_has(&[(a, 2)]));
    group.append(a, 2);
    let last = group.current_view().unwrap().id;
    group.run_until(50, |g| g.ordered_in_view(last, View::shard_of(a)) == 2);

    // Every member applied the same events; views start where the metalog stood, and
    // seqnums grow across views.
    let events = &group.events[&MEMBERS[0]];
    for id in MEMBERS {
        let theirs = &group.events[&id];
        let common = theirs.len().min(events.len());
        assert_eq!(theirs[..common], events[..common], "member {id:?}");
    }
    let mut position = 0;
    let mut last_seqnum = Seqnum::ZERO;
    let mut view_id = ViewId(0);
    for event in events {
        match event {
            GroupEvent::View(v) => {
                assert!(v.id > view_id, "view ids grow");
                assert_eq!(
                    v.start_position, position,
                    "a view starts at the next entry"
                );
                view_id = v.id;
            }
            GroupEvent::Metalog(m) => {
                assert_eq!(m.position, position);
                assert_eq!(m.view, view_id, "entries are of the current view");
                assert!(m.start_seqnum >= last_seqnum, "seqnums grow across views");
                last_seqnum = m.end_seqnum();
                position += 1;
            }
        }
    }
}
