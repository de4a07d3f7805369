//! Talking to the API: sending attempts ([`client`]) and deciding what their results mean
//! ([`classify`]).

pub mod classify;
pub mod client;
pub mod sse;
