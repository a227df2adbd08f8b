//! The web boundary: the only path from an agent to the web, in `live`,
//! `record` and `replay` modes ([`gateway`]); the SSRF guard ([`policy`]);
//! canonical request keys ([`canonical`]); HTML to text and page segmenting
//! ([`html`]).
//!
//! **Architecture Invariant:** nothing but this crate talks to the network
//! on the agent's behalf, and in replay mode it opens no socket at all
//! (a replay gateway holds no HTTP client). It may use `core` and `store`.

pub mod canonical;
pub mod diff;
pub mod gateway;
pub mod html;
pub mod policy;
pub mod remote;
pub mod render;
pub mod warc;

pub use gateway::{
    Context, Gateway, GatewayConfig, Miss, Mode, Page, Recording, SearchBackend, SearchResult, WebError,
};
