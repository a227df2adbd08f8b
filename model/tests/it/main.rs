//! fathom-model's integration tests.

mod batch;
mod checkpoint;
mod fused;
mod model;
