//! A queue consumer process for the Q-1 tests: pops from a queue for one group over HTTP and
//! acks each delivery, forever (the test SIGKILLs it). It reads the gateways' URLs from a file
//! (one a line) before each request, so a test can restart `tally up` on another port; it
//! uses line `index % lines`, or the next one that answers.
//!
//! It prints one line per event, flushed at once:
//! `POP ID DELIVERIES RECEIPT DATA` when a pop hands it a message, `ACK ID RECEIPT DATA` once
//! the ack counted, `STALE ID RECEIPT` when the ack was refused (the delivery was no longer
//! current). A consumer killed between a pop and its ack leaves the message in flight, to be
//! delivered again after the visibility timeout.
//!
//! Usage: queue_consumer URL_FILE QUEUE GROUP INDEX VISIBILITY_MS

use base64::Engine as _;
use std::io::Write as _;
use std::time::Duration;

/// The gateways' URLs, as the file says now.
fn read_urls(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url_file, queue, group, index, visibility_ms] = &args[..] else {
        eprintln!("usage: queue_consumer URL_FILE QUEUE GROUP INDEX VISIBILITY_MS");
        std::process::exit(2);
    };
    let index: usize = index.parse().expect("INDEX is a number");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client");
    let mut out = std::io::stdout().lock();
    let mut turn = 0;
    loop {
        let urls = read_urls(url_file);
        if urls.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let url = &urls[(index + turn) % urls.len()];
        let popped = http
            .post(format!(
                "{url}/queues/{queue}/pop?group={group}&wait_ms=1000&visibility_timeout_ms={visibility_ms}"
            ))
            .send();
        let delivery: serde_json::Value = match popped {
            Ok(r) if r.status() == 204 => continue,
            Ok(r) if r.status() == 200 => match r.json() {
                Ok(v) => v,
                Err(_) => continue,
            },
            _ => {
                // Down, or refusing: try the next gateway after a pause.
                turn += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = delivery["id"].as_str().unwrap_or_default().to_string();
        let receipt = delivery["receipt"].as_u64().unwrap_or_default();
        let data = base64::engine::general_purpose::STANDARD
            .decode(delivery["data"].as_str().unwrap_or_default())
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        writeln!(out, "POP {id} {} {receipt} {data}", delivery["deliveries"]).unwrap();
        out.flush().unwrap();
        // Ack, through whichever gateway answers; an ack whose answer was lost is sent again
        // (a second ack of a delivery that counted is refused as stale).
        loop {
            let urls = read_urls(url_file);
            let Some(url) = urls.get((index + turn) % urls.len().max(1)) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let acked = http
                .post(format!(
                    "{url}/queues/{queue}/ack?group={group}&id={id}&receipt={receipt}"
                ))
                .send();
            match acked {
                Ok(r) if r.status() == 200 => {
                    writeln!(out, "ACK {id} {receipt} {data}").unwrap();
                    break;
                }
                Ok(r) if r.status() == 409 => {
                    writeln!(out, "STALE {id} {receipt}").unwrap();
                    break;
                }
                _ => {
                    turn += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        out.flush().unwrap();
    }
}
