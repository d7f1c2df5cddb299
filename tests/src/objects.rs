//! What the class tests check against a real `tally up`: a counter object's whole history
//! (`GET /objects/counter/KEY/history`, every page), and that it is serial.

use serde_json::{json, Value};

/// Every call in the history of object `class/key` at the gateway `base`, oldest first.
pub fn history(http: &reqwest::blocking::Client, base: &str, class: &str, key: &str) -> Vec<Value> {
    let mut calls = Vec::new();
    let mut after = 0u64;
    loop {
        let url = format!("{base}/objects/{class}/{key}/history?after={after}&limit=1000");
        let page: Value = http
            .get(url)
            .send()
            .and_then(|r| r.json())
            .expect("a history page");
        calls.extend(page["calls"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return calls,
        }
    }
}

/// Checks that a counter's history is serial: calls in log order (ascending call seqnums),
/// and each `add` that took effect moved the value from the one the call before left, by its
/// `by`, and answered the new value; duplicates and failed calls changed nothing. Returns the
/// final value and how many adds took effect.
pub fn check_serial_counter(calls: &[Value]) -> Result<(i64, usize), String> {
    let (mut value, mut applied, mut last) = (0i64, 0usize, 0u64);
    for c in calls {
        let call = c["call"].as_u64().ok_or("a call without a seqnum")?;
        if call <= last {
            return Err(format!("call {call} ran after call {last}"));
        }
        last = call;
        let took_effect = c["duplicate_of"].is_null() && c["error"].is_null();
        if !took_effect {
            if !c["state"].is_null() {
                return Err(format!("call {call} changed the state without effect"));
            }
            continue;
        }
        let by = c["input"]["by"].as_i64().ok_or("an add without by")?;
        let after = c["state"]["value"]
            .as_i64()
            .ok_or_else(|| format!("add {call} left no state"))?;
        if after != value + by || c["output"] != json!({ "value": after }) {
            return Err(format!(
                "call {call}: add {by} on {value} left {after} and answered {}",
                c["output"]
            ));
        }
        value = after;
        applied += 1;
    }
    Ok((value, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(call: u64, by: i64, after: i64) -> Value {
        json!({"call": call, "method": "add", "input": {"by": by},
               "output": {"value": after}, "state": {"value": after}})
    }

    #[test]
    fn the_checker_catches_what_it_is_for() {
        let good = vec![add(1, 1, 1), add(2, 2, 3), add(9, 1, 4)];
        assert_eq!(check_serial_counter(&good), Ok((4, 3)));
        let mut twice = good.clone();
        twice.insert(2, add(2, 2, 3));
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let mut lost = good.clone();
        lost[1] = add(2, 2, 2);
        let mut duplicate_with_effect = good.clone();
        duplicate_with_effect[1]["duplicate_of"] = json!(1);
        let mut wrong_answer = good.clone();
        wrong_answer[2]["output"] = json!({"value": 3});
        for bad in [twice, swapped, lost, duplicate_with_effect, wrong_answer] {
            assert!(check_serial_counter(&bad).is_err(), "{bad:?}");
        }
    }
}
