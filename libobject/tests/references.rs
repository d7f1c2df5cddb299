//! References between objects over the in-memory log (TX-4): links and unlinks change both
//! sides in one transaction, deletes unlink an object from every object that refers to it,
//! methods cannot change references, and under coordinators dying at every append and
//! concurrent links, unlinks and deletes through two gateways, every reference is mirrored.

mod common;

use common::*;
use libobject::{Error, ObjectRef, TxnStatus};
use logbook::crashing::CrashAt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

async fn link(
    g: &Gateway,
    id: &str,
    user: &str,
    field: &str,
    keys: &[&str],
    add: bool,
) -> TxnStatus {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    g.objects
        .link(
            &g.ctx(0),
            id,
            &ObjectRef::new("user", user),
            field,
            &keys,
            add,
        )
        .await
        .unwrap()
        .outcome
}

async fn states(g: &Gateway, class: &str, keys: &[String]) -> BTreeMap<String, Value> {
    g.objects
        .read_many(&g.ctx(0), class, keys)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Checks that `users.groups` and `groups.members` mirror each other, with no key listed
/// twice and none that the other side does not list back.
fn check_mirror(
    users: &BTreeMap<String, Value>,
    groups: &BTreeMap<String, Value>,
) -> Result<usize, String> {
    let side = |states: &BTreeMap<String, Value>,
                field: &str|
     -> Result<BTreeSet<(String, String)>, String> {
        let mut pairs = BTreeSet::new();
        for (key, state) in states {
            for other in state[field].as_array().ok_or("not a refs field")? {
                let other = other.as_str().ok_or("not a key")?.to_string();
                if !pairs.insert((key.clone(), other.clone())) {
                    return Err(format!("{key}.{field} lists {other} twice"));
                }
            }
        }
        Ok(pairs)
    };
    let forward = side(users, "groups")?;
    let back: BTreeSet<(String, String)> = side(groups, "members")?
        .into_iter()
        .map(|(g, u)| (u, g))
        .collect();
    if forward != back {
        let only: Vec<_> = forward.symmetric_difference(&back).collect();
        return Err(format!("not mirrored: {only:?}"));
    }
    Ok(forward.len())
}

#[test]
fn the_mirror_checker_catches_what_it_is_for() {
    let users = BTreeMap::from([("u".to_string(), json!({"groups": ["g"]}))]);
    let groups = BTreeMap::from([("g".to_string(), json!({"members": ["u"]}))]);
    assert_eq!(check_mirror(&users, &groups), Ok(1));
    let dangling = BTreeMap::from([("g".to_string(), json!({"members": []}))]);
    let twice = BTreeMap::from([("u".to_string(), json!({"groups": ["g", "g"]}))]);
    let stranger = BTreeMap::from([("g".to_string(), json!({"members": ["u", "v"]}))]);
    assert!(check_mirror(&users, &dangling).is_err());
    assert!(check_mirror(&twice, &groups).is_err());
    assert!(check_mirror(&users, &stranger).is_err());
}

#[tokio::test]
async fn links_unlinks_and_deletes_change_both_sides() {
    let w = world();
    let g = w.survivor();
    assert_eq!(
        link(&g, "l1", "u1", "groups", &["g1", "g2"], true).await,
        TxnStatus::Success
    );
    assert_eq!(
        link(&g, "l2", "u2", "groups", &["g1"], true).await,
        TxnStatus::Success
    );
    let groups = states(&g, "group", &names("g", 3)).await;
    assert_eq!(groups["g1"]["members"], json!(["u1", "u2"]));
    assert_eq!(
        link(&g, "l3", "u1", "groups", &["g1"], false).await,
        TxnStatus::Success
    );
    let users = states(&g, "user", &names("u", 3)).await;
    let groups = states(&g, "group", &names("g", 3)).await;
    assert_eq!(users["u1"]["groups"], json!(["g2"]));
    assert_eq!(check_mirror(&users, &groups), Ok(2));

    // One-to-many: a user is on one team; a second fails until the first is unlinked.
    assert_eq!(
        link(&g, "t1", "u1", "team", &["red"], true).await,
        TxnStatus::Success
    );
    assert_eq!(
        link(&g, "t2", "u2", "team", &["red"], true).await,
        TxnStatus::Success
    );
    assert_eq!(
        link(&g, "t3", "u1", "team", &["blue"], true).await,
        TxnStatus::Failure
    );
    let teams = states(&g, "team", &["red".into(), "blue".into()]).await;
    assert_eq!(
        (
            teams["red"]["users"].clone(),
            teams["blue"]["users"].clone()
        ),
        (json!(["u1", "u2"]), json!([]))
    );

    // A delete unlinks the object from every object that refers to it.
    let out = g
        .objects
        .delete(&g.ctx(0), "d1", &ObjectRef::new("group", "g1"))
        .await
        .unwrap();
    assert_eq!(out, json!({"deleted": true, "unlinked": 1}));
    let users = states(&g, "user", &names("u", 3)).await;
    assert_eq!(users["u2"]["groups"], json!([]));
    // A user in more groups than one transaction takes: unlinked in parts, then deleted.
    let many = names("m", 20);
    for (i, chunk) in many.chunks(10).enumerate() {
        let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
        assert_eq!(
            link(&g, &format!("many-{i}"), "u3", "groups", &keys, true).await,
            TxnStatus::Success
        );
    }
    let out = g
        .objects
        .delete(&g.ctx(0), "d2", &ObjectRef::new("user", "u3"))
        .await
        .unwrap();
    assert_eq!(out, json!({"deleted": true, "unlinked": 20}));
    let groups = states(&g, "group", &many).await;
    assert!(
        groups.values().all(|s| s["members"] == json!([])),
        "{groups:?}"
    );
    // The same delete again replays its transactions: nothing more happens.
    let again = g
        .objects
        .delete(&g.ctx(0), "d2", &ObjectRef::new("user", "u3"))
        .await
        .unwrap();
    assert_eq!(again, out);

    // Methods read references but cannot change them; the built-ins are not callable.
    let renamed = g.call("user", "u1", "rename", json!("ana")).await.unwrap();
    assert_eq!(renamed["groups"], json!(["g2"]));
    let stolen = g.call("user", "u1", "steal", json!("g9")).await;
    assert!(matches!(stolen, Err(Error::Invalid(_))), "{stolen:?}");
    let direct = g
        .call(
            "user",
            "u1",
            libobject::LINK_METHOD,
            json!({"field": "groups", "keys": ["g9"], "add": true}),
        )
        .await;
    assert!(matches!(direct, Err(Error::Forbidden(_))), "{direct:?}");
    let me = g
        .objects
        .link(
            &g.ctx(0),
            "self",
            &ObjectRef::new("user", "u1"),
            "name",
            &["x".into()],
            true,
        )
        .await;
    assert!(matches!(me, Err(Error::Invalid(_))), "{me:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_4_references_stay_mirrored_through_dying_coordinators_and_races() {
    let w = world();
    // A coordinator dying at each of its appends (the link's record, three votes, three
    // done records); the client sends the same id again through another gateway.
    for at in 0..7 {
        for crash in [CrashAt::Before(at), CrashAt::After(at)] {
            let dying = gateway(&w, Some(crash));
            let id = format!("crash-{at}-{crash:?}");
            let keys = ["c1".to_string(), "c2".to_string()];
            let user = ObjectRef::new("user", format!("cu{at}"));
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                dying
                    .objects
                    .link(&dying.ctx(0), &id, &user, "groups", &keys, true),
            )
            .await;
            let other = w.survivor();
            let again = other
                .objects
                .link(&other.ctx(0), &id, &user, "groups", &keys, true)
                .await;
            assert_eq!(again.unwrap().outcome, TxnStatus::Success, "{crash:?}");
        }
    }
    // Races: links, unlinks and deletes from 6 clients over two gateways.
    let (g1, g2) = (slow_gateway(&w, 11), slow_gateway(&w, 12));
    let mut tasks = Vec::new();
    for client in 0..6u64 {
        let g = if client % 2 == 0 {
            g1.clone()
        } else {
            g2.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut x = client * 7 + 1;
            for i in 0..25 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let user = format!("ru{}", (x >> 33) % 5);
                let group = format!("rg{}", (x >> 40) % 4);
                let id = format!("race-{client}-{i}");
                match (x >> 20) % 6 {
                    0 => {
                        let _ = g
                            .objects
                            .delete(&g.ctx(0), &id, &ObjectRef::new("group", &group))
                            .await
                            .unwrap();
                    }
                    1 | 2 => {
                        let _ = link(&g, &id, &user, "groups", &[&group], false).await;
                    }
                    _ => {
                        let _ = link(&g, &id, &user, "groups", &[&group], true).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut users = states(&g1, "user", &names("ru", 5)).await;
    users.extend(states(&g1, "user", &names("cu", 7)).await);
    let mut groups = states(&g1, "group", &names("rg", 4)).await;
    groups.extend(states(&g1, "group", &["c1".to_string(), "c2".to_string()]).await);
    let pairs = check_mirror(&users, &groups).unwrap();
    assert!(pairs >= 14, "the crash links are there: {pairs}");
    assert_eq!(groups["c1"]["members"].as_array().unwrap().len(), 7);
}
