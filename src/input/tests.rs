//! Unit tests of the input reader.
use super::jsonl::scan_custom_id;
use super::*;
use rstest::rstest;
use serde_json::Value;
use serde_json::json;
use std::io::Cursor;
use tokio_util::sync::CancellationToken;

fn options() -> InputOptions {
    InputOptions {
        endpoint: CHAT_ENDPOINT.into(),
        model: Some("gpt-4o-mini".into()),
        max_line_bytes: 1024,
        ..InputOptions::default()
    }
}

fn read(text: &[u8]) -> Vec<Result<Prompt, InputError>> {
    InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(text.to_vec())),
        options(),
    )
    .collect()
}

fn body(prompt: &Prompt) -> Value {
    serde_json::from_str(&prompt.body).expect("body is JSON")
}

#[test]
fn reads_plain_and_batch_lines() {
    let input = br#"{"custom_id":"a","metadata":{"x":1},"messages":[{"role":"user","content":"hi"}]}
{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"model":"text-embedding-3-small","input":"x"}}
{"prompt":"say hi"}
"#;
    let prompts: Vec<Prompt> = read(input).into_iter().map(|r| r.expect("valid")).collect();
    assert_eq!(prompts.len(), 3);
    assert_eq!(prompts[0].custom_id.as_deref(), Some("a"));
    assert_eq!(prompts[0].url, CHAT_ENDPOINT);
    assert_eq!(body(&prompts[0])["model"], "gpt-4o-mini");
    assert!(body(&prompts[0]).get("metadata").is_none());
    assert!(body(&prompts[0]).get("custom_id").is_none());
    assert_eq!(prompts[1].url, "/v1/embeddings");
    assert_eq!(body(&prompts[1])["model"], "text-embedding-3-small");
    assert_eq!(prompts[2].line, 3);
    assert_eq!(
        body(&prompts[2])["messages"],
        serde_json::json!([{"role":"user","content":"say hi"}])
    );
}

#[test]
fn skips_blank_lines_accepts_crlf_and_bom() {
    let input = b"\xEF\xBB\xBF{\"prompt\":\"a\"}\r\n\r\n   \n{\"prompt\":\"b\"}\r\n";
    let prompts: Vec<Prompt> = read(input).into_iter().map(|r| r.expect("valid")).collect();
    assert_eq!(prompts.iter().map(|p| p.line).collect::<Vec<_>>(), [1, 4]);
}

#[test]
fn key_is_stable_under_key_order() {
    let a = read(br#"{"model":"m","messages":[],"temperature":0}"#);
    let b = read(br#"{"temperature":0,"messages":[],"model":"m"}"#);
    let (a, b) = (a[0].as_ref().expect("valid"), b[0].as_ref().expect("valid"));
    assert_eq!(a.body_hash, b.body_hash);
    assert_eq!(a.derived_key(1), b.derived_key(1));
    assert_ne!(a.derived_key(1), a.derived_key(2));
}

#[rstest]
#[case::malformed(b"{\"prompt\": ", "in.jsonl:1: invalid JSON")]
#[case::not_object(b"[1,2]", "in.jsonl:1: expected a JSON object, found an array")]
#[case::no_method(br#"{"url":"/v1/chat/completions","body":{}}"#, "no \"method\"")]
#[case::patch(
    br#"{"method":"PATCH","url":"/v1/models","body":{}}"#,
    "method 'PATCH' is not supported: use POST, GET or DELETE"
)]
#[case::get_with_body(
    br#"{"method":"GET","url":"/v1/models","body":{"a":1}}"#,
    "a GET line sends no body"
)]
#[case::metadata_not_object(
    br#"{"method":"POST","url":"/v1/x","body":{},"metadata":"m"}"#,
    "metadata must be a JSON object, found a string"
)]
#[case::secret_line_header(
    br#"{"method":"POST","url":"/v1/x","body":{},"headers":{"Authorization":"Bearer k"}}"#,
    "in.jsonl:1: headers: header 'Authorization' carries the API key"
)]
#[case::bad_line_header_value(
    br#"{"method":"POST","url":"/v1/x","body":{},"headers":{"X-A":"a\u0007b"}}"#,
    "in.jsonl:1: headers: the value of header 'X-A' has characters"
)]
#[case::line_headers_not_strings(
    br#"{"method":"POST","url":"/v1/x","body":{},"headers":{"X-A":1}}"#,
    "\"headers\" must be a JSON object of strings"
)]
#[case::no_url(br#"{"method":"POST","body":{}}"#, "no \"url\"")]
#[case::no_body(
    br#"{"method":"POST","url":"/v1/x"}"#,
    "in.jsonl:1: batch line has no \"body\""
)]
#[case::body_not_object(
    br#"{"method":"POST","url":"/v1/x","body":"s"}"#,
    "body must be a JSON object"
)]
#[case::bad_custom_id(br#"{"custom_id":3,"prompt":"x"}"#, "custom_id must be a string")]
#[case::utf8(b"{\"prompt\":\"\xff\"}", "in.jsonl:1: line is not valid UTF-8")]
fn rejects_bad_lines(#[case] input: &[u8], #[case] expected: &str) {
    let results = read(input);
    let message = match &results[0] {
        Ok(p) => panic!("accepted {p:?}"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains(expected), "{message}");
}

#[test]
fn too_long_line_names_its_line() {
    let mut input = b"{\"prompt\":\"ok\"}\n".to_vec();
    input.extend(format!("{{\"prompt\":\"{}\"}}\n", "x".repeat(2000)).as_bytes());
    let results = read(&input);
    assert!(results[0].is_ok());
    let message = results[1].as_ref().expect_err("too long").to_string();
    assert!(
        message.starts_with("in.jsonl:2: line is longer than 1024 bytes"),
        "{message}"
    );
    assert_eq!(results.len(), 2);
}

#[test]
fn skipping_reads_past_invalid_and_over_long_lines() {
    let mut input = b"{\"prompt\":\"a\"}\n".to_vec();
    input.extend(
        format!(
            "{{\"custom_id\":\"long\",\"prompt\":\"{}\"}}\n",
            "x".repeat(5000)
        )
        .as_bytes(),
    );
    input.extend(b"{\"custom_id\":\"cut\",\"prompt\":\"trunc\n[1]\n{\"prompt\":\"b\"}\n");
    let mut reader = InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(input.clone())),
        options(),
    )
    .skip_invalid(true);
    let mut seen = Vec::new();
    while let Some(item) = reader.next() {
        seen.push(match item {
            Ok(prompt) => format!("ok {}", prompt.line),
            Err(e) => {
                assert!(e.is_invalid_line(), "{e}");
                format!(
                    "{} {} {:?}",
                    e.code(),
                    e.line().expect("line"),
                    reader.salvaged_custom_id()
                )
            }
        });
    }
    assert_eq!(
        seen,
        [
            "ok 1",
            "line_too_long 2 Some(\"long\")",
            "malformed_json 3 Some(\"cut\")",
            "invalid_request 4 None",
            "ok 5"
        ]
    );
    assert_eq!(
        reader.fingerprint(),
        blake3::hash(&input).to_hex().to_string(),
        "the skipped bytes are fingerprinted too"
    );
}

/// A 64 MiB line made on the fly, then one good line.
struct LongLine {
    left: usize,
    tail: Cursor<Vec<u8>>,
}

impl Read for LongLine {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return self.tail.read(buf);
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(b'x');
        self.left -= n;
        Ok(n)
    }
}

/// A Batch line's `url` goes out as written, or the line is refused: nothing the HTTP client
/// would encode, drop or resolve on the way.
#[rstest]
#[case::crlf("/v1/chat\r\nX-Evil: 1", "control character")]
#[case::space("/v1/chat completions", "space")]
#[case::non_ascii("/v1/chät/completions", "non-ASCII")]
#[case::fragment("/v1/chat/completions#x", "fragment")]
#[case::backslash("/v1\\chat\\completions", "backslash")]
#[case::climbs("/v1/../../admin", ". or .. segment")]
#[case::dot("/v1/./chat/completions", ". or .. segment")]
fn a_batch_url_that_would_go_out_changed_is_refused(#[case] url: &str, #[case] why: &str) {
    let line = json!({"custom_id": "a", "method": "POST", "url": url, "body": {"model": "m"}});
    let results = read(format!("{line}\n").as_bytes());
    let error = results[0].as_ref().expect_err("refused").to_string();
    assert!(error.starts_with("in.jsonl:1: "), "{error}");
    assert!(error.contains(why), "{error}");
    assert!(
        !error.contains('\r') && !error.contains('\n'),
        "shown escaped: {error}"
    );
}

#[rstest]
#[case::plain("/v1/chat/completions")]
#[case::query("/v1/chat/completions?api-version=2024-10-21&x=%20y")]
#[case::dots_in_a_name("/v1/files/file-abc.jsonl/content")]
#[case::dots_in_the_query("/v1/embeddings?next=../x")]
fn a_plain_batch_url_is_kept_as_written(#[case] url: &str) {
    let line = json!({"custom_id": "a", "method": "POST", "url": url, "body": {"model": "m"}});
    let results = read(format!("{line}\n").as_bytes());
    let prompt = results[0].as_ref().expect("accepted");
    assert_eq!(prompt.url, url);
}

/// `--max-line-bytes` (1024 here) counts a line's own bytes: not its end, not a first line's
/// byte order mark; one byte more is refused, however the line ends.
#[rstest]
#[case::at_the_limit_lf(1024, "\n", "", true)]
#[case::at_the_limit_crlf(1024, "\r\n", "", true)]
#[case::at_the_limit_last_line(1024, "", "", true)]
#[case::at_the_limit_after_a_bom(1024, "\n", "\u{feff}", true)]
#[case::one_over_lf(1025, "\n", "", false)]
#[case::one_over_crlf(1025, "\r\n", "", false)]
#[case::one_over_last_line(1025, "", "", false)]
#[case::two_over_lf(1026, "\n", "", false)]
fn a_line_is_refused_only_past_max_line_bytes(
    #[case] bytes: usize,
    #[case] end: &str,
    #[case] bom: &str,
    #[case] accepted: bool,
) {
    let frame = r#"{"prompt":""}"#.len();
    let line = format!(r#"{bom}{{"prompt":"{}"}}{end}"#, "x".repeat(bytes - frame));
    let results = read(line.as_bytes());
    assert_eq!(results.len(), 1);
    match (&results[0], accepted) {
        (Ok(_), true) => {}
        (Err(InputError::TooLong { line: 1, .. }), false) => {}
        (other, _) => panic!("{bytes} bytes + {end:?}: {other:?}"),
    }
}

#[test]
fn an_over_long_line_is_skipped_without_being_read_into_memory() {
    let source = LongLine {
        left: 64 << 20,
        tail: Cursor::new(b"\n{\"prompt\":\"after\"}\n".to_vec()),
    };
    let mut reader = InputReader::new(
        "in.jsonl".into(),
        Box::new(BufReader::with_capacity(64 * 1024, source)),
        options(),
    )
    .skip_invalid(true);
    let first = reader.next().expect("an item").expect_err("too long");
    assert!(
        matches!(first, InputError::TooLong { line: 1, .. }),
        "{first}"
    );
    assert!(
        reader.buf.capacity() <= 4 * options().max_line_bytes,
        "kept {} bytes of the line",
        reader.buf.capacity()
    );
    let second = reader.next().expect("an item").expect("valid");
    assert_eq!(second.line, 2);
    assert!(reader.next().is_none());
}

#[rstest]
#[case::plain(r#"{"custom_id": "a\"b", "prompt": "x"#, Some("a\"b"))]
#[case::spaced(r#"{ "custom_id" :"id-1" ,"#, Some("id-1"))]
#[case::not_a_string(r#"{"custom_id": 7, "#, None)]
#[case::unterminated(r#"{"custom_id": "abc"#, None)]
#[case::empty(r#"{"custom_id": "", "#, None)]
#[case::absent(r#"{"prompt": "custom_id"#, None)]
fn scans_custom_id_out_of_broken_lines(#[case] text: &str, #[case] expected: Option<&str>) {
    assert_eq!(scan_custom_id(text).as_deref(), expected);
}

#[test]
fn fingerprint_covers_the_whole_file() {
    let text = b"{\"prompt\":\"a\"}\n\n{\"prompt\":\"b\"}\n";
    let mut reader = InputReader::new("x".into(), Box::new(Cursor::new(text.to_vec())), options());
    for r in reader.by_ref() {
        r.expect("valid");
    }
    assert_eq!(
        reader.fingerprint(),
        blake3::hash(text).to_hex().to_string()
    );
}

fn checked(text: &[u8], skip_invalid: bool) -> Result<Checked, InputError> {
    let reader = InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(text.to_vec())),
        options(),
    )
    .skip_invalid(skip_invalid);
    check(reader, &CancellationToken::new()).map(|checked| checked.expect("not stopped"))
}

#[rstest]
#[case::distinct_custom_ids(
    b"{\"custom_id\":\"a\",\"prompt\":\"x\"}\n\n{\"custom_id\":\"b\",\"prompt\":\"x\"}\n",
    2,
    true
)]
#[case::no_custom_ids(
    b"{\"prompt\":\"x\"}\n{\"prompt\":\"x\"}\n{\"prompt\":\"y\"}\n",
    3,
    true
)]
#[case::repeated_custom_id(
    b"{\"custom_id\":\"a\",\"prompt\":\"x\"}\n{\"custom_id\":\"a\",\"prompt\":\"y\"}\n",
    2,
    false
)]
#[case::some_with_custom_id(
    b"{\"custom_id\":\"a\",\"prompt\":\"x\"}\n{\"prompt\":\"y\"}\n",
    2,
    false
)]
#[case::empty(b"\n\n", 0, false)]
fn check_tells_which_files_may_go_straight_into_a_job(
    #[case] text: &[u8],
    #[case] requests: u64,
    #[case] direct: bool,
) {
    let found = checked(text, false).expect("a valid file");
    assert_eq!((found.requests, found.direct), (requests, direct));
    assert_eq!(found.fingerprint, blake3::hash(text).to_hex().to_string());
}

#[test]
fn check_stops_at_the_first_bad_line_naming_it() {
    let text = b"{\"prompt\":\"x\"}\n{\"prompt\":\"y\"}\nnot json\n{\"prompt\":\"z\"}\n";
    let e = checked(text, false).expect_err("line 3 is not JSON");
    assert_eq!(e.line(), Some(3));
    assert!(e.to_string().starts_with("in.jsonl:3:"), "{e}");
}

#[test]
fn a_stopped_check_ends_without_an_answer() {
    let text: String = (0..25_000)
        .map(|i| format!("{{\"prompt\":\"{i}\"}}\n"))
        .collect();
    let reader = InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(text.into_bytes())),
        options(),
    );
    let stop = CancellationToken::new();
    stop.cancel();
    assert_eq!(check(reader, &stop).expect("no error"), None);
}

#[test]
fn check_reads_past_invalid_lines_when_told_to_but_sends_the_file_the_staged_way() {
    let text = b"{\"prompt\":\"x\"}\nnot json\n{\"prompt\":\"z\"}\n";
    let found = checked(text, true).expect("skipped");
    assert_eq!((found.requests, found.direct), (2, false));
}

/// The one-pass writer of a body with and without its filled-in model writes exactly what
/// `serde_json` writes for each: the hash of the first is the line's own content, and the
/// second is what is sent.
#[rstest]
#[case(json!({}))]
#[case(json!({"messages": [{"role": "user", "content": "hi \"there\"\n"}]}))]
#[case(json!({"a": 1, "max_tokens": 5, "messages": [], "n": 2, "zeta": {"y": [1.5, null]}}))]
#[case(json!({"input": "é 配送", "moderation": true, "modem": "x", "modelx": 1}))]
fn a_filled_model_is_written_as_serde_json_writes_it(#[case] body: Value) {
    let Value::Object(map) = body else {
        panic!("an object")
    };
    let (own, sent) = with_and_without_model(&map, "gpt-\"4o\"");
    assert_eq!(own, Value::Object(map.clone()).to_string());
    let mut with = map;
    with.insert("model".into(), "gpt-\"4o\"".into());
    assert_eq!(sent, Value::Object(with).to_string());
}

/// A filled model is left out of the key, so the same line under another `--model` is the same
/// request; a model the line names is part of it.
#[test]
fn the_key_leaves_out_a_filled_model_only() {
    let key = |line: &str, model: &str| {
        let options = InputOptions {
            model: Some(model.into()),
            ..options()
        };
        let mut reader = InputReader::new(
            "in.jsonl".into(),
            Box::new(Cursor::new(line.to_owned().into_bytes())),
            options,
        );
        reader.next().expect("a line").expect("valid").body_hash
    };
    let plain = r#"{"prompt":"hi"}"#;
    assert_eq!(key(plain, "a"), key(plain, "b"));
    let own = r#"{"prompt":"hi","model":"m"}"#;
    assert_eq!(key(own, "a"), key(own, "b"));
    assert_ne!(
        key(plain, "m"),
        key(own, "m"),
        "a written model is the line's content"
    );
}
