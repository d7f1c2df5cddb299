//! The segment codec on arbitrary bytes: `decode` never panics, agrees with `check` on the
//! frame's length, and whatever decodes encodes back to exactly the bytes it came from (the
//! encoding is canonical).
//!
//! Random bytes almost never carry a valid CRC, so each input is also tried as the kind and
//! body of a frame whose length and CRC are filled in: that reaches the body parsers.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use storage_node::codec::{self, DecodeError, FRAME_PREFIX_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = check_decode(Bytes::copy_from_slice(data));
    let mut framed = Vec::with_capacity(FRAME_PREFIX_BYTES + data.len());
    let len = u32::try_from(data.len()).expect("fuzz inputs are small");
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    let decoded = check_decode(Bytes::from(framed));
    if !data.is_empty() {
        // Length and CRC are right: only the body can be wrong.
        assert!(
            matches!(decoded, Ok(_) | Err(DecodeError::BadBody(_))),
            "a frame with a valid prefix failed with {decoded:?}"
        );
    }
});

fn check_decode(buf: Bytes) -> Result<usize, DecodeError> {
    let checked = codec::check(&buf);
    let decoded = codec::decode(&buf);
    match &decoded {
        Ok((frame, len)) => {
            assert_eq!(checked, Ok(*len), "check and decode disagree on the length");
            let mut out = Vec::new();
            assert_eq!(codec::encode(frame, &mut out), *len);
            assert_eq!(out, buf[..*len], "a decoded frame encodes to other bytes");
        }
        Err(DecodeError::BadBody(_)) => assert!(checked.is_ok(), "a bad body with a bad prefix"),
        Err(e) => assert_eq!(checked, Err(e.clone()), "check and decode disagree"),
    }
    decoded.map(|(_, len)| len)
}
