//! The sequencer group's events as JSON (what its Raft log entries carry) on arbitrary bytes:
//! decoding never panics, what decodes re-encodes to JSON that decodes to the same event, and
//! the gRPC form of an event (what subscribers get) accepts exactly the metalog entries that
//! validate.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logbook::rpc::pb;
use logbook::wire::{GroupEvent, View};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = serde_json::from_slice::<View>(data) {
        let again = serde_json::to_vec(&view).expect("a view serializes");
        assert_eq!(serde_json::from_slice::<View>(&again).ok(), Some(view));
    }
    let Ok(event) = serde_json::from_slice::<GroupEvent>(data) else {
        return;
    };
    let again = serde_json::to_vec(&event).expect("an event serializes");
    assert_eq!(
        serde_json::from_slice::<GroupEvent>(&again).ok().as_ref(),
        Some(&event)
    );
    let wire = pb::Event::new(7, &event).decode();
    match &event {
        GroupEvent::Metalog(entry) => {
            assert_eq!(
                wire.is_ok(),
                entry.validate().is_ok(),
                "{entry:?}: {wire:?}"
            );
        }
        GroupEvent::View(view) if u32::try_from(view.write_quorum).is_ok() => {
            assert_eq!(wire, Ok((7, event.clone())));
        }
        GroupEvent::View(_) => {}
    }
});
