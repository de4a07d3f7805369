//! `runner estimate` and `submit --dry-run`, the real binary: the file read and checked as
//! submit reads it, tokens counted with the tokenizer, prices both ways, nothing written.

use serde_json::Value;

use runner::domain::tokens;

use crate::support::bin::{output, runner, text};
use crate::support::*;

/// Three chat lines for gpt-4o-mini with their own `max_tokens`, one embedding, and one line for
/// a model the price table does not know.
const LINES: &str = concat!(
    r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Classify the sentiment of: the delivery was late and the box was crushed."}],"max_tokens":100}}"#,
    "\n",
    r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Answer in one word."},{"role":"user","content":"Is water wet?"}],"max_tokens":10}}"#,
    "\n",
    r#"{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Würde ein Übersetzer das verstehen? 配送が早い"}],"max_tokens":50}}"#,
    "\n",
    r#"{"custom_id":"d","method":"POST","url":"/v1/embeddings","body":{"model":"text-embedding-3-small","input":"a short text to embed"}}"#,
    "\n",
    r#"{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"model":"house-model","messages":[{"role":"user","content":"hi"}],"max_tokens":20}}"#,
    "\n",
);

fn json(out: &std::process::Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("estimate --json prints JSON")
}

#[tokio::test]
async fn an_estimate_counts_tokens_and_prices_them_both_ways_without_writing() {
    let s = Scratch::new();
    s.write("jobs.jsonl", LINES);
    let mut cmd = runner(s.dir.path());
    cmd.args(["estimate", "jobs.jsonl", "--json"]);
    let estimate = json(&output(cmd).await);
    assert_eq!(estimate["requests"], 5);

    // Every request's prompt counted as the pacing counts it (tiktoken), per model.
    let mut chat_prompt = 0;
    for line in LINES.lines().take(3) {
        let line: Value = serde_json::from_str(line).expect("line");
        chat_prompt += tokens::cost("/v1/chat/completions", &line["body"], 256).prompt;
    }
    let groups = estimate["groups"].as_array().expect("groups");
    let chat = groups
        .iter()
        .find(|g| g["model"] == "gpt-4o-mini")
        .expect("the gpt-4o-mini group");
    assert_eq!(chat["requests"], 3);
    assert_eq!(chat["input_tokens"], chat_prompt);
    assert!(chat_prompt > 30, "a real count, not a stub: {chat_prompt}");
    assert_eq!(chat["output_tokens_max"], 160, "the lines' own max_tokens");
    assert_eq!(chat["output_tokens_expected"], 80, "half of it, as stated");
    // gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens; the Batch API at half.
    let at_most = (chat_prompt as f64 * 0.15 + 160.0 * 0.60) / 1e6;
    let direct = chat["usd_direct"]["at_most"].as_f64().expect("priced");
    assert!((direct - at_most).abs() < 1e-12, "{direct} vs {at_most}");
    let batch = chat["usd_batch"]["at_most"].as_f64().expect("priced");
    assert!((batch - at_most / 2.0).abs() < 1e-12, "{batch}");

    let embed = groups
        .iter()
        .find(|g| g["endpoint"] == "/v1/embeddings")
        .expect("the embeddings group");
    assert_eq!(embed["output_tokens_max"], 0);
    assert_eq!(estimate["unpriced"], serde_json::json!(["house-model"]));
    let total = estimate["usd_direct"]["at_most"].as_f64().expect("sum");
    assert!(total >= direct, "the sum holds the chat group: {total}");
    assert!(
        !s.path("runner.db").exists(),
        "an estimate writes nothing, not even an empty journal"
    );

    // The text form says the same, with the time at a given limit.
    let mut cmd = runner(s.dir.path());
    cmd.args(["submit", "jobs.jsonl", "--dry-run", "--rpm", "60"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("jobs.jsonl: 5 requests"), "{shown}");
    assert!(
        shown.contains("3 × gpt-4o-mini to /v1/chat/completions"),
        "{shown}"
    );
    assert!(
        shown.contains("not priced (not in the sums): house-model"),
        "{shown}"
    );
    assert!(
        shown.contains("time: at least 5s at requests 60/min"),
        "{shown}"
    );
    assert!(!s.path("runner.db").exists(), "--dry-run writes nothing");
}

#[tokio::test]
async fn an_estimate_refuses_what_submit_refuses() {
    let s = Scratch::new();
    let twice = format!("{LINES}{}\n", LINES.lines().next().expect("a line"));
    s.write("twice.jsonl", &twice);
    s.write("sheet.csv", "id,prompt\n1,hello\n");
    for (args, code, says) in [
        (
            &["estimate", "twice.jsonl"][..],
            1,
            "twice.jsonl:6: custom_id 'a' is already used on line 1",
        ),
        (
            &["estimate", "sheet.csv"][..],
            2,
            "needs a model: pass --model",
        ),
        (&["estimate", "missing.jsonl"][..], 1, "missing.jsonl"),
    ] {
        let mut cmd = runner(s.dir.path());
        cmd.args(args);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!s.path("runner.db").exists());
}
