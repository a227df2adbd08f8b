//! fathom-model's integration tests.

mod batch;
mod fused;
mod model;
