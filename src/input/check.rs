//! The first of the two reads of a new job's file: every line parsed and checked, nothing kept
//! but what tells whether the second read may insert the lines straight into the job.
//!
//! A job that has no request yet takes its file in two reads: this one, which writes nothing,
//! and then `store::ingest::direct`, which inserts the requests in short transactions while the
//! first ones are already being sent. Nothing is sent before this read has found the whole file
//! good. The second read parses every line again (the same parser: it finds what this one
//! found), so all that is kept here is a 64-bit hash per custom_id, sorted to find repeats:
//! 8 bytes a line, never the lines themselves, and never more than [`RUN_LEN`] of them in
//! memory (a longer file's hashes go to an unnamed temporary file in sorted runs, merged at the
//! end), so memory stays flat whatever the file.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

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
    /// A spreadsheet's layout as stored with the job (JSON, see [`super::TableLayout`]).
    pub layout: Option<String>,
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
    let mut ids = Repeats::new(RUN_LEN);
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
    let direct = requests > 0 && invalid == 0 && consistent_keys && ids.all_different();
    Ok(Some(Checked {
        requests,
        direct,
        fingerprint: reader.fingerprint(),
        layout: reader.layout().map(super::TableLayout::to_json),
    }))
}

/// Hashes kept in memory at most (8 MiB); a file with more custom_ids spills sorted runs of
/// this many to a temporary file.
pub const RUN_LEN: usize = 1 << 20;

/// Per-run read buffer of the final merge, in hashes (32 KiB).
const MERGE_BUFFER: usize = 4096;

/// The custom_id hashes of a file, to find whether one repeats, in bounded memory. Two
/// different custom_ids may share a hash: such a file takes the staged way too, which compares
/// the ids themselves. So does a file whose hashes cannot be spilled (no temporary directory):
/// the check never fails for want of one.
struct Repeats {
    run: Vec<u64>,
    run_len: usize,
    /// The runs spilled so far, and the file that holds them.
    spilled: Spilled,
    /// Spilling failed: whether a hash repeats cannot be told.
    failed: bool,
}

#[derive(Default)]
struct Spilled {
    file: Option<File>,
    /// Each run's length, in hashes, in file order.
    runs: Vec<usize>,
}

impl Repeats {
    fn new(run_len: usize) -> Repeats {
        Repeats {
            run: Vec::new(),
            run_len,
            spilled: Spilled::default(),
            failed: false,
        }
    }

    fn push(&mut self, hash: u64) {
        if self.failed {
            return;
        }
        if self.run.len() == self.run_len && self.spill().is_err() {
            self.failed = true;
            self.run = Vec::new();
            return;
        }
        if self.run.capacity() == 0 {
            // Reserved once (pages are taken as the run fills), never grown by copying.
            self.run.reserve_exact(self.run_len);
        }
        self.run.push(hash);
    }

    /// Writes the run in memory, sorted, to the temporary file.
    fn spill(&mut self) -> io::Result<()> {
        let spilled = &mut self.spilled;
        let file = match &mut spilled.file {
            Some(file) => file,
            none => none.insert(unnamed_temp_file()?),
        };
        self.run.sort_unstable();
        let mut out = BufWriter::new(&*file);
        for hash in &self.run {
            out.write_all(&hash.to_le_bytes())?;
        }
        out.flush()?;
        spilled.runs.push(self.run.len());
        self.run.clear();
        Ok(())
    }

    /// Whether no hash repeats (`false` too when that cannot be told).
    fn all_different(mut self) -> bool {
        if self.failed {
            return false;
        }
        self.run.sort_unstable();
        let in_memory = self.run.windows(2).all(|w| w[0] != w[1]);
        match &self.spilled.file {
            Some(file) if in_memory => {
                merge_all_different(file, &self.spilled.runs, &self.run).unwrap_or(false)
            }
            Some(_) | None => in_memory,
        }
    }
}

/// Merges the sorted runs of `file` and the sorted `last` run, looking for a value twice.
fn merge_all_different(file: &File, runs: &[usize], last: &[u64]) -> io::Result<bool> {
    let mut readers = Vec::with_capacity(runs.len());
    let mut offset = 0;
    for &len in runs {
        readers.push(RunReader {
            offset,
            left: len,
            buf: Vec::new(),
            at: 0,
        });
        offset += len as u64 * 8;
    }
    let mut heap = BinaryHeap::new();
    for (i, reader) in readers.iter_mut().enumerate() {
        if let Some(first) = reader.next(file)? {
            heap.push(Reverse((first, i)));
        }
    }
    let mut last = last.iter().copied().peekable();
    let mut previous = None;
    loop {
        let from_file = heap.peek().map(|Reverse((value, _))| *value);
        let value = match (from_file, last.peek().copied()) {
            (None, None) => return Ok(true),
            (Some(f), Some(l)) if l < f => last.next(),
            (None, Some(_)) => last.next(),
            (Some(_), _) => {
                let Some(Reverse((value, i))) = heap.pop() else {
                    return Ok(true);
                };
                if let Some(next) = readers[i].next(file)? {
                    heap.push(Reverse((next, i)));
                }
                Some(value)
            }
        };
        if value.is_some() && value == previous {
            return Ok(false);
        }
        previous = value;
    }
}

/// One spilled run, read back a buffer at a time.
struct RunReader {
    offset: u64,
    left: usize,
    buf: Vec<u64>,
    at: usize,
}

impl RunReader {
    fn next(&mut self, file: &File) -> io::Result<Option<u64>> {
        if self.at == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = self.left.min(MERGE_BUFFER);
            let mut bytes = vec![0u8; n * 8];
            file.read_exact_at(&mut bytes, self.offset)?;
            self.offset += bytes.len() as u64;
            self.left -= n;
            self.buf = bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect();
            self.at = 0;
        }
        let value = self.buf[self.at];
        self.at += 1;
        Ok(Some(value))
    }
}

/// A new file in the temporary directory, already unlinked: it goes away with its handle.
fn unnamed_temp_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("runner-check-{}-{nanos}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::Repeats;

    fn all_different(values: &[u64], run_len: usize) -> bool {
        let mut repeats = Repeats::new(run_len);
        for v in values {
            repeats.push(*v);
        }
        repeats.all_different()
    }

    #[test]
    fn a_repeat_is_found_in_memory_and_across_spilled_runs() {
        let distinct: Vec<u64> = (0..1000).map(|i| (i * 7919) % 100_003).collect();
        for run_len in [1, 3, 64, 1000, 4096] {
            assert!(all_different(&distinct, run_len), "run of {run_len}");
            for (a, b) in [(0, 999), (10, 11), (500, 501), (998, 999), (0, 1)] {
                let mut repeated = distinct.clone();
                repeated[b] = repeated[a];
                assert!(
                    !all_different(&repeated, run_len),
                    "run of {run_len}: {a}, {b}"
                );
            }
        }
    }

    #[test]
    fn nothing_and_one_are_all_different() {
        assert!(all_different(&[], 2));
        assert!(all_different(&[5], 2));
        assert!(all_different(&[5, 6, 7], 1));
        assert!(!all_different(&[5, 5], 1));
    }
}
