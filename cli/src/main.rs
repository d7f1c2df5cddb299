//! The tally binary.
fn main() {}
