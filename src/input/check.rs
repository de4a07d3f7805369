//! The first of the two reads of a new job's file: every line parsed and checked, nothing kept
//! but what tells whether the second read may insert the lines straight into the job.
//!
//! A job that has no request yet takes its file in two reads: this one, which writes nothing,
//! and then `store::ingest::direct`, which inserts the requests in short transactions while the
//! first ones are already being sent. Nothing is sent before this read has found the whole file
//! good. The second read parses every line again (the same parser: it finds what this one
//! found), so all that is kept here is a 64-bit hash per custom_id, sorted at the end to find
//! repeats: 8 bytes a line, never the lines themselves.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use tokio_util::sync::CancellationToken;

use super::{InputError, InputReader};

/// What the check of a whole file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Requests in the file (blank lines are not requests).
    pub requests: u64,
    /// Whether every request may go straight into a job without requests: no line was invalid
    /// (`--skip-invalid` kept reading past one), and either every line has a custom_id, all of
    /// them different, or none has (each key is then derived from its body). Otherwise the file
    /// takes the staged way (`store::ingest`), which names a repeated custom_id with both of its
    /// lines, or records invalid lines.
    pub direct: bool,
    /// blake3 of the whole file as read.
    pub fingerprint: String,
}

/// Lines read between two looks at whether the check should stop.
const LOOK_EVERY: u64 = 10_000;

/// Reads the whole of `reader`, parsing every line; `None` when `stop` was cancelled first
/// (a signal: the command ends without writing anything).
///
/// # Errors
/// The first error of the file, as the reader gives it; with
/// [`InputReader::skip_invalid`], only the errors that end reading (I/O).
pub fn check(
    mut reader: InputReader,
    stop: &CancellationToken,
) -> Result<Option<Checked>, InputError> {
    reader.checking = true;
    let hasher = RandomState::new();
    let mut ids: Vec<u64> = Vec::new();
    let (mut requests, mut without_id, mut invalid) = (0u64, 0u64, 0u64);
    let skips_invalid = reader.skips_invalid();
    for (n, read) in (1u64..).zip(reader.by_ref()) {
        if n % LOOK_EVERY == 0 && stop.is_cancelled() {
            return Ok(None);
        }
        match read {
            Ok(prompt) => {
                requests += 1;
                match &prompt.custom_id {
                    Some(id) => ids.push(hasher.hash_one(id)),
                    None => without_id += 1,
                }
            }
            Err(e) if skips_invalid && e.is_invalid_line() => invalid += 1,
            Err(e) => return Err(e),
        }
    }
    let consistent_keys = without_id == 0 || without_id == requests;
    let direct = requests > 0 && invalid == 0 && consistent_keys && all_different(&mut ids);
    Ok(Some(Checked {
        requests,
        direct,
        fingerprint: reader.fingerprint(),
    }))
}

/// Whether no hash repeats. Two different custom_ids may share a hash: such a file takes the
/// staged way too, which compares the ids themselves.
fn all_different(hashes: &mut [u64]) -> bool {
    hashes.sort_unstable();
    hashes.windows(2).all(|w| w[0] != w[1])
}
