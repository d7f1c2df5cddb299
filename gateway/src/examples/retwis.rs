//! `retwis`: the Twitter clone BokiStore measured (after Redis's Retwis), on libstore objects:
//!
//! - `users/{user}`: `{"name", "password", "followers": {user: true}, "following": {user:
//!   true}, "posts": N}`.
//! - `posts/{user}`: `{"posts": [...]}`, the user's newest `POSTS_KEPT` posts.
//! - `timelines/{user}`: `{"posts": [...]}`, the newest `POSTS_KEPT` posts of the user and of
//!   those they follow, pushed there when posted (fan-out on write).
//!
//! A post is `{"user", "text", "at_ms"}`. Requests (JSON in, JSON out):
//! `{"action":"register","user":"ana","name":"Ana","password":"pw"}` (a one-shot
//! transaction: only if the user does not exist), `{"action":"login","user":"ana",
//! "password":"pw"}` (`{"ok": bool}`), `{"action":"profile","user":"ana"}`,
//! `{"action":"follow","user":"ana","follows":"ben"}` (both sides in one one-shot
//! transaction), `{"action":"post","user":"ana","text":"hi"}` (one one-shot transaction
//! writes the post to the author's posts, timeline and count and to the timelines of up to
//! `FAN_OUT_FIRST` followers; further followers' timelines get it in one-shot transactions of
//! `libstore::TXN_OBJECTS_MAX` each), `{"action":"posts","user":"ana","limit":20}` and
//! `{"action":"timeline","user":"ana","limit":20}` (newest first). Writes answer
//! `{"committed": true, ...}` or `{"committed": false, "reason": "..."}`.

use crate::functions::{FunctionError, FunctionResult};
use bytes::Bytes;
use libstore::{Object, OneShot, Op, Outcome, Store, Test, TXN_OBJECTS_MAX};
use serde::Deserialize;
use serde_json::{json, Value};

/// Posts kept in a user's posts and timeline (the oldest go first).
pub const POSTS_KEPT: usize = 100;
/// Longest post, in bytes.
pub const TEXT_BYTES_MAX: usize = 1024;
/// Longest user name, in bytes.
pub const USER_BYTES_MAX: usize = 64;
/// Followers whose timelines a post's first transaction writes, beside the author's user,
/// posts and timeline objects.
pub const FAN_OUT_FIRST: usize = TXN_OBJECTS_MAX - 3;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Register {
        user: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Profile {
        user: String,
    },
    Follow {
        user: String,
        follows: String,
    },
    Post {
        user: String,
        text: String,
    },
    Posts {
        user: String,
        #[serde(default)]
        limit: Option<usize>,
    },
    Timeline {
        user: String,
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// The `retwis` function, over the store of its call (made by the `Stores` it is registered with,
/// so its caches outlive the call).
pub async fn retwis(store: Store, input: Bytes) -> FunctionResult {
    let request: Request = serde_json::from_slice(&input).map_err(|e| {
        FunctionError::bad_input(format!(
            "expected {{\"action\": \"register\"|\"login\"|\"profile\"|\"follow\"|\"post\"|\"posts\"|\"timeline\", ...}}: {e}"
        ))
    })?;
    let answer = match request {
        Request::Register {
            user,
            name,
            password,
        } => {
            check_user(&user)?;
            let object = users(&store, &user);
            let doc = json!({
                "name": name, "password": password,
                "followers": {}, "following": {}, "posts": 0,
            });
            let register = OneShot::new()
                .condition(
                    &object,
                    "",
                    Test::Exists(false),
                    &format!("user {user} exists"),
                )
                .write(&object, Op::set("", doc));
            outcome(store.run(&register).await?)
        }
        Request::Login { user, password } => {
            let stored = users(&store, &user).get("/password").await?;
            json!({ "ok": stored == Some(json!(password)) })
        }
        Request::Profile { user } => {
            let doc = users(&store, &user).get("").await?;
            let doc = doc.ok_or_else(|| no_user(&user))?;
            let count = |field: &str| doc[field].as_object().map_or(0, |m| m.len());
            json!({
                "user": user, "name": doc["name"], "posts": doc["posts"],
                "followers": count("followers"), "following": count("following"),
            })
        }
        Request::Follow { user, follows } => {
            if user == follows {
                return Err(FunctionError::bad_input("a user does not follow themself"));
            }
            let (a, b) = (users(&store, &user), users(&store, &follows));
            let follow = OneShot::new()
                .condition(&a, "", Test::Exists(true), &format!("no user {user}"))
                .condition(&b, "", Test::Exists(true), &format!("no user {follows}"))
                .write(&a, Op::set(&member("/following", &follows), json!(true)))
                .write(&b, Op::set(&member("/followers", &user), json!(true)));
            outcome(store.run(&follow).await?)
        }
        Request::Post { user, text } => post(&store, &user, text).await?,
        Request::Posts { user, limit } => newest(&posts(&store, &user), limit).await?,
        Request::Timeline { user, limit } => newest(&timelines(&store, &user), limit).await?,
    };
    tally_sdk::json::output(&answer)
}

fn users(store: &Store, user: &str) -> Object {
    store.collection("users").object(user)
}

fn posts(store: &Store, user: &str) -> Object {
    store.collection("posts").object(user)
}

fn timelines(store: &Store, user: &str) -> Object {
    store.collection("timelines").object(user)
}

fn no_user(user: &str) -> FunctionError {
    FunctionError::bad_input(format!("no user {user}"))
}

fn check_user(user: &str) -> Result<(), FunctionError> {
    if user.is_empty() || user.len() > USER_BYTES_MAX {
        return Err(FunctionError::bad_input(format!(
            "a user name is 1 to {USER_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// The path of member `name` of the object at `parent` (a JSON Pointer, escaped).
fn member(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn outcome(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Committed { .. } => json!({ "committed": true }),
        Outcome::Aborted { reason, .. } => json!({ "committed": false, "reason": reason }),
    }
}

async fn post(store: &Store, user: &str, text: String) -> Result<Value, FunctionError> {
    if text.len() > TEXT_BYTES_MAX {
        return Err(FunctionError::bad_input(format!(
            "a post is at most {TEXT_BYTES_MAX} bytes"
        )));
    }
    let author = users(store, user);
    let followers = author.get("/followers").await?;
    let followers: Vec<String> = followers
        .and_then(|f| f.as_object().map(|m| m.keys().cloned().collect()))
        .ok_or_else(|| no_user(user))?;
    let at_ms = crate::invocations::now_ms();
    let item = json!({ "user": user, "text": text, "at_ms": at_ms });
    let push = || Op::push("/posts", item.clone(), Some(POSTS_KEPT));
    let (first, rest) = followers.split_at(followers.len().min(FAN_OUT_FIRST));
    let mut transaction = OneShot::new()
        .condition(&author, "", Test::Exists(true), &format!("no user {user}"))
        .write(&author, Op::add("/posts", 1))
        .write(&posts(store, user), push())
        .write(&timelines(store, user), push());
    for follower in first {
        transaction = transaction.write(&timelines(store, follower), push());
    }
    if let Outcome::Aborted { reason, .. } = store.run(&transaction).await? {
        return Ok(json!({ "committed": false, "reason": reason }));
    }
    for chunk in rest.chunks(TXN_OBJECTS_MAX) {
        let mut fan_out = OneShot::new();
        for follower in chunk {
            fan_out = fan_out.write(&timelines(store, follower), push());
        }
        store.run(&fan_out).await?;
    }
    Ok(json!({ "committed": true, "timelines": followers.len() + 1 }))
}

/// The newest `limit` (default 20, at most `POSTS_KEPT`) posts of a list, newest first.
async fn newest(list: &Object, limit: Option<usize>) -> Result<Value, FunctionError> {
    let limit = limit.unwrap_or(20);
    if limit == 0 || limit > POSTS_KEPT {
        return Err(FunctionError::bad_input(format!(
            "limit is 1 to {POSTS_KEPT}"
        )));
    }
    let items = list.get("/posts").await?;
    let items: Vec<Value> = match items {
        Some(Value::Array(items)) => items.into_iter().rev().take(limit).collect(),
        _ => Vec::new(),
    };
    Ok(json!({ "posts": items }))
}
