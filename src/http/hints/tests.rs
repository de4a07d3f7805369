//! Parsers of server hints against well-formed, hostile and arbitrary header values.

use super::*;
use proptest::prelude::*;
use reqwest::header::{HeaderName, HeaderValue};
use rstest::rstest;

/// `--max-wait`'s default.
const CAP: Duration = Duration::from_secs(120);

/// The headers this module reads.
const NAMES: [&str; 9] = [
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-requests",
    "x-should-retry",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
];

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn millis(wait: Option<Duration>) -> Option<u128> {
    wait.map(|d| d.as_millis())
}

#[rstest]
#[case("1s", Some(1_000))]
#[case("6m0s", Some(360_000))]
#[case("12ms", Some(12))]
#[case("1m30.5s", Some(90_500))]
#[case("1.5s", Some(1_500))]
#[case("1h2m", Some(3_720_000))]
#[case("0", Some(0))]
#[case("-1", None)]
#[case("", None)]
#[case("5", None)]
#[case("5x", None)]
// Beyond today's parser: Go's other spellings.
#[case(" 2s ", Some(2_000))]
#[case("+3s", Some(3_000))]
#[case(".5s", Some(500))]
#[case("5.s", Some(5_000))]
#[case("1500us", Some(1))]
#[case("1500µs", Some(1))]
#[case("1500μs", Some(1))]
#[case("2000000ns", Some(2))]
#[case("0.000000001h", Some(0))]
// Hostile: no panic, no nonsense.
#[case("-1s", None)]
#[case("-0", None)]
#[case(".", None)]
#[case(".s", None)]
#[case("1..5s", None)]
#[case("1.5.5s", None)]
#[case("s", None)]
#[case("1e3s", None)]
#[case("inf", None)]
#[case("NaN", None)]
#[case("1s 2s", None)]
#[case("1 s", None)]
#[case("1d", None)]
#[case("1S", None)]
#[case("µs", None)]
#[case("1µ", None)]
fn parses_go_durations(#[case] text: &str, #[case] expected: Option<u128>) {
    assert_eq!(millis(parse_go_duration(text)), expected);
}

#[rstest]
#[case("99999999999999h")]
#[case("2562048h")]
// Above Go's maximum but still within a u64 of nanoseconds.
#[case("4000000h")]
#[case("18446744073s")]
#[case("9223372036.854775808s")]
#[case("340282366920938463463374607431768211456s")]
#[case("99999999999999999999999999999999999999999999999999999999999999999999999h")]
#[case("9999999999999999999h9999999999999999999h9999999999999999999h")]
#[case("1.99999999999999999999999999999999999999999999999999999h9999999999999h")]
fn huge_go_durations_saturate(#[case] text: &str) {
    assert_eq!(parse_go_duration(text), Some(MAX_GO_DURATION));
}

#[test]
fn fractions_are_exact_to_the_nanosecond() {
    assert_eq!(
        parse_go_duration("1.000000001s"),
        Some(Duration::from_nanos(1_000_000_001))
    );
    assert_eq!(parse_go_duration("0.5h"), Some(Duration::from_secs(1_800)));
    // Digits past the 18th are dropped, not rounded into an overflow.
    assert_eq!(
        parse_go_duration("0.99999999999999999999999999s"),
        Some(Duration::from_nanos(999_999_999))
    );
    assert_eq!(
        parse_go_duration("2562047h47m16.854775807s"),
        Some(MAX_GO_DURATION)
    );
    assert_eq!(
        parse_go_duration("2562047h47m16.854775806s"),
        Some(Duration::from_nanos(i64::MAX as u64 - 1))
    );
}

#[rstest]
#[case(
    "Limit 500, Used 500, Requested 1. Please try again in 1.574s. Visit",
    Some(1_574)
)]
#[case("Please try again in 120ms.", Some(120))]
#[case("Please try again in 6m0s", Some(360_000))]
#[case("no hint here", None)]
#[case("Please try again in ", None)]
#[case("Please try again in -5s.", None)]
#[case("Please try again in 1e300s.", None)]
#[case("try again in 99999999999999h", Some(MAX_GO_DURATION.as_millis()))]
#[case("try again in µs", None)]
#[case("try again in 2s,", Some(2_000))]
fn reads_try_again_in(#[case] message: &str, #[case] expected: Option<u128>) {
    assert_eq!(millis(try_again_in(message)), expected);
}

#[test]
fn server_wait_prefers_retry_after_ms() {
    let now = SystemTime::now();
    let h = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
    assert_eq!(
        server_wait(&h, None, now, CAP),
        Some(Duration::from_millis(250))
    );
    let h = headers(&[("retry-after", "7")]);
    assert_eq!(
        server_wait(&h, None, now, CAP),
        Some(Duration::from_secs(7))
    );
    let h = headers(&[
        ("x-ratelimit-reset-requests", "2s"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    assert_eq!(server_wait(&h, None, now, CAP), Some(CAP));
    assert_eq!(
        server_wait(&h, None, now, Duration::from_secs(3600)),
        Some(Duration::from_secs(360))
    );
    let h = headers(&[]);
    assert_eq!(
        server_wait(&h, Some("Please try again in 20ms."), now, CAP),
        Some(Duration::from_millis(20))
    );
    assert_eq!(server_wait(&h, None, now, CAP), None);
}

#[test]
fn server_wait_reads_http_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    let h = headers(&[("retry-after", &later)]);
    assert_eq!(
        server_wait(&h, None, now, CAP),
        Some(Duration::from_secs(30))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    let h = headers(&[("retry-after", &earlier)]);
    assert_eq!(server_wait(&h, None, now, CAP), Some(Duration::ZERO));
    let h = headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]);
    assert_eq!(server_wait(&h, None, now, CAP), Some(CAP));
}

/// Values that panicked or misbehaved before, and their neighbours. `None` means the header
/// is ignored (nothing else is sent, so there is no wait at all).
#[rstest]
#[case("retry-after", "1e30", Some(CAP))]
#[case("retry-after", "1e400", Some(CAP))]
#[case("retry-after", "inf", Some(CAP))]
#[case("retry-after", "+infinity", Some(CAP))]
#[case("retry-after", "18446744073709551616", Some(CAP))]
#[case("retry-after", "-inf", None)]
#[case("retry-after", "NaN", None)]
#[case("retry-after", "-1", None)]
#[case("retry-after", "-0", Some(Duration::ZERO))]
#[case("retry-after", "1e-300", Some(Duration::ZERO))]
#[case("retry-after", "0.5", Some(Duration::from_millis(500)))]
#[case("retry-after", "soon", None)]
#[case("retry-after", "", None)]
#[case("retry-after-ms", "1e300", Some(CAP))]
#[case("retry-after-ms", "1.7976931348623157e308", Some(CAP))]
#[case("retry-after-ms", "inf", Some(CAP))]
#[case("retry-after-ms", "nan", None)]
#[case("retry-after-ms", "-250", None)]
#[case("retry-after-ms", "120001", Some(CAP))]
#[case("retry-after-ms", "120000", Some(CAP))]
#[case("retry-after-ms", "0.001", Some(Duration::from_micros(1)))]
#[case("x-ratelimit-reset-requests", "99999999999999h", Some(CAP))]
#[case("x-ratelimit-reset-tokens", "1e30s", None)]
#[case("x-ratelimit-reset-tokens", "-1", None)]
fn hostile_waits_are_capped_or_ignored(
    #[case] name: &'static str,
    #[case] value: &str,
    #[case] expected: Option<Duration>,
) {
    let now = SystemTime::now();
    assert_eq!(
        server_wait(&headers(&[(name, value)]), None, now, CAP),
        expected
    );
}

#[test]
fn an_ignored_value_falls_through_to_the_next_source() {
    let now = SystemTime::now();
    let h = headers(&[
        ("retry-after-ms", "NaN"),
        ("retry-after", "-3"),
        ("x-ratelimit-reset-requests", "4s"),
    ]);
    assert_eq!(
        server_wait(&h, Some("Please try again in garbage"), now, CAP),
        Some(Duration::from_secs(4))
    );
    assert_eq!(
        server_wait(&h, Some("Please try again in 2s."), now, CAP),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn a_zero_cap_means_no_wait() {
    let now = SystemTime::now();
    let h = headers(&[("retry-after", "1e30")]);
    assert_eq!(
        server_wait(&h, None, now, Duration::ZERO),
        Some(Duration::ZERO)
    );
    let h = headers(&[]);
    assert_eq!(
        server_wait(&h, Some("try again in 5s"), now, Duration::ZERO),
        Some(Duration::ZERO)
    );
}

#[test]
fn non_text_header_values_are_ignored() {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static("retry-after"),
        HeaderValue::from_bytes(b"\xff\xfe5").expect("obs-text is a valid header value"),
    );
    h.insert(
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderValue::from_bytes(b"5\xff").expect("obs-text is a valid header value"),
    );
    assert_eq!(server_wait(&h, None, SystemTime::now(), CAP), None);
    let read = announced(&h);
    assert_eq!(read.requests.limit, None);
    assert_eq!(read.ignored.len(), 1, "{:?}", read.ignored);
}

#[rstest]
#[case("500", Some(500))]
#[case(" 10000 ", Some(10_000))]
#[case("10000000", Some(10_000_000))]
// Not a limit the API would send: ignored, never clamped into one.
#[case("1.5", None)]
#[case("-1", None)]
#[case("0", None)]
#[case("-0", None)]
#[case("+5", None)]
#[case("NaN", None)]
#[case("-inf", None)]
#[case("inf", None)]
#[case("", None)]
#[case("lots", None)]
#[case("1e-300", None)]
#[case("0.001", None)]
#[case("5e-324", None)]
#[case("1e300", None)]
#[case("10000001", None)]
#[case("99999999999999999999999", None)]
fn a_request_limit_is_a_limit_only_when_it_is_one(
    #[case] value: &str,
    #[case] expected: Option<u64>,
) {
    let h = headers(&[("x-ratelimit-limit-requests", value)]);
    let read = announced(&h);
    assert_eq!(read.requests.limit, expected);
    assert_eq!(
        read.ignored.len(),
        usize::from(expected.is_none()),
        "an ignored value is noted: {:?}",
        read.ignored
    );
}

#[test]
fn reads_every_openai_rate_limit_header() {
    let h = headers(&[
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-tokens", "29999950"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    let read = announced(&h);
    assert_eq!(
        read.requests,
        Window {
            limit: Some(10_000),
            remaining: Some(9_999),
            reset: Some(Duration::from_millis(6)),
        }
    );
    assert_eq!(
        read.tokens,
        Window {
            limit: Some(30_000_000),
            remaining: Some(29_999_950),
            reset: Some(Duration::from_secs(360)),
        }
    );
    assert!(read.ignored.is_empty());
}

#[test]
fn azure_remaining_tokens_without_a_limit_is_read() {
    let h = headers(&[
        ("x-ratelimit-remaining-tokens", "119000"),
        ("x-ratelimit-remaining-requests", "-1"),
    ]);
    let read = announced(&h);
    assert_eq!(read.tokens.remaining, Some(119_000));
    assert_eq!(read.tokens.limit, None);
    assert_eq!(read.requests.remaining, None);
    assert_eq!(
        read.ignored,
        vec![("x-ratelimit-remaining-requests", "-1".to_owned())]
    );
}

#[rstest]
#[case("forever")]
#[case("-5s")]
#[case("25h")]
#[case("1e3s")]
fn an_unparseable_or_absurd_reset_is_ignored(#[case] value: &str) {
    let h = headers(&[("x-ratelimit-reset-tokens", value)]);
    let read = announced(&h);
    assert_eq!(read.tokens.reset, None);
    assert_eq!(read.ignored.len(), 1);
}

#[test]
fn no_limit_header_is_unknown() {
    let read = announced(&HeaderMap::new());
    assert_eq!(read, Announced::default());
}

#[rstest]
#[case("true", Some(true))]
#[case("false", Some(false))]
#[case(" TRUE ", Some(true))]
#[case("False", Some(false))]
#[case("1", None)]
#[case("yes", None)]
#[case("", None)]
fn reads_should_retry(#[case] value: &str, #[case] expected: Option<bool>) {
    let h = headers(&[("x-should-retry", value)]);
    assert_eq!(should_retry(&h), expected);
}

/// Text shaped like what the parsers look for, so the interesting branches are reached far
/// more often than by uniformly random strings.
fn near_miss() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+]?[0-9]{0,40}(\\.[0-9]{0,40})?([eE][-+]?[0-9]{1,4})?",
        "[-+ ]?([0-9]{0,25}\\.?[0-9]{0,25}(h|m|s|ms|us|µs|μs|ns|d|)){1,6}",
        "[-+]?(inf|infinity|nan|NaN|INF)",
        "(Mon|Tue|Sun), [0-9]{1,2} (Jan|Feb|Nov|Dec) [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} GMT",
        "(Sunday|Monday), [0-9]{2}-(Jan|Nov)-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
    ]
}

fn check_everything(h: &HeaderMap, message: Option<&str>, now_secs: u64, cap_ms: u64) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
    let cap = Duration::from_millis(cap_ms);
    if let Some(wait) = server_wait(h, message, now, cap) {
        assert!(wait <= cap, "{wait:?} > {cap:?} for {h:?} {message:?}");
    }
    let read = announced(h);
    for kind in LimitKind::ALL {
        let window = read.window(kind);
        if let Some(limit) = window.limit {
            assert!(
                (1..=kind.max_per_minute()).contains(&limit),
                "{limit} for {h:?}"
            );
        }
        if let Some(reset) = window.reset {
            assert!(reset <= MAX_RESET, "{reset:?} for {h:?}");
        }
    }
    let _ = should_retry(h);
}

proptest! {
    #[test]
    fn any_text_in_any_header_is_bounded(
        values in proptest::collection::vec(near_miss(), NAMES.len()),
        message in proptest::option::of(near_miss().prop_map(|s| format!("try again in {s}"))),
        now_secs in 0u64..=253_402_300_799,
        cap_ms in 0u64..=86_400_000,
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in NAMES.iter().zip(&values) {
            // Text HTTP cannot carry (control characters) never reaches the parsers.
            if let Ok(value) = HeaderValue::from_str(value) {
                h.insert(HeaderName::from_static(name), value);
            }
        }
        check_everything(&h, message.as_deref(), now_secs, cap_ms);
        for value in &values {
            let _ = parse_go_duration(value);
            let _ = try_again_in(value);
        }
    }

    #[test]
    fn any_header_bytes_are_bounded(
        which in 0..NAMES.len(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        cap_ms in 0u64..=86_400_000,
    ) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            return Ok(());
        };
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static(NAMES[which]), value);
        check_everything(&h, None, 1_700_000_000, cap_ms);
    }

    #[test]
    fn parsed_go_durations_never_exceed_the_maximum(text in near_miss()) {
        if let Some(d) = parse_go_duration(&text) {
            prop_assert!(d <= MAX_GO_DURATION);
        }
    }
}

#[rstest]
#[case::openai(&[("x-request-id", "req_abc123")], Some("req_abc123"))]
#[case::litellm(&[("request-id", "c0ffee")], Some("c0ffee"))]
#[case::x_request_id_first(&[("request-id", "b"), ("x-request-id", "a")], Some("a"))]
#[case::absent(&[], None)]
#[case::blank(&[("x-request-id", "  ")], None)]
fn request_ids_come_from_either_header(
    #[case] pairs: &[(&'static str, &str)],
    #[case] expected: Option<&str>,
) {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    assert_eq!(request_id(&headers).as_deref(), expected);
}

/// Support needs the id whatever the server put in it: a value that is not short plain ASCII
/// is kept as a copy safe for the journal and a terminal, never dropped.
#[rstest]
#[case::utf8(b"req_\xc3\xa9", "req_\u{e9}")]
#[case::not_utf8(b"req_\xff\xfe", "req_\u{fffd}\u{fffd}")]
#[case::tab(b"a\tb", "a\\u{9}b")]
fn request_ids_that_are_not_plain_ascii_are_kept_escaped(
    #[case] bytes: &[u8],
    #[case] expected: &str,
) {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-request-id",
        HeaderValue::from_bytes(bytes).expect("a value hyper accepts"),
    );
    assert_eq!(request_id(&headers).as_deref(), Some(expected));
}

#[test]
fn a_request_id_too_long_to_be_one_is_cut() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&"é".repeat(100_000)).expect("value"),
    );
    let id = request_id(&headers).expect("kept");
    assert_eq!(id.chars().count(), 201, "200 characters and the ellipsis");
    assert!(id.ends_with("é…"), "cut on a character boundary: {id}");
}
