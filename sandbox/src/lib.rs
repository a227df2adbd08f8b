//! fathom's built-in web: a generated world of entities, the pages about
//! them on several fake sites, and question sets with 1 to 4 hops whose
//! answers are in the pages. Everything is fixed by a seed.
//!
//! Neighbours: uses only `core` (for seeded randomness). The CLI serves it
//! on loopback; the gateway in `replay` reaches it like any other web.

pub mod faults;
pub mod pages;
pub mod questions;
pub mod search;
pub mod serve;
pub mod world;

pub use pages::{Page, Site};
pub use questions::Question;
pub use serve::{Sandbox, SandboxWeb, ServeConfig};
pub use world::{Entity, Kind, World};
