//! `runner estimate` and `submit --dry-run`, the real binary: the file read and checked as
//! submit reads it, tokens counted with the tokenizer, prices both ways, nothing written.

use serde_json::Value;

use runner::domain::tokens;

use crate::support::bin::{output, output_within, runner, text};

/// Room for a debug build's 5,000 lines beside the rest of the suite.
const SLOW: std::time::Duration = std::time::Duration::from_secs(240);
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

/// A chat line for gpt-5.1 of a few hundred bytes, varied as labelling prompts are: a system
/// instruction, a review with numbers, punctuation and now and then a word that is not English.
fn review_line(i: usize) -> String {
    const ADJECTIVES: [&str; 8] = [
        "crushed",
        "late",
        "excellent",
        "mediocre",
        "overpriced",
        "flawless",
        "noisy",
        "sturdy",
    ];
    const NOUNS: [&str; 8] = [
        "blender", "parcel", "headset", "kettle", "backpack", "monitor", "Fahrrad", "lamp",
    ];
    const SAYINGS: [&str; 6] = [
        "I would not buy it again, honestly.",
        "Works as described; shipping took forever!",
        "Five stars — my kids love it.",
        "The manual was in Japanese only (取扱説明書).",
        "Customer support replied within 2 hours, problem solved.",
        "Arrived damaged, refund still pending after 3 weeks...",
    ];
    let pick = |n: usize, len: usize| (i.wrapping_mul(2_654_435_761) >> n) % len;
    let review = format!(
        "Review #{i}: the {} {} arrived {} days after ordering; rated {}/5. The buyer wrote: \"{}\" \
         Label the sentiment as positive, negative or neutral, and give one short reason.",
        ADJECTIVES[pick(3, 8)],
        NOUNS[pick(7, 8)],
        pick(11, 14),
        1 + pick(13, 5),
        SAYINGS[pick(17, 6)],
    );
    serde_json::json!({
        "custom_id": format!("review-{i}"),
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-5.1",
            "max_completion_tokens": 200,
            "messages": [
                {"role": "system", "content": "You label product reviews for a quality team. Answer with the label, a colon, and one sentence."},
                {"role": "user", "content": review},
            ],
        },
    })
    .to_string()
}

/// The must-show of the estimate: on 5,000 chat lines for gpt-5.1 its input tokens are within 2%
/// of what the server's tokenizer-based usage reports for the same lines, and both prices hold
/// the bill: the job's cost by its usage lies in the estimate's range, and the batch price is
/// half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_of_5000_lines_is_within_2_percent_of_the_servers_usage() {
    const LINES: usize = 5_000;
    let lines: String = (0..LINES).map(|i| review_line(i) + "\n").collect();
    let fx = Fixture::for_job("reviews").input(lines).start().await;

    let out = output_within(fx.bin(&["estimate", "reviews.jsonl", "--json"]), SLOW).await;
    let estimate = json(&out);
    assert_eq!(estimate["requests"], LINES);
    let group = &estimate["groups"][0];
    assert_eq!(group["model"], "gpt-5.1");
    assert_eq!(group["priced_as"], "gpt-5.1");
    let estimated_input = group["input_tokens"].as_f64().expect("input tokens");
    assert_eq!(group["output_tokens_max"], 200 * LINES as u64);

    // The real binary, with room for a debug build beside the rest of the suite.
    let out = output_within(fx.bin_submit(&[]), SLOW).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let served_input = query_i64(&fx.db(), "SELECT sum(prompt_tokens) FROM requests") as f64;
    let served_output = query_i64(&fx.db(), "SELECT sum(completion_tokens) FROM requests") as f64;
    assert!(
        served_input > 50.0 * LINES as f64,
        "real counts: {served_input}"
    );
    let off = (estimated_input - served_input).abs() / served_input;
    assert!(
        off <= 0.02,
        "estimated {estimated_input} input tokens, the server counted {served_input}: {:.2}% off",
        off * 100.0
    );

    // gpt-5.1: $1.25 in and $10 out per 1M tokens; the Batch API at half.
    let billed = (served_input * 1.25 + served_output * 10.0) / 1e6;
    let direct = &estimate["usd_direct"];
    let at_most = direct["at_most"].as_f64().expect("priced");
    assert!(
        billed <= at_most,
        "billed {billed} over the estimate's most {at_most}"
    );
    assert!(
        billed >= at_most * 0.1,
        "billed {billed}, estimated at most {at_most}"
    );
    let batch = estimate["usd_batch"]["at_most"].as_f64().expect("priced");
    assert!((batch - at_most / 2.0).abs() < 1e-9, "{batch} vs {at_most}");
    let status = output(fx.bin(&["status", "--db", &fx.db_arg(), "--json"])).await;
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let shown = status["cost"]["estimate_usd"]
        .as_f64()
        .expect("status cost");
    assert!(
        (shown - billed).abs() < 1e-6,
        "status {shown}, usage {billed}"
    );

    // The submit's own opening estimate is kept beside the actual.
    let at_submit = status["cost"]["estimated_at_submit"]
        .as_str()
        .expect("kept");
    assert!(at_submit.starts_with("5,000 requests, ≈ "), "{at_submit}");
    assert!(at_submit.contains("from its first 1,000"), "{at_submit}");

    // The text says both ways.
    let text_out = output_within(fx.bin(&["estimate", "reviews.jsonl"]), SLOW).await;
    let shown = text(&text_out.stdout);
    assert!(
        shown.contains("5,000 × gpt-5.1 to /v1/chat/completions"),
        "{shown}"
    );
    assert!(shown.contains("cost, sent directly: ≈ $"), "{shown}");
    assert!(shown.contains("cost, --via batch:   ≈ $"), "{shown}");
    fx.shutdown().await;
}

/// `runner prices` lists the table in use, yours marked; a prices file that is not one is a bad
/// argument (exit 2) wherever it is given, named with its line.
#[tokio::test]
async fn prices_lists_the_table_and_a_bad_prices_file_is_exit_2() {
    let s = Scratch::new();
    let mut cmd = runner(s.dir.path());
    cmd.args(["prices", "--json", "--price", "house-model=1,2,0.25"]);
    let rows = json(&output(cmd).await);
    let rows = rows.as_array().expect("a list");
    let row = |model: &str| {
        rows.iter()
            .find(|r| r["model"] == model)
            .unwrap_or_else(|| panic!("{model} listed"))
    };
    let mine = row("house-model");
    assert_eq!(mine["as_of"], Value::Null, "yours carry no date");
    assert_eq!(mine["cached_input"], 0.25);
    assert_eq!(mine["batch_output"], 1.0, "half through the Batch API");
    let gpt = row("gpt-5.1");
    assert_eq!(gpt["input"], 1.25);
    assert_eq!(gpt["cached_input"], 0.125);
    assert_eq!(gpt["as_of"], "2026-12-01");

    let mut cmd = runner(s.dir.path());
    cmd.arg("prices");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("gpt-5.1"));

    s.write("jobs.jsonl", LINES);
    s.write("bad.csv", "model,input,output\nhouse-model,cheap,2\n");
    s.write("bad.json", r#"{"house-model": {"input": -1, "output": 2}}"#);
    for (args, says) in [
        (
            &["prices", "--prices", "bad.csv"][..],
            "bad.csv:2: bad price 'cheap'",
        ),
        (
            &["estimate", "jobs.jsonl", "--prices", "bad.json"][..],
            "bad.json: the price of house-model is below zero",
        ),
        (&["submit", "jobs.jsonl", "--max-cost", "-3"][..], "-3"),
        (&["submit", "jobs.jsonl", "--max-cost", "lots"][..], "lots"),
    ] {
        let mut cmd = runner(s.dir.path());
        cmd.args(args);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!s.path("runner.db").exists(), "nothing was sent or written");
}

/// With no limit given, the estimate's time uses the limits the same server announced to
/// another job of the database sent with the same key, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_uses_limits_the_server_announced_to_an_earlier_job() {
    let fx = Fixture::for_job("first")
        .mock(runner::mock::MockConfig {
            requests_per_second: Some(100.0),
            ..runner::mock::MockConfig::default()
        })
        .prompts(0..20)
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, runner::Exit::Success);
    fx.scratch.write("second.jsonl", LINES);
    let url = fx.url();
    let mut cmd = fx.bin(&["estimate", "second.jsonl", "--base-url", &url, "--json"]);
    cmd.env("OPENAI_API_KEY", "sk-test-0123456789abcdef");
    let estimate = json(&output(cmd).await);
    let (limits, source) = (&estimate["limits"][0], &estimate["limits"][1]);
    assert!(
        limits.as_str().is_some_and(|l| l.contains("6000/min")),
        "{estimate}"
    );
    assert_eq!(
        source.as_str(),
        Some(format!("announced by {url} to job first").as_str())
    );
    // 5 requests at 6,000 a minute.
    assert_eq!(estimate["seconds_at_limits"], 1);
    fx.shutdown().await;
}
