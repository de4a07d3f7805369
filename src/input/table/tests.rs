//! Unit tests of the CSV, TSV and plain text readers.

use std::io::{BufReader, Cursor, Read};

use rstest::rstest;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::input::{
    CHAT_ENDPOINT, InputError, InputFormat, InputOptions, InputReader, Prompt, PromptFrom, check,
};

fn options(format: InputFormat, prompt: PromptFrom) -> InputOptions {
    InputOptions {
        model: Some("m".into()),
        max_line_bytes: 1024,
        format,
        prompt,
        ..InputOptions::default()
    }
}

fn reader(format: InputFormat, prompt: PromptFrom, text: &[u8]) -> InputReader {
    let name = format!("in.{}", format.as_str());
    InputReader::new(
        name.into(),
        Box::new(Cursor::new(text.to_vec())),
        options(format, prompt),
    )
}

fn csv(text: &[u8]) -> Vec<Result<Prompt, InputError>> {
    reader(InputFormat::Csv, PromptFrom::Auto, text).collect()
}

fn valid(results: Vec<Result<Prompt, InputError>>) -> Vec<Prompt> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn user_text(prompt: &Prompt) -> String {
    let body: Value = serde_json::from_str(&prompt.body).expect("JSON body");
    let messages = body["messages"].as_array().expect("messages");
    messages.last().expect("a message")["content"]
        .as_str()
        .expect("text")
        .to_owned()
}

fn metadata(prompt: &Prompt) -> Value {
    prompt
        .metadata
        .as_deref()
        .map_or(Value::Null, |m| serde_json::from_str(m).expect("JSON"))
}

/// (line, custom_id, prompt) of each request.
fn summary(prompts: &[Prompt]) -> Vec<(u64, Option<&str>, String)> {
    prompts
        .iter()
        .map(|p| (p.line, p.custom_id.as_deref(), user_text(p)))
        .collect()
}

#[test]
fn a_row_becomes_a_chat_request_with_its_other_columns_as_metadata() {
    let prompts = valid(csv(b"id,review,prompt\nr1,good,Say hi\n"));
    assert_eq!(prompts.len(), 1);
    let p = &prompts[0];
    assert_eq!(
        (p.line, p.custom_id.as_deref(), p.url.as_str()),
        (2, Some("r1"), CHAT_ENDPOINT)
    );
    let body: Value = serde_json::from_str(&p.body).expect("JSON body");
    assert_eq!(
        body,
        json!({"model": "m", "messages": [{"role": "user", "content": "Say hi"}]})
    );
    assert_eq!(metadata(p), json!({"review": "good"}));
    assert_eq!(p.body_hash.len(), 64);
}

#[rstest]
#[case::bom_and_crlf(
    b"\xEF\xBB\xBFid,prompt\r\n1,a\r\n2,b\r\n",
    &[(2, "1", "a"), (3, "2", "b")]
)]
#[case::newline_in_a_quoted_cell(
    b"id,prompt\n1,\"two\nlines\"\n2,after\n",
    &[(2, "1", "two\nlines"), (4, "2", "after")]
)]
#[case::crlf_in_a_quoted_cell(
    b"id,prompt\r\n1,\"two\r\nlines\"\r\n\r\n2,after",
    &[(2, "1", "two\r\nlines"), (5, "2", "after")]
)]
#[case::commas_and_doubled_quotes(
    b"id,prompt\n1,\"a, \"\"quoted\"\" b\"\n",
    &[(2, "1", "a, \"quoted\" b")]
)]
#[case::blank_lines_and_empty_rows(
    b"\n\nid,prompt\n\n1,a\n,\n  ,  \n2,b\n",
    &[(5, "1", "a"), (8, "2", "b")]
)]
#[case::non_ascii(
    "id,prompt\nü,Ça va? 日本語\n".as_bytes(),
    &[(2, "ü", "Ça va? 日本語")]
)]
#[case::loose_header_names(b"ID, Prompt \n7,x\n", &[(2, "7", "x")])]
#[case::custom_id_before_id(
    b"id,custom_id,prompt\na,b,x\n",
    &[(2, "b", "x")]
)]
fn rows_keep_their_physical_line_numbers(
    #[case] text: &[u8],
    #[case] expected: &[(u64, &str, &str)],
) {
    let prompts = valid(csv(text));
    let expected: Vec<(u64, Option<&str>, String)> = expected
        .iter()
        .map(|(line, id, text)| (*line, Some(*id), (*text).to_owned()))
        .collect();
    assert_eq!(summary(&prompts), expected);
}

#[test]
fn tsv_cells_may_hold_commas() {
    let prompts: Vec<Prompt> = valid(
        reader(
            InputFormat::Tsv,
            PromptFrom::Auto,
            b"id\tprompt\tnote\n1\thello, world\tx\n",
        )
        .collect(),
    );
    assert_eq!(summary(&prompts), [(2, Some("1"), "hello, world".into())]);
    assert_eq!(metadata(&prompts[0]), json!({"note": "x"}));
}

#[rstest]
#[case::only_column(b"question\nwhy?\n" as &[u8], None, "why?")]
#[case::only_column_besides_id(b"id,question\nq1,why?\n", Some("q1"), "why?")]
#[case::prompt_among_several(b"topic,prompt,notes\na,why?,n\n", None, "why?")]
fn the_prompt_column_is_found_without_a_flag(
    #[case] text: &[u8],
    #[case] id: Option<&str>,
    #[case] prompt: &str,
) {
    let prompts = valid(csv(text));
    assert_eq!(summary(&prompts), [(2, id, prompt.to_owned())]);
}

#[test]
fn a_row_without_id_gets_a_key_from_its_content_as_a_jsonl_line_does() {
    let row = &valid(csv(b"prompt,note\nhello,a\n"))[0];
    let jsonl = reader(
        InputFormat::Jsonl,
        PromptFrom::Auto,
        br#"{"prompt":"hello","metadata":{"note":"a"}}"#,
    )
    .next()
    .expect("a line")
    .expect("valid");
    assert_eq!(row.custom_id, None);
    assert_eq!(row.body, jsonl.body);
    assert_eq!(row.derived_key(1), jsonl.derived_key(1));
    // Another note, same request: the key stays (a resubmit keeps the row's result).
    let edited = &valid(csv(b"prompt,note\nhello,b\n"))[0];
    assert_eq!(edited.derived_key(1), row.derived_key(1));
}

#[test]
fn a_template_writes_the_prompt_over_the_columns() {
    let template = "Classify {review} ({{stars}}: {stars})"
        .parse()
        .expect("template");
    let prompts: Vec<Prompt> = valid(
        reader(
            InputFormat::Csv,
            PromptFrom::Template(template),
            b"id,review,stars\n1,\"Good, really\",5\n",
        )
        .collect(),
    );
    assert_eq!(
        summary(&prompts),
        [(2, Some("1"), "Classify Good, really ({stars}: 5)".into())]
    );
    // With a template, no column is the prompt: the cells it reads stay in the metadata.
    assert_eq!(
        metadata(&prompts[0]),
        json!({"review": "Good, really", "stars": "5"})
    );
}

#[test]
fn system_and_max_tokens_go_into_every_body() {
    let mut options = options(InputFormat::Csv, PromptFrom::Column("q".into()));
    options.system = Some("Answer in one word.".into());
    options.max_tokens = Some(16);
    let prompt = InputReader::new(
        "in.csv".into(),
        Box::new(Cursor::new(b"q\nhi\n".to_vec())),
        options,
    )
    .next()
    .expect("a row")
    .expect("valid");
    let body: Value = serde_json::from_str(&prompt.body).expect("JSON");
    assert_eq!(
        body,
        json!({"model": "m", "max_tokens": 16, "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "hi"},
        ]})
    );
}

#[rstest]
#[case::wrong_cell_count(
    b"id,prompt\n1,a\n2,b,c\n" as &[u8],
    "in.csv:3: the row has 3 cells but the header has 2 columns ('id', 'prompt'): a cell that holds a comma"
)]
#[case::too_few_cells(b"id,review,prompt\n1,a\n", "in.csv:2: the row has 2 cells")]
#[case::empty_prompt(
    b"id,prompt\n1,a\n2, \n",
    "in.csv:3: the prompt is empty (column 'prompt')"
)]
#[case::empty_id(b"id,prompt\n,a\n", "in.csv:2: the 'id' cell is empty")]
#[case::not_utf8(b"id,prompt\n1,\xff\n", "in.csv:2: line is not valid UTF-8")]
#[case::after_a_multi_line_cell(b"id,prompt\n1,\"a\nb\nc\"\n2,\n", "in.csv:5: the prompt is empty")]
#[case::unclosed_quote(
    b"id,prompt\n1,ok\n2,\"never closed\n3,c\n4,d\n",
    "in.csv:3: a quote (\") in this row is never closed"
)]
fn bad_rows_are_named_by_file_and_line(#[case] text: &[u8], #[case] expected: &str) {
    let message = csv(text)
        .into_iter()
        .find_map(Result::err)
        .map(|e| e.to_string())
        .expect("an error");
    assert!(message.starts_with(expected), "{message}");
}

#[test]
fn an_over_long_row_is_named_and_read_past_without_being_kept() {
    // A quote that is never closed would take the rest of the file into one cell: 64 MiB here.
    let source = Cursor::new(b"id,prompt\n1,ok\n2,\"".to_vec())
        .chain(std::io::repeat(b'x').take(64 << 20))
        .chain(Cursor::new(b"\"\n3,after\n".to_vec()));
    let mut reader = InputReader::new(
        "in.csv".into(),
        Box::new(BufReader::with_capacity(64 * 1024, source)),
        options(InputFormat::Csv, PromptFrom::Auto),
    )
    .skip_invalid(true);
    assert_eq!(reader.next().expect("row 1").expect("valid").line, 2);
    let e = reader.next().expect("row 2").expect_err("too long");
    assert!(
        e.to_string()
            .starts_with("in.csv:3: line is longer than 1024 bytes"),
        "{e}"
    );
    let kept = reader.table.as_ref().map_or(0, |t| t.cells.capacity());
    assert!(kept <= 4096, "kept {kept} bytes of the row");
    assert_eq!(reader.next().expect("row 3").expect("valid").line, 4);
    assert!(reader.next().is_none());
}

#[rstest]
#[case::several_columns_none_named_prompt(
    PromptFrom::Auto,
    b"id,review,text\n1,a,b\n" as &[u8],
    "in.csv:1: no column is named 'prompt' and there are several ('id', 'review', 'text'): pass --prompt-column NAME"
)]
#[case::no_such_prompt_column(
    PromptFrom::Column("question".into()),
    b"id,prompt\n1,a\n",
    "in.csv:1: there is no column 'question' (--prompt-column): the columns are 'id', 'prompt'"
)]
#[case::template_names_a_missing_column(
    PromptFrom::Template("{review} {stars} {stars}".parse().expect("template")),
    b"id,review\n1,a\n",
    "in.csv:1: the template's {stars} names no column of the header: the columns are 'id', 'review'"
)]
#[case::a_name_twice(
    PromptFrom::Auto,
    b"prompt,note,note\na,b,c\n",
    "in.csv:1: two columns of the header are named 'note' (columns 2 and 3)"
)]
#[case::header_not_utf8(
    PromptFrom::Auto,
    b"pr\xffompt\na\n",
    "in.csv:1: the header row is not valid UTF-8"
)]
fn a_header_that_does_not_fit_stops_the_reading(
    #[case] prompt: PromptFrom,
    #[case] text: &[u8],
    #[case] expected: &str,
) {
    // Not even --skip-invalid reads on: no row can be understood without the header.
    let results: Vec<_> = reader(InputFormat::Csv, prompt, text)
        .skip_invalid(true)
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let message = results[0].as_ref().expect_err("refused").to_string();
    assert!(message.starts_with(expected), "{message}");
}

#[test]
fn skipping_keeps_what_can_be_read_of_a_bad_row() {
    let mut reader = reader(
        InputFormat::Csv,
        PromptFrom::Auto,
        b"id,review,prompt\n1,fine,a\n2,\"empty, it is\",\n3,x,b,extra\n4,last,c\n",
    )
    .skip_invalid(true);
    assert!(reader.next().expect("row 1").is_ok());
    let e = reader.next().expect("row 2").expect_err("empty prompt");
    assert_eq!(e.line(), Some(3));
    assert!(e.is_invalid_line());
    assert_eq!(reader.salvaged_custom_id().as_deref(), Some("2"));
    let cells: Value =
        serde_json::from_str(&reader.salvaged_metadata().expect("cells")).expect("JSON");
    assert_eq!(
        cells,
        json!({"id": "2", "review": "empty, it is", "prompt": ""})
    );
    let e = reader.next().expect("row 3").expect_err("four cells");
    assert_eq!(e.line(), Some(4));
    assert_eq!(
        reader.salvaged_custom_id(),
        None,
        "cells that do not fit the header"
    );
    assert_eq!(reader.salvaged_metadata(), None);
    assert_eq!(reader.next().expect("row 4").expect("valid").line, 5);
    assert!(reader.next().is_none());
}

#[test]
fn check_reads_the_layout_and_fingerprints_the_whole_file() {
    let text = b"\xEF\xBB\xBFid,review,prompt\r\n1,a,x\r\n2,b,y\r\n";
    let found = check(
        reader(InputFormat::Csv, PromptFrom::Auto, text),
        &CancellationToken::new(),
    )
    .expect("valid")
    .expect("not stopped");
    assert_eq!((found.requests, found.direct), (2, true));
    assert_eq!(found.fingerprint, blake3::hash(text).to_hex().to_string());
    assert_eq!(
        found.layout.as_deref(),
        Some(r#"{"columns":["id","review","prompt"],"id_column":"id","prompt_column":"prompt"}"#)
    );
}

#[test]
fn a_header_alone_is_no_request() {
    assert!(csv(b"id,prompt\n").is_empty());
    assert!(csv(b"").is_empty());
}

#[test]
fn text_lines_are_prompts_numbered_past_blank_lines() {
    let prompts: Vec<Prompt> = valid(
        reader(
            InputFormat::Txt,
            PromptFrom::Auto,
            b"\xEF\xBB\xBFfirst\n\n   \r\nsecond, with a comma\r\n",
        )
        .collect(),
    );
    assert_eq!(
        summary(&prompts),
        [
            (1, None, "first".into()),
            (4, None, "second, with a comma".into())
        ]
    );
    // The same request as the JSONL line {"prompt": "first"}: the same key.
    let jsonl = reader(
        InputFormat::Jsonl,
        PromptFrom::Auto,
        br#"{"prompt":"first"}"#,
    )
    .next()
    .expect("a line")
    .expect("valid");
    assert_eq!(prompts[0].body, jsonl.body);
    let bad: Vec<_> = reader(InputFormat::Txt, PromptFrom::Auto, b"ok\n\xff\n").collect();
    let e = bad[1].as_ref().expect_err("not UTF-8").to_string();
    assert!(e.starts_with("in.txt:2: line is not valid UTF-8"), "{e}");
}

#[rstest]
#[case::chat_without_a_limit(r#"{"prompt":"x"}"#, Some(("max_tokens", 16)))]
#[case::chat_with_its_own(r#"{"prompt":"x","max_completion_tokens":5}"#, None)]
#[case::responses(
    r#"{"method":"POST","url":"/v1/responses","body":{"model":"m","input":"x"}}"#,
    Some(("max_output_tokens", 16))
)]
#[case::embeddings(
    r#"{"method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}"#,
    None
)]
fn max_tokens_fills_jsonl_lines_that_set_no_limit(
    #[case] line: &str,
    #[case] expected: Option<(&str, u64)>,
) {
    let mut options = options(InputFormat::Jsonl, PromptFrom::Auto);
    options.max_tokens = Some(16);
    let prompt = InputReader::new(
        "in.jsonl".into(),
        Box::new(Cursor::new(line.as_bytes().to_vec())),
        options,
    )
    .next()
    .expect("a line")
    .expect("valid");
    let body: Value = serde_json::from_str(&prompt.body).expect("JSON");
    let limits: Vec<(&str, u64)> = ["max_tokens", "max_output_tokens"]
        .into_iter()
        .filter_map(|k| body.get(k).and_then(Value::as_u64).map(|n| (k, n)))
        .collect();
    assert_eq!(limits, expected.into_iter().collect::<Vec<_>>());
}
