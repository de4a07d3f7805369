//! Answers' bodies in memory under one process-wide [`Budget`], and the private spool files that
//! take them when the budget cannot ([`Spooled`]).
//!
//! A job may keep thousands of requests in flight, and an answer may be hundreds of megabytes:
//! holding every body whole would let the servers choose how much memory the runner takes. A
//! body being read takes from the budget as it grows ([`Held`]) and gives it back when it is
//! journaled or dropped; a body the budget cannot hold, or one larger than
//! [`Budget::per_answer`], is written to a spool file instead, and everything the runner reads
//! in it (usage, the error object, the journal's copy) is read from there in pieces.
//!
//! A spool file is created mode 0600 in the temporary directory (`TMPDIR`) and unlinked at once:
//! only its descriptor names it, so it is gone when the body is dropped (journaled, or the
//! attempt ends any other way) and never left behind, not even by `kill -9`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The answer bytes the process holds in memory at most: 64 MiB. Thousands of chat answers of a
/// few kilobytes each fit many times over, so the hot path never touches a disk, while four
/// answers of 300 MB (what `--max-response-bytes` allows) cost 64 MiB and not 1.2 GB.
pub const DEFAULT_ANSWER_BUDGET: usize = 64 * 1024 * 1024;

/// The most one answer holds in memory: 8 MiB. A larger one is spooled even when the budget has
/// room, so that one large answer never takes the room that thousands of small ones need, and
/// SQLite (which builds each journal row whole in memory) never builds a row around it.
pub const MAX_HELD_ANSWER: usize = 8 * 1024 * 1024;

/// The bytes read from a spool file at a time: large enough that reading costs few calls, small
/// enough to be nothing beside the budget.
pub const SPOOL_PIECE: usize = 64 * 1024;

/// A shared count of the answer bytes held in memory, with its limit. Taking is lock-free: one
/// compare-and-swap per growth of a body.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    per_answer: usize,
    held: AtomicUsize,
}

static GLOBAL: Budget = Budget::new(DEFAULT_ANSWER_BUDGET, MAX_HELD_ANSWER);

impl Budget {
    /// A budget of `limit` bytes in all, of which one answer holds at most `per_answer`.
    pub const fn new(limit: usize, per_answer: usize) -> Budget {
        Budget {
            limit,
            per_answer,
            held: AtomicUsize::new(0),
        }
    }

    /// The process's budget: [`DEFAULT_ANSWER_BUDGET`], [`MAX_HELD_ANSWER`] per answer.
    pub fn global() -> &'static Budget {
        &GLOBAL
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most one answer holds in memory.
    pub fn per_answer(&self) -> usize {
        self.per_answer
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if the limit allows it; takes nothing otherwise.
    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A share of a [`Budget`], given back when dropped: it travels with the bytes it accounts for,
/// from the read to the journal.
#[derive(Debug)]
pub struct Held {
    budget: Option<&'static Budget>,
    bytes: usize,
}

impl Held {
    /// A share of `budget` of no bytes yet.
    pub fn new(budget: &'static Budget) -> Held {
        Held {
            budget: Some(budget),
            bytes: 0,
        }
    }

    /// Holds nothing and can take nothing: for bodies that were never read from a connection
    /// (a batch's output line, a streamed answer's assembly, tests).
    pub const fn none() -> Held {
        Held {
            budget: None,
            bytes: 0,
        }
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget this share is of, if any.
    pub fn budget(&self) -> Option<&'static Budget> {
        self.budget
    }

    /// Takes `more` bytes from the budget; `false` (and nothing taken) when it cannot give them.
    pub fn grow(&mut self, more: usize) -> bool {
        match self.budget {
            Some(budget) if budget.take(more) => {
                self.bytes += more;
                true
            }
            Some(_) | None => false,
        }
    }

    /// Gives `less` bytes back (all that is held, at most).
    pub fn shrink(&mut self, less: usize) {
        let less = less.min(self.bytes);
        if let Some(budget) = self.budget {
            budget.give(less);
        }
        self.bytes -= less;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shrink(self.bytes);
    }
}

/// The UTF-8 encoding of U+FFFD, what an invalid sequence becomes.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// `String::from_utf8_lossy`, on a body that arrives in pieces: each maximal invalid sequence
/// becomes one U+FFFD, including one cut by the end of a piece only when the next piece does not
/// complete it. Counts the bytes of text it gives.
#[derive(Debug, Default)]
pub struct Utf8Lossy {
    /// The start of a sequence cut by the end of the last piece (at most 3 bytes).
    carry: Vec<u8>,
    text_len: u64,
    replaced: bool,
}

impl Utf8Lossy {
    /// Decodes `piece`, giving the text to `out` (in one or more slices of valid UTF-8).
    ///
    /// # Errors
    /// `out`'s error.
    pub fn push(
        &mut self,
        piece: &[u8],
        out: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut rest = piece;
        // A sequence cut by the end of the last piece: complete it a byte at a time.
        while !self.carry.is_empty() {
            let Some((&byte, after)) = rest.split_first() else {
                return Ok(());
            };
            self.carry.push(byte);
            match std::str::from_utf8(&self.carry) {
                Ok(_) => {
                    let carry = std::mem::take(&mut self.carry);
                    self.emit(&carry, out)?;
                    rest = after;
                }
                Err(e) if e.error_len().is_none() => rest = after,
                Err(_) => {
                    // The carried bytes were a valid start, so they are the whole invalid
                    // sequence; the byte that broke them is read again as what follows.
                    self.carry.clear();
                    self.replace(out)?;
                }
            }
        }
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => return self.emit(text.as_bytes(), out),
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    self.emit(valid, out)?;
                    match e.error_len() {
                        Some(bad) => {
                            self.replace(out)?;
                            rest = &after[bad..];
                        }
                        None => {
                            self.carry.extend_from_slice(after);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Ends the text: a sequence still cut becomes U+FFFD.
    ///
    /// # Errors
    /// `out`'s error.
    pub fn finish(&mut self, out: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        self.carry.clear();
        self.replace(out)
    }

    /// Bytes of text given so far.
    pub fn text_len(&self) -> u64 {
        self.text_len
    }

    /// Whether some bytes were not UTF-8 (and were replaced).
    pub fn replaced(&self) -> bool {
        self.replaced
    }

    fn emit(
        &mut self,
        text: &[u8],
        out: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.text_len += text.len() as u64;
        out(text)
    }

    fn replace(&mut self, out: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.replaced = true;
        self.emit(REPLACEMENT, out)
    }
}

/// A body written to a private spool file, complete: its bytes as the server sent them (with the
/// key redacted), and what they become as the journal's text. The file is unlinked already, so
/// dropping this deletes it.
#[derive(Debug)]
pub struct Spooled {
    file: File,
    len: u64,
    text_len: u64,
    utf8: bool,
}

impl Spooled {
    /// Wraps a spool file of `len` bytes, which [`Utf8Lossy`] makes `text_len` bytes of text;
    /// `utf8` says whether they are UTF-8 already.
    pub fn new(file: File, len: u64, text_len: u64, utf8: bool) -> Spooled {
        Spooled {
            file,
            len,
            text_len,
            utf8,
        }
    }

    /// The bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of the journal's text (the file's bytes, each invalid sequence made U+FFFD).
    pub fn text_len(&self) -> u64 {
        self.text_len
    }

    /// Reads the file from its start, without moving any shared cursor: readers do not disturb
    /// each other.
    pub fn reader(&self) -> SpoolReader<'_> {
        SpoolReader {
            file: &self.file,
            at: 0,
        }
    }

    /// Gives the journal's text to `out`, piece by piece ([`SPOOL_PIECE`]); returns its length.
    ///
    /// # Errors
    /// Reading the file, or `out`'s error.
    pub fn copy_text(&self, out: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<u64> {
        let mut piece = vec![0u8; SPOOL_PIECE];
        let mut reader = self.reader();
        let mut lossy = Utf8Lossy::default();
        let mut written = 0u64;
        loop {
            let n = reader.read(&mut piece)?;
            if n == 0 {
                break;
            }
            if self.utf8 {
                written += n as u64;
                out(&piece[..n])?;
            } else {
                lossy.push(&piece[..n], out)?;
            }
        }
        lossy.finish(out)?;
        Ok(written + lossy.text_len())
    }

    /// The text's first `max_chars` characters once trimmed as `str::trim` trims, and whether
    /// the trimmed text goes on beyond them: what a message quotes of a body. Reads no further
    /// than needed, but to the end when only whitespace may follow.
    ///
    /// # Errors
    /// Reading the file.
    pub fn trimmed_head(&self, max_chars: usize) -> io::Result<(String, bool)> {
        let mut head = Head::new(max_chars);
        let mut piece = vec![0u8; SPOOL_PIECE];
        let mut reader = self.reader();
        let mut lossy = Utf8Lossy::default();
        // `Head::feed` says "done" through this error kind, to stop the decoder early.
        let mut feed = |text: &[u8]| head.feed(text);
        let read = loop {
            let n = match reader.read(&mut piece) {
                Ok(0) => break lossy.finish(&mut feed),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if let Err(e) = lossy.push(&piece[..n], &mut feed) {
                break Err(e);
            }
        };
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted && head.more => {}
            Err(e) => return Err(e),
        }
        Ok((head.text, head.more))
    }
}

/// The head of a text being trimmed (see [`Spooled::trimmed_head`]).
struct Head {
    max: usize,
    text: String,
    chars: usize,
    started: bool,
    /// Whitespace after the last character kept: part of the head only if more text follows.
    pending: String,
    more: bool,
}

impl Head {
    fn new(max: usize) -> Head {
        Head {
            max,
            text: String::new(),
            chars: 0,
            started: false,
            pending: String::new(),
            more: false,
        }
    }

    /// Takes valid UTF-8; an `Interrupted` error once the answer is known.
    fn feed(&mut self, text: &[u8]) -> io::Result<()> {
        let text =
            std::str::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for ch in text.chars() {
            if ch.is_whitespace() {
                if self.started && self.chars < self.max {
                    self.pending.push(ch);
                }
                continue;
            }
            self.started = true;
            for p in self.pending.chars() {
                if self.chars == self.max {
                    break;
                }
                self.text.push(p);
                self.chars += 1;
            }
            self.pending.clear();
            if self.chars == self.max {
                self.more = true;
                return Err(io::Error::new(io::ErrorKind::Interrupted, "head read"));
            }
            self.text.push(ch);
            self.chars += 1;
        }
        Ok(())
    }
}

/// Reads a [`Spooled`] file with positional reads.
#[derive(Debug)]
pub struct SpoolReader<'a> {
    file: &'a File,
    at: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Creates a spool file in `dir`: mode 0600, with a name no other file has (`O_EXCL`, so a
/// planted link is never followed), unlinked before it is returned.
///
/// # Errors
/// The file cannot be created, or cannot be unlinked (it is then removed as far as possible).
pub fn create_spool_file(dir: &Path) -> io::Result<File> {
    let mut tries = 0;
    loop {
        let path = dir.join(format!(
            "runner-answer-{}-{:016x}.spool",
            std::process::id(),
            fastrand::u64(..)
        ));
        match crate::util::fs::create_new_private(&path) {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// A spool file holding `bytes`, as reading an answer makes one (tests of the readers).
///
/// # Panics
/// When the file cannot be made.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn spooled_for_test(bytes: &[u8]) -> Spooled {
    use std::io::Write;
    let mut file = create_spool_file(&std::env::temp_dir()).expect("spool file");
    file.write_all(bytes).expect("write");
    let mut lossy = Utf8Lossy::default();
    let mut count = |_: &[u8]| Ok(());
    lossy.push(bytes, &mut count).expect("count");
    lossy.finish(&mut count).expect("count");
    Spooled::new(
        file,
        bytes.len() as u64,
        lossy.text_len(),
        !lossy.replaced(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn leaked(limit: usize, per_answer: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(limit, per_answer)))
    }

    #[test]
    fn a_share_takes_while_the_budget_lasts_and_gives_back_when_dropped() {
        let budget = leaked(100, 100);
        let mut a = Held::new(budget);
        let mut b = Held::new(budget);
        assert!(a.grow(60));
        assert!(!b.grow(41), "past the limit: nothing taken");
        assert_eq!(budget.held(), 60);
        assert!(b.grow(40));
        assert_eq!(budget.held(), 100);
        a.shrink(10);
        assert_eq!((a.bytes(), budget.held()), (50, 90));
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
        let mut none = Held::none();
        assert!(!none.grow(1), "a share of no budget takes nothing");
    }

    #[test]
    fn many_shares_on_many_threads_never_pass_the_limit() {
        let budget = leaked(1000, 1000);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        let mut held = Held::new(budget);
                        if held.grow(300) {
                            assert!(budget.held() <= 1000);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.held(), 0);
    }

    fn lossy_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Utf8Lossy) {
        let mut out = Vec::new();
        let mut lossy = Utf8Lossy::default();
        let mut sink = |piece: &[u8]| {
            out.extend_from_slice(piece);
            Ok(())
        };
        let mut from = 0;
        for &cut in cuts {
            let cut = cut.clamp(from, bytes.len());
            lossy.push(&bytes[from..cut], &mut sink).expect("push");
            from = cut;
        }
        lossy.push(&bytes[from..], &mut sink).expect("push");
        lossy.finish(&mut sink).expect("finish");
        (out, lossy)
    }

    #[test]
    fn a_sequence_cut_between_pieces_is_joined_and_a_bad_one_replaced() {
        let text = "a€b😀c".as_bytes();
        for cut in 0..=text.len() {
            let (out, lossy) = lossy_in_pieces(text, &[cut]);
            assert_eq!(out, text, "cut at {cut}");
            assert!(!lossy.replaced());
        }
        let bad = [b'a', 0xE2, 0x82, b'b', 0xED, 0xA0, 0x80, 0xF0, 0x9F];
        for cut in 0..=bad.len() {
            let (out, lossy) = lossy_in_pieces(&bad, &[cut]);
            assert_eq!(
                out,
                String::from_utf8_lossy(&bad).as_bytes(),
                "cut at {cut}"
            );
            assert!(lossy.replaced());
            assert_eq!(lossy.text_len(), out.len() as u64);
        }
    }

    proptest! {
        #[test]
        fn lossy_in_pieces_is_from_utf8_lossy(
            bytes in prop::collection::vec(prop_oneof![
                any::<u8>(),
                Just(0xE2u8), Just(0x82), Just(0xAC), Just(0xF0), Just(0x9F), Just(0x98),
                Just(b'a'),
            ], 0..64),
            cuts in prop::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (out, lossy) = lossy_in_pieces(&bytes, &cuts);
            let expected = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(&out, expected.as_bytes());
            prop_assert_eq!(lossy.text_len(), expected.len() as u64);
            prop_assert_eq!(lossy.replaced(), std::str::from_utf8(&bytes).is_err());
        }
    }

    fn spooled(bytes: &[u8]) -> Spooled {
        let spooled = spooled_for_test(bytes);
        let (text, _) = lossy_in_pieces(bytes, &[]);
        assert_eq!(text.len() as u64, spooled.text_len());
        spooled
    }

    #[test]
    fn a_spool_file_is_private_and_gone_from_its_directory_at_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let file = create_spool_file(dir.path()).expect("spool file");
        let mode = file.metadata().expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn the_journal_text_of_a_spooled_body_is_its_lossy_text() {
        let mut body = b"{\"a\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'x', SPOOL_PIECE - 7));
        body.extend_from_slice(&[0xE2, 0x82, 0xAC, 0xFF, b'"', b'}']);
        for bytes in [&body[..], b"plain", b""] {
            let spooled = spooled(bytes);
            let mut text = Vec::new();
            let n = spooled
                .copy_text(&mut |piece| {
                    text.extend_from_slice(piece);
                    Ok(())
                })
                .expect("copy");
            assert_eq!(text, String::from_utf8_lossy(bytes).as_bytes());
            assert_eq!(n, spooled.text_len());
        }
    }

    #[rstest::rstest]
    #[case("", 5)]
    #[case("   ", 5)]
    #[case("  abc  ", 5)]
    #[case("  abc  ", 3)]
    #[case("  abc d ", 3)]
    #[case("abcdef", 3)]
    #[case("ab \u{a0}\u{3000} cd", 3)]
    #[case("ab \u{a0}\u{3000} cd", 4)]
    #[case("\n\t héllo wörld \n", 7)]
    fn the_head_of_a_spooled_text_is_that_of_the_trimmed_text(
        #[case] text: &str,
        #[case] max: usize,
    ) {
        let trimmed = text.trim();
        let expected = match trimmed.char_indices().nth(max) {
            Some((cut, _)) => (trimmed[..cut].to_owned(), true),
            None => (trimmed.to_owned(), false),
        };
        assert_eq!(
            spooled(text.as_bytes()).trimmed_head(max).expect("head"),
            expected,
            "{text:?}"
        );
    }

    #[test]
    fn the_head_skips_whitespace_across_pieces() {
        let mut body = vec![b' '; 3 * SPOOL_PIECE + 5];
        body.extend_from_slice(b"<html>");
        body.extend(vec![b'\n'; SPOOL_PIECE]);
        assert_eq!(
            spooled(&body).trimmed_head(200).expect("head"),
            ("<html>".to_owned(), false)
        );
        body.push(b'x');
        assert_eq!(
            spooled(&body).trimmed_head(3).expect("head"),
            ("<ht".to_owned(), true)
        );
    }
}
