//! fathom-model's integration tests.

mod fused;
mod model;
