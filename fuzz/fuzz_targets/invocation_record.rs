//! The durable invocation records of the reserved book (`gateway::invocations`) on arbitrary
//! bytes: `decode` never panics, and what decodes encodes to a record that decodes to the same
//! entry and payload.

#![no_main]

use bytes::Bytes;
use gateway::invocations::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((entry, payload)) = decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = encode(&entry, &payload);
    let (entry_again, payload_again) = decode(&again).expect("an encoded record decodes");
    assert_eq!(entry_again, entry);
    assert_eq!(payload_again, payload);
});
