//! Runnable examples; see the `[[example]]` entries. Run one with
//! `cargo run --example send_update -- --help`.
