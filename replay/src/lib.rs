//! The web boundary: the only path from an agent to the web, in `live`,
//! `record` and `replay` modes; HTML to text; page segmenting; canonical
//! request keys.
//!
//! **Architecture Invariant:** nothing but this crate talks to the network
//! on the agent's behalf, and in replay mode it opens no socket at all.
//! It may use `core` and `store`.

pub mod html;
