//! The sandbox served on loopback, exercised over HTTP.

mod serve;
