//! The records the append benchmark writes: a header naming the client and its per-client
//! counter, then deterministic filler, so any record read back can be traced to the append
//! that wrote it and checked byte for byte.

/// Bytes at the start of every benchmark record: client id (u32, little endian), then the
/// client's counter (u64, little endian).
pub const FILLER_HEADER_BYTES: usize = 12;

/// The record client `client` writes as its `counter`-th append, exactly `record_bytes` long.
///
/// Panics if `record_bytes < FILLER_HEADER_BYTES`: `AppendConfig::validate` rejects that first.
pub fn filler(client: u32, counter: u64, record_bytes: usize) -> Vec<u8> {
    assert!(
        record_bytes >= FILLER_HEADER_BYTES,
        "record_bytes below the header size"
    );
    let mut record = Vec::with_capacity(record_bytes);
    record.extend_from_slice(&client.to_le_bytes());
    record.extend_from_slice(&counter.to_le_bytes());
    record.extend((FILLER_HEADER_BYTES..record_bytes).map(|i| filler_byte(client, counter, i)));
    record
}

/// The (client, counter) that wrote `record`, or `None` when `record` is not exactly what
/// `filler` makes for them (wrong body, or shorter than the header).
pub fn filler_origin(record: &[u8]) -> Option<(u32, u64)> {
    let client = u32::from_le_bytes(record.get(0..4)?.try_into().ok()?);
    let counter = u64::from_le_bytes(record.get(4..FILLER_HEADER_BYTES)?.try_into().ok()?);
    let body_ok = record
        .iter()
        .enumerate()
        .skip(FILLER_HEADER_BYTES)
        .all(|(i, &b)| b == filler_byte(client, counter, i));
    body_ok.then_some((client, counter))
}

// Printable letters that shift with client and counter, so a record swapped for another
// (or a torn one) fails `filler_origin` even when the headers survive.
fn filler_byte(client: u32, counter: u64, index: usize) -> u8 {
    let shift = (u64::from(client) % 26 + counter % 26 + index as u64 % 26) % 26;
    b'a' + shift as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_exact_size_and_encodes_client_and_counter() {
        for (client, counter, bytes) in [(0, 0, 12), (7, 42, 100), (4095, u64::MAX, 4096)] {
            let record = filler(client, counter, bytes);
            assert_eq!(record.len(), bytes);
            assert_eq!(filler_origin(&record), Some((client, counter)));
        }
    }

    #[test]
    fn filler_origin_rejects_altered_or_short_records() {
        let mut record = filler(3, 9, 64);
        record[40] ^= 1;
        assert_eq!(filler_origin(&record), None);
        assert_eq!(filler_origin(&filler(3, 9, 64)[..11]), None);
        assert_ne!(filler(1, 2, 64), filler(2, 1, 64)[..]);
    }
}
