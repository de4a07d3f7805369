//! Reading an answer's body within a size limit, and within the process's memory budget.
//!
//! A server (or anything answering at the base URL: a captive portal, a misrouted download)
//! chooses how many bytes it sends. Reading the body whole, as `Response::bytes` does, lets it
//! choose how much memory each worker holds. [`read_capped`] reads chunk by chunk and gives up
//! as soon as the limit is passed, so a worker never holds more than the limit plus one chunk.
//!
//! An attempt's answer is read by [`read_answer`], which also keeps to the process's answer
//! budget ([`crate::util::spool`]): the body grows in memory while the budget gives it room (and
//! while it is under [`Budget::per_answer`]); past that, what was read and all that follows go
//! to a private spool file, with the key redacted on the way. What the runner reads in a spooled
//! body (usage, the error object) is read from the file on a blocking thread, once it is
//! complete ([`Examined`]), so no worker of the runtime parses hundreds of megabytes.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::classify::ApiError;
use super::redact::{Redactor, StreamRedactor};
use super::response::{SuccessBody, read_success_in};
use super::source::BodySource;
use crate::util::spool::{Budget, Held, Spooled, Utf8Lossy, create_spool_file};

/// A body limit generous enough for every answer the OpenAI API gives: the largest are
/// embeddings of 2,048 inputs at 3,072 dimensions as JSON floats (about 150 MB pretty-printed)
/// and several `b64_json` images (a few MB each). Bodies past the answer budget are spooled to
/// disk, so this bounds disk use per request more than memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The most memory reserved up front from an announced `Content-Length`: the header is the
/// server's word, and a lie must not cost a large allocation. Larger bodies grow as they come.
const PREALLOCATE_LIMIT: usize = 1024 * 1024;

/// The smallest block a body in memory grows by, so a body of many small chunks does not take
/// from the budget at each one.
const MIN_GROWTH: usize = 8 * 1024;

/// Bytes a spooling body gathers before each write to its file: few writes, little memory (the
/// file's own buffer holds as much again while a write is under way).
const SPOOL_BUFFER: usize = 256 * 1024;

/// Characters of an unreadable body quoted in its error message.
pub const HEAD_CHARS: usize = 200;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The server announced or sent more than the limit; reading stopped there and the
    /// connection was dropped.
    #[error(
        "the answer's body is at least {at_least} bytes, over the {cap}-byte limit: check that the base URL points at an OpenAI-compatible API, or raise the limit if answers this large are expected"
    )]
    TooLarge {
        /// The limit, in bytes.
        cap: usize,
        /// The announced `Content-Length`, or the bytes received when reading stopped.
        at_least: u64,
    },
    /// The connection failed or timed out before the body ended. The status line had
    /// arrived, so the request was sent: its outcome is unknown.
    #[error("reading the answer's body failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The body was too large for the memory budget and could not be spooled (or read back).
    #[error(
        "the answer's body did not fit the memory budget and spooling it to {} failed: {source}: make room there, or point TMPDIR at a disk with room",
        dir.display()
    )]
    Spool {
        /// Where spool files go.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl BodyError {
    /// Whether the body stopped because the request's timeout ran out.
    pub fn is_timeout(&self) -> bool {
        match self {
            BodyError::TooLarge { .. } | BodyError::Spool { .. } => false,
            BodyError::Transport(e) => e.is_timeout(),
        }
    }
}

/// Reads `response`'s body, at most `cap` bytes of it.
///
/// A `Content-Length` above `cap` fails at once, before any of the body is read. Otherwise the
/// body is read chunk by chunk and reading stops as soon as the total passes `cap`. A body of
/// exactly `cap` bytes is accepted.
///
/// # Errors
/// [`BodyError::TooLarge`] when the body is, or is announced to be, longer than `cap`;
/// [`BodyError::Transport`] when the connection fails, is cut or times out mid-body.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    let announced = announced_within(&response, cap)?;
    let reserve = announced.unwrap_or(0).min(PREALLOCATE_LIMIT);
    let mut body = Vec::with_capacity(reserve);
    while let Some(chunk) = response.chunk().await? {
        let total = body.len().saturating_add(chunk.len());
        if total > cap {
            return Err(too_large(cap, total));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The announced `Content-Length` as a size, or [`BodyError::TooLarge`] when it is over `cap`.
fn announced_within(response: &reqwest::Response, cap: usize) -> Result<Option<usize>, BodyError> {
    let cap_bytes = u64::try_from(cap).unwrap_or(u64::MAX);
    match response.content_length() {
        Some(length) if length > cap_bytes => Err(BodyError::TooLarge {
            cap,
            at_least: length,
        }),
        Some(length) => Ok(usize::try_from(length).ok()),
        None => Ok(None),
    }
}

fn too_large(cap: usize, total: usize) -> BodyError {
    BodyError::TooLarge {
        cap,
        at_least: u64::try_from(total).unwrap_or(u64::MAX),
    }
}

/// An answer's body, read within its limit and the budget.
#[derive(Debug)]
pub enum Body {
    /// In memory, with the share of the budget it holds.
    Memory {
        /// The bytes as received.
        bytes: Vec<u8>,
        /// Its share of the budget, given back when the body (or the text it becomes) is
        /// dropped.
        held: Held,
    },
    /// In a spool file (the budget could not hold it), with what was read in it.
    Spooled(SpooledBody),
}

impl Body {
    /// The bytes of a body in memory; `None` when it is spooled.
    pub fn in_memory(&self) -> Option<&[u8]> {
        match self {
            Body::Memory { bytes, .. } => Some(bytes),
            Body::Spooled(_) => None,
        }
    }
}

impl From<Vec<u8>> for Body {
    /// A body that was never read from a connection (a batch's output line, tests): in memory,
    /// holding no budget.
    fn from(bytes: Vec<u8>) -> Body {
        Body::Memory {
            bytes,
            held: Held::none(),
        }
    }
}

/// A spooled body: its file (with the key redacted already) and what the runner read in it.
#[derive(Debug)]
pub struct SpooledBody {
    /// The file.
    pub spooled: Spooled,
    /// What was read in it, for its status.
    pub examined: Examined,
}

/// What the runner reads in an answer's (plain, not streamed) body, by its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Examined {
    /// A 2xx: what [`read_success_in`] makes of it, and for a body that is not a JSON object
    /// its first [`HEAD_CHARS`] characters, trimmed (and whether more follow).
    Success(SuccessBody, Option<(String, bool)>),
    /// Any other status: the error it carries ([`ApiError::parse_in`]).
    Error(ApiError),
}

/// Reads what the runner needs of a body answered with `status`.
///
/// # Errors
/// The body could not be read (a spool file's I/O error).
pub fn examine<S: BodySource + ?Sized>(status: u16, body: &S) -> io::Result<Examined> {
    if !(200..300).contains(&status) {
        return ApiError::parse_in(body).map(Examined::Error);
    }
    Ok(match read_success_in(body)? {
        SuccessBody::Invalid => {
            Examined::Success(SuccessBody::Invalid, Some(body.trimmed_head(HEAD_CHARS)?))
        }
        verdict => Examined::Success(verdict, None),
    })
}

/// Where and how a body that outgrows the budget is spooled.
#[derive(Clone, Copy, Debug)]
pub struct Spooling<'a> {
    /// The budget bodies in memory take from.
    pub budget: &'static Budget,
    /// Where spool files are created.
    pub dir: &'a Path,
    /// Replaces the key in what is spooled (what is kept in memory is redacted later, as text).
    pub redactor: Option<&'a Redactor>,
}

/// Reads `response`'s body, at most `cap` bytes of it, as [`read_capped`] does: in memory while
/// `spooling.budget` gives it room, else into a spool file (see the module docs). A spooled body
/// is examined on a blocking thread once complete.
///
/// # Errors
/// As [`read_capped`], and [`BodyError::Spool`] when the body cannot be spooled or read back.
pub async fn read_answer(
    mut response: reqwest::Response,
    cap: usize,
    spooling: Spooling<'_>,
) -> Result<Body, BodyError> {
    let status = response.status().as_u16();
    let announced = announced_within(&response, cap)?;
    let budget = spooling.budget;
    let mut held = Held::new(budget);
    let mut bytes = Vec::new();
    let mut spool = None;
    match announced {
        Some(length) if length > budget.per_answer() => {
            spool = Some(Spooler::create(spooling).await?);
        }
        Some(length) => {
            let reserve = length.min(PREALLOCATE_LIMIT);
            if held.grow(reserve) {
                bytes.reserve_exact(reserve);
            }
        }
        None => {}
    }
    let mut total = 0usize;
    while let Some(chunk) = response.chunk().await? {
        total = total.saturating_add(chunk.len());
        if total > cap {
            return Err(too_large(cap, total));
        }
        if let Some(spool) = &mut spool {
            spool.push(&chunk).await?;
            continue;
        }
        if grow(&mut bytes, &mut held, chunk.len()) {
            bytes.extend_from_slice(&chunk);
            continue;
        }
        // Out of room: what was read so far, then the rest, go to a file.
        let mut spooler = Spooler::create(spooling).await?;
        spooler.push(&bytes).await?;
        bytes = Vec::new();
        held.shrink(held.bytes());
        spooler.push(&chunk).await?;
        spool = Some(spooler);
    }
    let Some(spooler) = spool else {
        return Ok(Body::Memory { bytes, held });
    };
    let dir = spooling.dir.to_owned();
    let spooled = spooler.finish().await?;
    let examined = tokio::task::spawn_blocking(move || {
        let examined = examine(status, &spooled);
        (spooled, examined)
    })
    .await;
    match examined {
        Ok((spooled, Ok(examined))) => Ok(Body::Spooled(SpooledBody { spooled, examined })),
        Ok((_, Err(source))) => Err(BodyError::Spool { dir, source }),
        Err(joined) => Err(BodyError::Spool {
            dir,
            source: io::Error::other(joined),
        }),
    }
}

/// Makes room in `bytes` for `more`, taking it from the budget; `false` when the budget (or the
/// per-answer limit) says no. The new block is taken before the old one is given back, so the
/// budget counts the moment both exist.
fn grow(bytes: &mut Vec<u8>, held: &mut Held, more: usize) -> bool {
    let needed = bytes.len().saturating_add(more);
    if needed <= bytes.capacity() {
        return true;
    }
    let Some(per_answer) = held.budget().map(Budget::per_answer) else {
        return false;
    };
    if needed > per_answer {
        return false;
    }
    let capacity = needed
        .max(bytes.capacity().saturating_mul(2))
        .max(MIN_GROWTH)
        .min(per_answer);
    if !held.grow(capacity) {
        return false;
    }
    let old = held.bytes() - capacity;
    let mut grown = Vec::with_capacity(capacity);
    grown.extend_from_slice(bytes);
    *bytes = grown;
    held.shrink(old);
    true
}

/// A body being written to its spool file: redacted, counted as UTF-8 text, gathered into
/// [`SPOOL_BUFFER`]-sized writes.
struct Spooler<'a> {
    file: tokio::fs::File,
    dir: &'a Path,
    redactor: Option<StreamRedactor<'a>>,
    pending: Vec<u8>,
    lossy: Utf8Lossy,
    len: u64,
}

impl<'a> Spooler<'a> {
    async fn create(spooling: Spooling<'a>) -> Result<Spooler<'a>, BodyError> {
        let dir = spooling.dir;
        let owned = dir.to_owned();
        let created = tokio::task::spawn_blocking(move || create_spool_file(&owned))
            .await
            .unwrap_or_else(|joined| Err(io::Error::other(joined)));
        let file = created.map_err(|source| BodyError::Spool {
            dir: dir.to_owned(),
            source,
        })?;
        let mut file = tokio::fs::File::from_std(file);
        file.set_max_buf_size(SPOOL_BUFFER);
        Ok(Spooler {
            file,
            dir,
            redactor: spooling.redactor.map(Redactor::stream),
            pending: Vec::new(),
            lossy: Utf8Lossy::default(),
            len: 0,
        })
    }

    async fn push(&mut self, piece: &[u8]) -> Result<(), BodyError> {
        let Spooler {
            redactor,
            pending,
            lossy,
            len,
            ..
        } = self;
        let mut take = |piece: &[u8]| {
            // Only counted: the text itself is made when it is journaled.
            let _ = lossy.push(piece, &mut |_| Ok(()));
            pending.extend_from_slice(piece);
            *len += piece.len() as u64;
        };
        match redactor {
            Some(redactor) => redactor.push(piece, &mut take),
            None => take(piece),
        }
        if self.pending.len() >= SPOOL_BUFFER {
            self.write_pending().await?;
        }
        Ok(())
    }

    async fn write_pending(&mut self) -> Result<(), BodyError> {
        let written = self.file.write_all(&self.pending).await;
        self.pending.clear();
        written.map_err(|source| self.error(source))
    }

    async fn finish(mut self) -> Result<Spooled, BodyError> {
        let Spooler {
            redactor,
            pending,
            lossy,
            len,
            ..
        } = &mut self;
        if let Some(redactor) = redactor {
            redactor.finish(&mut |piece: &[u8]| {
                let _ = lossy.push(piece, &mut |_| Ok(()));
                pending.extend_from_slice(piece);
                *len += piece.len() as u64;
            });
        }
        let _ = self.lossy.finish(&mut |_| Ok(()));
        self.write_pending().await?;
        if let Err(source) = self.file.flush().await {
            return Err(self.error(source));
        }
        let file = self.file.into_std().await;
        Ok(Spooled::new(
            file,
            self.len,
            self.lossy.text_len(),
            !self.lossy.replaced(),
        ))
    }

    fn error(&self, source: io::Error) -> BodyError {
        BodyError::Spool {
            dir: self.dir.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use rstest::rstest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;
    use crate::http::redact::Redactor;

    /// Every test ends well within this; a read that hangs fails instead of stalling the suite.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A one-connection HTTP server on 127.0.0.1:0: it reads the request head, then hands the
    /// connection to `answer`, which writes a hand-made response. Errors writing are expected
    /// (the client hangs up on purpose) and ignored.
    async fn serve<F, Fut>(answer: F) -> (SocketAddr, JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = answer(stream).await;
        });
        (addr, task)
    }

    fn client(request_timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(request_timeout)
            .build()
            .expect("client")
    }

    /// GETs the server's one answer and reads it with `cap`, within [`DEADLINE`].
    async fn fetch(
        addr: SocketAddr,
        cap: usize,
        request_timeout: Duration,
    ) -> Result<Vec<u8>, BodyError> {
        let read = async {
            let response = client(request_timeout)
                .get(format!("http://{addr}/"))
                .send()
                .await
                .expect("the head arrives");
            read_capped(response, cap).await
        };
        timeout(DEADLINE, read).await.expect("reading ends in time")
    }

    /// Writes `body` in one or more chunks of chunked transfer encoding, then the last chunk.
    async fn write_chunked(
        stream: &mut TcpStream,
        body: &[u8],
        piece: usize,
    ) -> std::io::Result<()> {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        for part in body.chunks(piece) {
            stream
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await?;
            stream.write_all(part).await?;
            stream.write_all(b"\r\n").await?;
        }
        stream.write_all(b"0\r\n\r\n").await?;
        stream.flush().await
    }

    async fn write_with_length(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await
    }

    /// A server that answers one request with `body`, framed as `framing`.
    async fn serve_framed(body: Vec<u8>, framing: Framing) -> (SocketAddr, JoinHandle<()>) {
        serve(move |mut stream| async move {
            match framing {
                Framing::Length => write_with_length(&mut stream, &body).await,
                Framing::Chunked(piece) => write_chunked(&mut stream, &body, piece).await,
            }
        })
        .await
    }

    #[derive(Clone, Copy, Debug)]
    enum Framing {
        Length,
        /// Chunked, in pieces of this many bytes.
        Chunked(usize),
    }

    const CAP: usize = 1024;

    #[rstest]
    #[case::small(Framing::Length, 5, Some(5))]
    #[case::small_chunked(Framing::Chunked(2), 5, Some(5))]
    #[case::empty(Framing::Length, 0, Some(0))]
    #[case::empty_chunked(Framing::Chunked(1), 0, Some(0))]
    #[case::at_the_cap(Framing::Length, CAP, Some(CAP))]
    #[case::at_the_cap_chunked(Framing::Chunked(300), CAP, Some(CAP))]
    #[case::one_over(Framing::Length, CAP + 1, None)]
    #[case::one_over_chunked(Framing::Chunked(300), CAP + 1, None)]
    #[case::one_over_in_one_chunk(Framing::Chunked(CAP + 1), CAP + 1, None)]
    #[tokio::test]
    async fn bodies_up_to_the_cap_are_read_and_longer_ones_refused(
        #[case] framing: Framing,
        #[case] size: usize,
        #[case] expected: Option<usize>,
    ) {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (addr, server) = serve_framed(body.clone(), framing).await;
        let result = fetch(addr, CAP, DEADLINE).await;
        match (expected, result) {
            (Some(len), Ok(read)) => {
                assert_eq!(read.len(), len);
                assert_eq!(read, body);
            }
            (None, Err(BodyError::TooLarge { cap, at_least })) => {
                assert_eq!(cap, CAP);
                assert_eq!(at_least, (CAP + 1) as u64);
            }
            (expected, result) => panic!("expected {expected:?}, got {result:?}"),
        }
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
    }

    /// (c): 50 MB chunked with no Content-Length. Reading stops at the cap, long before the
    /// server could have sent it all, and never holds more than the cap and one chunk.
    #[tokio::test]
    async fn an_endless_chunked_body_stops_at_the_cap() {
        const TOTAL: u64 = 50 * 1024 * 1024;
        const PIECE: usize = 64 * 1024;
        const BIG_CAP: usize = 256 * 1024;
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        let (addr, server) = serve(move |mut stream| async move {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let piece = vec![b'x'; PIECE];
            while counter.load(Ordering::Relaxed) < TOTAL {
                stream
                    .write_all(format!("{PIECE:x}\r\n").as_bytes())
                    .await?;
                stream.write_all(&piece).await?;
                stream.write_all(b"\r\n").await?;
                counter.fetch_add(PIECE as u64, Ordering::Relaxed);
            }
            stream.write_all(b"0\r\n\r\n").await
        })
        .await;
        let started = std::time::Instant::now();
        let err = fetch(addr, BIG_CAP, DEADLINE)
            .await
            .expect_err("over the cap");
        let elapsed = started.elapsed();
        let BodyError::TooLarge { cap, at_least } = err else {
            panic!("expected TooLarge, got {err:?}");
        };
        assert_eq!(cap, BIG_CAP);
        assert!(at_least > BIG_CAP as u64);
        assert!(at_least <= (BIG_CAP + PIECE) as u64, "{at_least}");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        // The hang-up stops the server: it never got to send the whole body.
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
        assert!(written.load(Ordering::Relaxed) < TOTAL);
    }

    /// (d): a Content-Length over the cap fails before any of the body is read: this server
    /// sends none and holds the connection, so reading it would hit the deadline.
    #[tokio::test]
    async fn an_announced_length_over_the_cap_fails_at_once() {
        let (addr, server) = serve(|mut stream| async move {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50000000\r\n\r\n")
                .await?;
            // Wait for the client to hang up.
            let mut buf = [0u8; 16];
            while stream.read(&mut buf).await? > 0 {}
            Ok(())
        })
        .await;
        let started = std::time::Instant::now();
        let err = fetch(addr, CAP, DEADLINE).await.expect_err("over the cap");
        assert!(
            matches!(
                err,
                BodyError::TooLarge {
                    cap: CAP,
                    at_least: 50_000_000
                }
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.to_string().contains("over the 1024-byte limit"),
            "{err}"
        );
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
    }

    /// (e): the connection closes before the announced or chunked body ends.
    #[rstest]
    #[case::short_of_its_length(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789".as_slice())]
    #[case::without_the_last_chunk(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n".as_slice())]
    #[case::inside_a_chunk(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100\r\n0123".as_slice())]
    #[case::bad_chunk_size(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".as_slice())]
    #[tokio::test]
    async fn a_body_cut_midway_is_a_transport_error(#[case] answer: &'static [u8]) {
        let (addr, server) = serve(move |mut stream| async move {
            stream.write_all(answer).await?;
            stream.shutdown().await
        })
        .await;
        let err = fetch(addr, CAP, DEADLINE).await.expect_err("cut");
        assert!(matches!(err, BodyError::Transport(_)), "{err:?}");
        assert!(!err.is_timeout());
        assert!(
            err.to_string()
                .starts_with("reading the answer's body failed"),
            "{err}"
        );
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
    }

    const KEY: &str = "sk-proj-abcdefghij0123456789wxyz";

    fn budget(limit: usize, per_answer: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(limit, per_answer)))
    }

    /// GETs the server's one answer and reads it with [`read_answer`], spooling into a scratch
    /// directory, which must be empty afterwards.
    async fn fetch_answer(
        addr: SocketAddr,
        cap: usize,
        budget: &'static Budget,
        redactor: Option<&Redactor>,
    ) -> Result<Body, BodyError> {
        let dir = tempfile::tempdir().expect("dir");
        let read = async {
            let response = client(DEADLINE)
                .get(format!("http://{addr}/"))
                .send()
                .await
                .expect("the head arrives");
            let spooling = Spooling {
                budget,
                dir: dir.path(),
                redactor,
            };
            read_answer(response, cap, spooling).await
        };
        let body = timeout(DEADLINE, read).await.expect("reading ends in time");
        let left = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(left, 0, "no spool file is ever left in its directory");
        body
    }

    fn spooled_bytes(body: &Body) -> Vec<u8> {
        let Body::Spooled(spooled) = body else {
            panic!("expected a spooled body, got {body:?}");
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut spooled.spooled.reader(), &mut bytes).expect("read");
        bytes
    }

    fn chat_answer(padding: usize) -> Vec<u8> {
        let mut body = br#"{"model":"m","choices":[{"message":{"content":"hi"}}]"#.to_vec();
        body.extend(std::iter::repeat_n(b' ', padding));
        body.extend_from_slice(br#","usage":{"prompt_tokens":1,"total_tokens":3}}"#);
        body
    }

    #[tokio::test]
    async fn a_body_within_the_budget_stays_in_memory_and_gives_its_share_back() {
        let budget = budget(64 * 1024, 64 * 1024);
        let body = chat_answer(10_000);
        let sent = body.clone();
        let (addr, server) =
            serve(move |mut stream| async move { write_chunked(&mut stream, &sent, 999).await })
                .await;
        let read = fetch_answer(addr, CAP * 1024, budget, None)
            .await
            .expect("read");
        let Body::Memory { bytes, held } = &read else {
            panic!("expected memory, got {read:?}");
        };
        assert_eq!(bytes, &body);
        assert!(held.bytes() >= body.len(), "{}", held.bytes());
        assert_eq!(budget.held(), held.bytes());
        drop(read);
        assert_eq!(budget.held(), 0, "dropped: the share is given back");
        server.await.expect("server");
    }

    #[rstest]
    #[case::chunked(Framing::Chunked(1000))]
    #[case::with_length(Framing::Length)]
    #[tokio::test]
    async fn a_body_past_the_budget_is_spooled_whole_and_examined_from_its_file(
        #[case] framing: Framing,
    ) {
        // Room for the first 4 KiB only: the body starts in memory, then spills.
        let budget = budget(4 * 1024, 1024 * 1024);
        let body = chat_answer(200_000);
        let (addr, server) = serve_framed(body.clone(), framing).await;
        let read = fetch_answer(addr, 1024 * 1024, budget, None)
            .await
            .expect("read");
        assert_eq!(spooled_bytes(&read), body);
        assert_eq!(budget.held(), 0, "a spooled body holds no budget");
        let Body::Spooled(spooled) = &read else {
            unreachable!()
        };
        assert_eq!(spooled.spooled.len(), body.len() as u64);
        assert_eq!(spooled.spooled.text_len(), body.len() as u64);
        let Examined::Success(SuccessBody::Answer(usage), None) = &spooled.examined else {
            panic!("expected an answer, got {:?}", spooled.examined);
        };
        assert_eq!(
            (usage.model.as_deref(), usage.total_tokens),
            (Some("m"), Some(3))
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_body_announced_past_the_per_answer_limit_is_spooled_from_its_first_byte() {
        let budget = budget(1024 * 1024, 1024);
        let body = chat_answer(5_000);
        let sent = body.clone();
        let (addr, server) =
            serve(move |mut stream| async move { write_with_length(&mut stream, &sent).await })
                .await;
        let read = fetch_answer(addr, 1024 * 1024, budget, None)
            .await
            .expect("read");
        assert_eq!(spooled_bytes(&read), body);
        assert_eq!(budget.held(), 0);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_key_cut_across_chunks_is_redacted_in_the_spool_file() {
        let key = crate::http::client::ApiKey::new(KEY);
        let redactor = Redactor::new(&key).expect("a key");
        let budget = budget(16, 1024);
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. {}{KEY}"}}}}"#,
            "x".repeat(100)
        )
        .into_bytes();
        let sent = body.clone();
        let (addr, server) =
            serve(move |mut stream| async move { write_chunked(&mut stream, &sent, 7).await })
                .await;
        let read = fetch_answer(addr, 1024 * 1024, budget, Some(&redactor))
            .await
            .expect("read");
        let expected = redactor.replaced(&body).expect("found");
        assert_eq!(spooled_bytes(&read), expected);
        assert!(!String::from_utf8_lossy(&expected).contains(KEY));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_spooling_body_that_passes_the_cap_stops_and_leaves_no_file() {
        let budget = budget(1024, 1024);
        let body = vec![b' '; 64 * 1024];
        let sent = body.clone();
        let (addr, server) =
            serve(move |mut stream| async move { write_chunked(&mut stream, &sent, 4096).await })
                .await;
        let err = fetch_answer(addr, 32 * 1024, budget, None)
            .await
            .expect_err("over the cap");
        assert!(
            matches!(err, BodyError::TooLarge { cap, .. } if cap == 32 * 1024),
            "{err:?}"
        );
        assert_eq!(budget.held(), 0);
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
    }

    /// A body that stalls past the request's timeout is a transport error that says so.
    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (addr, server) = serve(|mut stream| async move {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
                .await?;
            let mut buf = [0u8; 16];
            while stream.read(&mut buf).await? > 0 {}
            Ok(())
        })
        .await;
        let err = fetch(addr, CAP, Duration::from_millis(300))
            .await
            .expect_err("stalled");
        assert!(matches!(err, BodyError::Transport(_)), "{err:?}");
        assert!(err.is_timeout(), "{err:?}");
        timeout(DEADLINE, server)
            .await
            .expect("server ends")
            .expect("server task");
    }
}
