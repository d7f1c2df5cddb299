//! The example classes' methods (`objects.toml`, the package `examples`): `counter`, `seats`
//! (reservations in arrival order), `video` and `premium_video` (inheritance and an
//! override), `editor` (a caller of `video`'s internal method), `account` (transfers
//! between accounts are transactions across objects), and `user` and `group` (references,
//! many-to-many).

use crate::functions::Registry;
use libobject::{method, Error, Package, This};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The package file of the example classes.
pub const PACKAGE: &str = include_str!("objects.toml");

/// The example package.
pub fn package() -> Package {
    Package::from_toml(PACKAGE).expect("the example package is valid")
}

/// Registers the functions of the example classes' methods.
pub fn register(registry: &mut Registry) {
    registry.register("counter.add", method(counter_add));
    registry.register("counter.get", method(counter_get));
    registry.register("counter.reset", method(counter_reset));
    registry.register("seats.reserve", method(seats_reserve));
    registry.register("seats.release", method(seats_release));
    registry.register("seats.list", method(seats_list));
    registry.register("video.watch", method(video_watch));
    registry.register("video.describe", method(video_describe));
    registry.register("video.retitle", method(video_retitle));
    registry.register("premium_video.watch", method(premium_watch));
    registry.register("editor.retitle", method(editor_retitle));
    registry.register("account.deposit", method(account_deposit));
    registry.register("account.withdraw", method(account_withdraw));
    registry.register("account.balance", method(account_balance));
    registry.register("account.pay", method(account_pay));
    registry.register("user.describe", method(describe));
    registry.register("group.describe", method(describe));
    registry.register("user.rename", method(user_rename));
}

/// The object's state, and whose it is.
async fn describe(this: This, _: Value) -> Result<Value, Error> {
    Ok(json!({ "object": this.me().to_string(), "state": this.state_value() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    name: String,
}

async fn user_rename(this: This, r: Rename) -> Result<Value, Error> {
    let mut user = this.state_value();
    user["name"] = json!(r.name);
    this.set_state(&user)?;
    Ok(json!({ "name": r.name }))
}

#[derive(Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Amount {
    amount: i64,
}

fn positive(amount: i64) -> Result<i64, Error> {
    if amount <= 0 {
        return Err(Error::Invalid(format!(
            "an amount is positive, not {amount}"
        )));
    }
    Ok(amount)
}

async fn account_deposit(this: This, a: Amount) -> Result<Value, Error> {
    let mut account: Account = this.state()?;
    account.balance = account
        .balance
        .checked_add(positive(a.amount)?)
        .ok_or_else(|| Error::failed("the balance would overflow"))?;
    this.set_state(&account)?;
    Ok(json!({ "balance": account.balance }))
}

async fn account_withdraw(this: This, a: Amount) -> Result<Value, Error> {
    let mut account: Account = this.state()?;
    if account.balance < positive(a.amount)? {
        return Err(Error::failed(format!(
            "insufficient funds: {} has {}, not {}",
            this.key(),
            account.balance,
            a.amount
        )));
    }
    account.balance -= a.amount;
    this.set_state(&account)?;
    Ok(json!({ "balance": account.balance }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pay {
    to: String,
    amount: i64,
}

/// Withdraws from this account and deposits on account `to`, a call: in an open transaction
/// (`POST /transactions/ID` with `{"call": ...}`) `to` joins it, so both change or neither.
async fn account_pay(this: This, p: Pay) -> Result<Value, Error> {
    if p.to == this.key() {
        return Err(Error::Invalid("an account pays another account".into()));
    }
    let mine: Value = this
        .call_self("withdraw", &json!({ "amount": p.amount }))
        .await?;
    let theirs: Value = this
        .call("account", &p.to, "deposit", &json!({ "amount": p.amount }))
        .await?;
    Ok(json!({ "balance": mine["balance"], "to": theirs["balance"] }))
}

async fn account_balance(this: This, _: Value) -> Result<Value, Error> {
    Ok(json!({ "balance": this.state::<Account>()?.balance }))
}

#[derive(Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Add {
    by: i64,
}

async fn counter_add(this: This, add: Add) -> Result<Value, Error> {
    let mut counter: Counter = this.state()?;
    counter.value = counter
        .value
        .checked_add(add.by)
        .ok_or_else(|| Error::failed("the counter would overflow"))?;
    this.set_state(&counter)?;
    Ok(json!({ "value": counter.value }))
}

async fn counter_get(this: This, _: Value) -> Result<Value, Error> {
    Ok(json!({ "value": this.state::<Counter>()?.value }))
}

async fn counter_reset(this: This, _: Value) -> Result<Value, Error> {
    this.set_state(&Counter { value: 0 })?;
    Ok(json!({ "value": 0 }))
}

#[derive(Serialize, Deserialize)]
struct Seats {
    /// Seat name to its reservation.
    taken: Map<String, Value>,
    /// Reservations made so far: the next one's place in the arrival order.
    reservations: i64,
    capacity: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reserve {
    seat: String,
    by: String,
}

async fn seats_reserve(this: This, r: Reserve) -> Result<Value, Error> {
    let mut seats: Seats = this.state()?;
    if let Some(holder) = seats.taken.get(&r.seat) {
        return Err(Error::failed(format!(
            "seat {} is taken (reservation {})",
            r.seat, holder["order"]
        )));
    }
    if seats.taken.len() as i64 >= seats.capacity {
        return Err(Error::failed("sold out"));
    }
    seats.reservations += 1;
    let reservation = json!({ "by": r.by, "order": seats.reservations });
    seats.taken.insert(r.seat.clone(), reservation.clone());
    this.set_state(&seats)?;
    Ok(json!({ "seat": r.seat, "by": r.by, "order": seats.reservations }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    seat: String,
}

async fn seats_release(this: This, r: Release) -> Result<Value, Error> {
    let mut seats: Seats = this.state()?;
    let released = seats.taken.remove(&r.seat).is_some();
    this.set_state(&seats)?;
    Ok(json!({ "released": released }))
}

async fn seats_list(this: This, _: Value) -> Result<Value, Error> {
    let seats: Seats = this.state()?;
    Ok(json!({
        "taken": seats.taken,
        "free": seats.capacity - seats.taken.len() as i64,
    }))
}

async fn video_watch(this: This, _: Value) -> Result<Value, Error> {
    let mut video = this.state_value();
    let views = video["views"].as_i64().unwrap_or(0) + 1;
    video["views"] = json!(views);
    this.set_state(&video)?;
    Ok(json!({ "views": views }))
}

/// Inherited by `premium_video` as it is: it names the object's own class.
async fn video_describe(this: This, _: Value) -> Result<Value, Error> {
    let mut video = this.state_value();
    video["class"] = json!(this.class());
    Ok(video)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Retitle {
    title: String,
}

async fn video_retitle(this: This, r: Retitle) -> Result<Value, Error> {
    let mut video = this.state_value();
    video["title"] = json!(r.title);
    this.set_state(&video)?;
    Ok(json!({ "title": r.title, "by": this.caller().map(|c| c.to_string()) }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Watch {
    paid: bool,
}

/// The override: a premium video is watched once paid for.
async fn premium_watch(this: This, w: Watch) -> Result<Value, Error> {
    let mut video = this.state_value();
    if !w.paid {
        return Err(Error::failed(format!(
            "{} is premium: pay {} cents first ({{\"paid\": true}})",
            this.key(),
            video["price_cents"]
        )));
    }
    let views = video["views"].as_i64().unwrap_or(0) + 1;
    let paid_views = video["paid_views"].as_i64().unwrap_or(0) + 1;
    video["views"] = json!(views);
    video["paid_views"] = json!(paid_views);
    this.set_state(&video)?;
    Ok(json!({ "views": views, "paid_views": paid_views }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditorRetitle {
    class: String,
    key: String,
    title: String,
}

async fn editor_retitle(this: This, r: EditorRetitle) -> Result<Value, Error> {
    this.call(&r.class, &r.key, "retitle", &json!({ "title": r.title }))
        .await
}
