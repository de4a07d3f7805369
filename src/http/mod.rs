//! Talking to the API: sending attempts ([`client`]), reading answers within bounds ([`body`],
//! [`hints`]) and deciding what their results mean ([`classify`]).

pub mod body;
pub mod classify;
pub mod client;
pub mod hints;
