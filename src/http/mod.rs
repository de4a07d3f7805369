//! Talking to the API: sending attempts ([`client`]), the hosted Batch API's Files and Batches
//! calls ([`batch`]) and the lines of their output files ([`batch_output`]), with extra
//! [`headers`], reading answers with bounds and within the memory budget ([`body`], [`hints`]),
//! keeping the key out of what servers say ([`redact`]), assembling streamed answers ([`sse`]),
//! reading success bodies in memory or spooled ([`response`], [`source`]) and deciding what
//! results mean ([`classify`]).

pub mod batch;
pub mod batch_output;
pub mod body;
pub mod classify;
pub mod client;
pub mod headers;
pub mod hints;
pub mod key;
pub mod redact;
pub mod response;
pub mod source;
pub mod sse;
