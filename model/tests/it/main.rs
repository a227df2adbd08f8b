//! fathom-model's integration tests.

mod model;
