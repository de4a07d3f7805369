//! Spreadsheets in and out: `samples/prompts.csv` (and TSV, TXT) submitted to the mock, the
//! CSV export opening beside the original (its columns first, the answers after), resubmits
//! that send only what changed, bad rows named by FILE:LINE, flags that do not fit refused
//! with exit 2.

use std::path::{Path, PathBuf};

use runner::Exit;
use runner::inspect::export::{CSV_COLUMNS, neutralise};
use serde_json::{Value, json};

use crate::support::bin::{output, text};
use crate::support::*;

/// The sample every test here starts from (the README's spreadsheet example).
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/prompts.csv");

/// The answer columns of the input layout of a job with an id and a prompt column.
const ANSWERS: [&str; 17] = [
    "status",
    "http_status",
    "attempts",
    "output_text",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
    "request_id",
    "error_code",
    "error_message",
    "latency_ms",
    "finished_at",
    "error_class",
    "line",
    "cost_usd",
    "via",
];

/// A CSV file read back: header and rows.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).expect("csv opens");
    let header = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("row").iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// The job exported as CSV through the real command, rows as plain lists of cells.
fn exported(db: &Path, job: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let (header, rows) = export_csv(db, job);
    let rows = rows
        .iter()
        .map(|r| r.iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// The cell of `row` under `column`.
fn at<'r>(header: &[String], row: &'r [String], column: &str) -> &'r str {
    let index = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    &row[index]
}

/// Copies the sample into the scratch directory as `name`.
fn sample_as(fx: &Fixture, name: &str) -> PathBuf {
    let path = fx.scratch.path(name);
    std::fs::copy(SAMPLE, &path).expect("copy the sample");
    path
}

/// `submit FILE` in-process against the fixture's mock, with `extra` flags.
async fn submit(fx: &Fixture, file: &Path, extra: &[&str]) -> anyhow::Result<Exit> {
    let (file, db, url) = (file.display().to_string(), fx.db_arg(), fx.url());
    let args = submit_args(&file, &db, &url, extra);
    within("submit", run(&args, env())).await
}

/// The chat body the runner sends for `prompt` with `--model test-model`.
fn chat(prompt: &str) -> Value {
    json!({"model": "test-model", "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_runs_and_exports_beside_the_original() {
    let fx = Fixture::for_job("prompts").start().await;
    let file = sample_as(&fx, "prompts.csv");
    // Row r08 has an empty prompt: recorded as a failed request, the rest runs (exit 3).
    let exit = submit(&fx, &file, &["--skip-invalid"]).await.expect("runs");
    assert_eq!(exit, Exit::SomeFailed);

    let (input_header, input_rows) = read_csv(&file);
    let stats = fx.mock.stats();
    assert_eq!(stats.answers, 9, "every row but the empty one, once");
    for row in input_rows.iter().filter(|r| !r[2].is_empty()) {
        assert_eq!(stats.successes_for(&chat(&row[2])), 1, "row {}", row[0]);
    }

    let (header, rows) = exported(&fx.db(), "prompts");
    assert_eq!(header[..3], input_header[..], "the input's columns first");
    assert_eq!(header[3..], ANSWERS, "then the answers");
    assert_eq!(rows.len(), input_rows.len(), "one row per input row");
    for (row, input) in rows.iter().zip(&input_rows) {
        for (i, value) in input.iter().enumerate() {
            assert_eq!(
                &row[i], value,
                "row {}, column {}",
                input[0], input_header[i]
            );
        }
        match input[2].as_str() {
            "" => {
                assert_eq!(at(&header, row, "status"), "failed");
                assert_eq!(at(&header, row, "error_class"), "invalid_input");
                assert_eq!(
                    at(&header, row, "error_message"),
                    format!(
                        "{}:12: the prompt is empty (column 'prompt'): write one, or delete the row",
                        file.display()
                    )
                );
            }
            prompt => {
                assert_eq!(at(&header, row, "status"), "succeeded");
                assert_eq!(at(&header, row, "output_text"), format!("echo: {prompt}"));
                assert_eq!(at(&header, row, "model"), "test-model");
                assert!(!at(&header, row, "total_tokens").is_empty());
            }
        }
    }
    // The standard layout is there too, with the prompt appended to the contract.
    let standard = fx.scratch.path("standard.csv");
    let out = output(fx.bin(&[
        "export",
        "--job",
        "prompts",
        "--layout",
        "standard",
        "--output",
        standard.to_str().expect("utf-8 path"),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (header, rows) = read_csv(&standard);
    assert_eq!(header, CSV_COLUMNS);
    assert_eq!(rows[0][0], "r01");
    assert_eq!(
        serde_json::from_str::<Value>(&rows[0][16]).expect("metadata"),
        json!({"review": "Great value, fast delivery."})
    );
    assert_eq!(rows[0][17], input_rows[0][2], "prompt");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmit_sends_only_the_rows_that_changed() {
    let fx = Fixture::for_job("reviews").start().await;
    let file = fx.scratch.path("reviews.csv");
    let write = |rows: &[(&str, &str)]| {
        let mut out = csv::Writer::from_path(&file).expect("create");
        out.write_record(["note", "prompt"]).expect("header");
        for row in rows {
            out.write_record([row.0, row.1]).expect("row");
        }
        out.flush().expect("flush");
    };
    write(&[("a", "one"), ("b", "two"), ("c", "three")]);
    assert_eq!(submit(&fx, &file, &[]).await.expect("runs"), Exit::Success);
    assert_eq!(fx.mock.stats().answers, 3);

    assert_eq!(submit(&fx, &file, &[]).await.expect("runs"), Exit::Success);
    assert_eq!(
        fx.mock.stats().answers,
        3,
        "the same file sends nothing again"
    );

    // One prompt edited, one note edited, one row added, the order changed.
    write(&[
        ("d", "four"),
        ("c", "three"),
        ("b", "two, edited"),
        ("A", "one"),
    ]);
    assert_eq!(submit(&fx, &file, &[]).await.expect("runs"), Exit::Success);
    let stats = fx.mock.stats();
    assert_eq!(
        stats.answers, 5,
        "the edited row and the new one, nothing else"
    );
    assert_eq!(stats.successes_for(&chat("two, edited")), 1);
    assert_eq!(stats.successes_for(&chat("four")), 1);
    assert_eq!(stats.successes_for(&chat("one")), 1);

    let (header, rows) = exported(&fx.db(), "reviews");
    assert_eq!(header[..3], ["note", "prompt", "custom_id"]);
    // The first version of the edited row is still in the job (its answer was paid for), at
    // the line it had: the rows of the file now are in the file's order, their notes as they are.
    let (stale, current): (Vec<&Vec<String>>, Vec<&Vec<String>>) =
        rows.iter().partition(|r| r[1] == "two");
    let shown: Vec<(&str, &str, &str)> = current
        .iter()
        .map(|r| (&r[0][..], &r[1][..], at(&header, r, "output_text")))
        .collect();
    assert_eq!(
        shown,
        [
            ("d", "four", "echo: four"),
            ("c", "three", "echo: three"),
            ("b", "two, edited", "echo: two, edited"),
            ("A", "one", "echo: one"),
        ]
    );
    assert_eq!(stale.len(), 1);
    assert_eq!(at(&header, stale[0], "output_text"), "echo: two");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_prompt_under_the_same_id_is_refused_and_a_new_id_is_sent() {
    let fx = Fixture::for_job("prompts").start().await;
    let file = sample_as(&fx, "prompts.csv");
    assert_eq!(
        submit(&fx, &file, &["--skip-invalid"]).await.expect("runs"),
        Exit::SomeFailed
    );
    let sample = std::fs::read_to_string(&file).expect("read");
    let edited = sample.replace(
        "Translate into English: Très bon café",
        "Translate into German: Très bon café",
    );
    std::fs::write(&file, &edited).expect("write");
    let e = submit(&fx, &file, &["--skip-invalid"])
        .await
        .expect_err("the id r03 names another request now");
    assert!(
        format!("{e:#}").contains(&format!(
            "{}:4: custom_id 'r03' was submitted before with a different body",
            file.display()
        )),
        "{e:#}"
    );
    std::fs::write(&file, edited.replace("r03,", "r03b,")).expect("write");
    assert_eq!(
        submit(&fx, &file, &["--skip-invalid"]).await.expect("runs"),
        Exit::SomeFailed
    );
    let stats = fx.mock.stats();
    assert_eq!(stats.answers, 10, "the sample's 9, then the renamed row");
    assert_eq!(
        stats.successes_for(&chat(
            "Translate into German: Très bon café, mais un peu cher."
        )),
        1
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_a_system_message_and_max_tokens_shape_every_request() {
    let fx = Fixture::for_job("prompts").start().await;
    let file = sample_as(&fx, "prompts.csv");
    let flags = [
        "--template",
        "Classify the review as positive, negative or mixed: {review}",
        "--system",
        "Answer with one word.",
        "--max-tokens",
        "5",
    ];
    assert_eq!(
        submit(&fx, &file, &flags).await.expect("runs"),
        Exit::Success
    );
    let (_, input_rows) = read_csv(&file);
    let stats = fx.mock.stats();
    assert_eq!(
        stats.answers, 10,
        "with a template, r08's empty prompt cell is data"
    );
    let asked =
        |review: &str| format!("Classify the review as positive, negative or mixed: {review}");
    for row in &input_rows {
        let body = json!({
            "model": "test-model",
            "max_tokens": 5,
            "messages": [
                {"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": asked(&row[1])},
            ],
        });
        assert_eq!(stats.successes_for(&body), 1, "row {}", row[0]);
    }
    // The prompt column is data now; the prompt sent is an answer column of its own.
    let (header, rows) = exported(&fx.db(), "prompts");
    assert_eq!(header[..3], ["id", "review", "prompt"]);
    for (row, input) in rows.iter().zip(&input_rows) {
        assert_eq!(row[..3], input[..]);
        assert_eq!(at(&header, row, "runner_prompt"), asked(&input[1]));
    }
    // A resubmit without the flags builds the same requests: they are stored with the job.
    assert_eq!(submit(&fx, &file, &[]).await.expect("runs"), Exit::Success);
    assert_eq!(fx.mock.stats().answers, 10);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_tsv_files_work_and_format_overrides_the_extension() {
    let fx = Fixture::for_job("lines").start().await;
    let txt = fx.scratch.write(
        "lines.txt",
        "first prompt\n\n  \nsecond, with a comma\nthird\n",
    );
    assert_eq!(submit(&fx, &txt, &[]).await.expect("runs"), Exit::Success);
    assert_eq!(fx.mock.stats().answers, 3);
    let (header, rows) = exported(&fx.db(), "lines");
    assert_eq!(
        header, CSV_COLUMNS,
        "a text file has no columns: the standard layout"
    );
    let shown: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                at(&header, r, "line"),
                at(&header, r, "prompt"),
                at(&header, r, "output_text"),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("1", "first prompt", "echo: first prompt"),
            ("4", "second, with a comma", "echo: second, with a comma"),
            ("5", "third", "echo: third"),
        ]
    );

    let tsv = fx.scratch.write(
        "sheet.data",
        "id\tquestion\n1\tWhat is 2+2, roughly?\n2\t\"Two\nlines\"\n",
    );
    let exit = submit(&fx, &tsv, &["--format", "tsv"]).await.expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.mock.stats().successes_for(&chat("Two\nlines")), 1);
    let (header, rows) = exported(&fx.db(), "sheet");
    assert_eq!(header[..2], ["id", "question"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (&rows[1][0], &rows[1][1]),
        (&"2".to_owned(), &"Two\nlines".to_owned())
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_cell_is_neutralised_the_input_columns_too() {
    let fx = Fixture::for_job("formulas").start().await;
    let file = fx
        .scratch
        .write("formulas.csv", "=HEADER,prompt\n=1+1,@SUM(A1)\n-3,+4\n");
    assert_eq!(submit(&fx, &file, &[]).await.expect("runs"), Exit::Success);
    let (header, rows) = exported(&fx.db(), "formulas");
    assert_eq!(header[..2], ["'=HEADER", "prompt"]);
    assert_eq!(
        rows[0][..2],
        [neutralise("=1+1"), neutralise("@SUM(A1)")].map(String::from)
    );
    assert_eq!(rows[1][..2], ["'-3", "'+4"]);
    assert_eq!(at(&header, &rows[1], "output_text"), "echo: +4");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_is_named_by_file_and_line_and_nothing_is_sent() {
    let fx = Fixture::for_job("bad").start().await;
    let url = fx.url();
    let submit = |file: &str| {
        let args = [
            "submit",
            file,
            "--base-url",
            &url,
            "--model",
            "test-model",
            "--no-progress",
        ];
        output(fx.bin(&args))
    };
    // The sample's row r08 (line 12, after a cell over four lines) has an empty prompt.
    sample_as(&fx, "prompts.csv");
    let out = submit("prompts.csv").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "prompts.csv:12: the prompt is empty (column 'prompt'): write one, or delete the row"
        ),
        "{stderr}"
    );

    fx.scratch.write(
        "bad.csv",
        "id,prompt\n1,\"a cell\nover two lines\"\n2,one, two\n3,fine\n",
    );
    let out = submit("bad.csv").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "bad.csv:4: the row has 3 cells but the header has 2 columns ('id', 'prompt'): a cell that holds a comma or a line break must be in quotes"
        ),
        "{stderr}"
    );
    assert_eq!(fx.mock.stats().answers, 0, "a file is checked whole first");

    fx.scratch.write("bad.csv", "id,review,stars\n1,x,5\n");
    let out = submit("bad.csv").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.csv:1: no column is named 'prompt' and there are several ('id', 'review', 'stars'): pass --prompt-column NAME"),
        "{stderr}"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_do_not_fit_the_file_exit_2() {
    let fx = Fixture::for_job("p").prompts(0..2).start().await;
    fx.scratch.write("p.txt", "hello\n");
    fx.scratch.write("p.csv", "prompt\nhello\n");
    let url = fx.url();
    let cases: [(&[&str], &str); 8] = [
        (
            &["p.jsonl", "--model", "m", "--template", "Say {x}"],
            "--template needs a spreadsheet's columns, and p.jsonl is read as jsonl (by its extension)",
        ),
        (
            &["p.txt", "--model", "m", "--prompt-column", "x"],
            "--prompt-column needs a spreadsheet's columns, and p.txt is read as txt",
        ),
        (
            &["p.jsonl", "--model", "m", "--system", "be brief"],
            "--system is for spreadsheets and .txt files",
        ),
        (
            &["p.csv", "--model", "m", "--endpoint", "/v1/responses"],
            "whose rows are sent to /v1/chat/completions: --endpoint /v1/responses is for JSONL files",
        ),
        (
            &["p.csv"],
            "p.csv is read as csv (by its extension): each of its rows becomes a chat request, which needs a model: pass --model",
        ),
        (
            &["p.csv", "--model", "m", "--template", "Say {x"],
            "the { at character 5 is never closed",
        ),
        (
            &[
                "p.csv",
                "--model",
                "m",
                "--template",
                "{prompt}",
                "--prompt-column",
                "prompt",
            ],
            "cannot be used with",
        ),
        (
            &["p.csv", "--model", "m", "--format", "xlsx"],
            "invalid value 'xlsx'",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--base-url", &url, "--no-progress"]);
        let out = output(fx.bin(&all)).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(fx.mock.stats().answers, 0);
    if fx.db().exists() {
        assert_eq!(
            query_i64(&fx.db(), "SELECT count(*) FROM jobs"),
            0,
            "no job was made"
        );
    }

    // --layout input is for a job that came from a spreadsheet.
    let out = output(fx.bin_submit(&[])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = output(fx.bin(&["export", "--job", "p", "--layout", "input"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("job 'p' was not submitted from a spreadsheet"),
        "{stderr}"
    );
    fx.shutdown().await;
}
