//! fathom's end-to-end tests that cross library crates live in
//! `tests/it/`; this library is empty on purpose.
