//! Reading an answer's body within a size limit.
//!
//! A server (or anything answering at the base URL: a captive portal, a misrouted download)
//! chooses how many bytes it sends. Reading the body whole, as `Response::bytes` does, lets it
//! choose how much memory each worker holds. [`read_capped`] reads chunk by chunk and gives up
//! as soon as the limit is passed, so a worker never holds more than the limit plus one chunk.

/// A body limit generous enough for every answer the OpenAI API gives: the largest are
/// embeddings of 2,048 inputs at 3,072 dimensions as JSON floats (about 150 MB pretty-printed)
/// and several `b64_json` images (a few MB each). Memory per worker is bounded by this, so a
/// job with many workers may want it lower.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The most memory reserved up front from an announced `Content-Length`: the header is the
/// server's word, and a lie must not cost a large allocation. Larger bodies grow as they come.
const PREALLOCATE_LIMIT: usize = 1024 * 1024;

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
}

impl BodyError {
    /// Whether the body stopped because the request's timeout ran out.
    pub fn is_timeout(&self) -> bool {
        match self {
            BodyError::TooLarge { .. } => false,
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
    let cap_bytes = u64::try_from(cap).unwrap_or(u64::MAX);
    let announced = response.content_length();
    if let Some(length) = announced
        && length > cap_bytes
    {
        return Err(BodyError::TooLarge {
            cap,
            at_least: length,
        });
    }
    let reserve = announced
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(0)
        .min(PREALLOCATE_LIMIT);
    let mut body = Vec::with_capacity(reserve);
    while let Some(chunk) = response.chunk().await? {
        let total = body.len().saturating_add(chunk.len());
        if total > cap {
            return Err(BodyError::TooLarge {
                cap,
                at_least: u64::try_from(total).unwrap_or(u64::MAX),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
        let sent = body.clone();
        let (addr, server) = serve(move |mut stream| async move {
            match framing {
                Framing::Length => write_with_length(&mut stream, &sent).await,
                Framing::Chunked(piece) => write_chunked(&mut stream, &sent, piece).await,
            }
        })
        .await;
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
