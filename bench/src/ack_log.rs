//! The ack log: one line `seqnum client counter` per acknowledged append, so a crash test can
//! check every acknowledged record is still readable at its seqnum. Writing happens on one task
//! fed by a bounded channel; it flushes every `ACK_FLUSH_INTERVAL` and at the end.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

/// Acks queued for the writer before appending clients wait for it.
pub(crate) const ACK_QUEUE_DEPTH: usize = 4096;
/// How stale the file may be behind the acks it has been sent.
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// One acknowledged append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seqnum: u64,
    pub client: u32,
    pub counter: u64,
}

impl Ack {
    fn parse_line(line: &str) -> Option<Ack> {
        let mut fields = line.split_ascii_whitespace();
        let ack = Ack {
            seqnum: fields.next()?.parse().ok()?,
            client: fields.next()?.parse().ok()?,
            counter: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(ack)
    }
}

/// Reads an ack log. A torn last line (the bench was killed mid-write) is skipped; any other
/// malformed line is an error.
pub fn read_ack_log(path: &Path) -> io::Result<Vec<Ack>> {
    let file = File::open(path)?;
    let lines: Vec<String> = BufReader::new(file).lines().collect::<io::Result<_>>()?;
    let mut acks = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match Ack::parse_line(line) {
            Some(ack) => acks.push(ack),
            None if index + 1 == lines.len() => {}
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: bad ack line {line:?}", path.display(), index + 1),
                ))
            }
        }
    }
    Ok(acks)
}

/// Writes acks from `rx` to `file` until every sender is gone; returns how many it wrote.
pub(crate) async fn write_acks(file: File, mut rx: mpsc::Receiver<Ack>) -> io::Result<u64> {
    let mut out = BufWriter::new(file);
    let mut tick = tokio::time::interval(ACK_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0u64;
    let mut dirty = false;
    loop {
        tokio::select! {
            ack = rx.recv() => match ack {
                Some(ack) => {
                    writeln!(out, "{} {} {}", ack.seqnum, ack.client, ack.counter)?;
                    written += 1;
                    dirty = true;
                }
                None => break,
            },
            _ = tick.tick() => if dirty {
                out.flush()?;
                dirty = false;
            },
        }
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_lines_parse_strictly() {
        let check = |line: &str, expect: Option<(u64, u32, u64)>| {
            let got = Ack::parse_line(line).map(|a| (a.seqnum, a.client, a.counter));
            assert_eq!(got, expect, "{line:?}");
        };
        check("17 3 9", Some((17, 3, 9)));
        check("18446744073709551615 0 0", Some((u64::MAX, 0, 0)));
        check("17 3", None);
        check("17 3 9 1", None);
        check("17 x 9", None);
        check("", None);
    }
}
