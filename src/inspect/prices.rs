//! Token prices and the cost estimate of `runner status` and `runner report`.
//!
//! A built-in table of OpenAI's published standard-tier prices (no cached-input or batch
//! discount) for common models, each dated the day it was taken from OpenAI's pages,
//! overridable by `--prices FILE` and `--price MODEL=IN,OUT`. The estimate names the dates of
//! the prices it used. Every figure is an estimate: prices change, and the answer's usage is all
//! the journal knows.

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::domain::price::{BATCH_PRICE_SHARE, Entry, PriceError, PriceTable, Usd};
pub use crate::domain::{Price, PriceOverride};
use crate::store::journal::ModelTokens;

/// The cost of one model's tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCost {
    /// The model as the answers named it.
    pub model: String,
    /// The price entry used.
    pub priced_as: String,
    /// Its price.
    pub price: Price,
    /// The day the built-in price was taken from OpenAI's pages; `None` for a price you gave.
    pub price_date: Option<&'static str>,
    /// Estimated USD.
    pub usd: f64,
    /// Answered through the hosted Batch API, at half the price.
    pub batch: bool,
}

/// The estimated cost of a job's successful requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostEstimate {
    /// Sum over the priced models, USD.
    pub usd: f64,
    /// Per priced model.
    pub models: Vec<ModelCost>,
    /// Models with tokens but no price: not in the sum.
    pub unpriced: Vec<String>,
    /// Which prices were used: the dates of the built-in ones, and yours (see
    /// [`CostEstimate::new`]).
    pub source: String,
    /// What the batch-run requests would have cost more if sent directly, USD.
    pub batch_saving: f64,
}

impl CostEstimate {
    /// Prices `tokens` with `table`. The source names the dates of the built-in prices used
    /// (each date with its models when they differ) and the models priced by you; with no model
    /// priced, it describes the table.
    pub fn new(table: &PriceTable, tokens: &[ModelTokens]) -> CostEstimate {
        let mut estimate = CostEstimate {
            usd: 0.0,
            models: Vec::new(),
            unpriced: Vec::new(),
            source: table.source(),
            batch_saving: 0.0,
        };
        for t in tokens {
            let model = t.model.clone().unwrap_or_else(|| "(unnamed)".to_owned());
            match table.find(&model) {
                Some((name, Entry { price, as_of })) => {
                    let direct =
                        price.usd_cached(t.prompt as f64, t.cached as f64, t.completion as f64);
                    let usd = match t.batch {
                        true => direct * BATCH_PRICE_SHARE,
                        false => direct,
                    };
                    estimate.usd += usd;
                    estimate.batch_saving += direct - usd;
                    estimate.models.push(ModelCost {
                        model,
                        priced_as: name.to_owned(),
                        price,
                        price_date: as_of,
                        usd,
                        batch: t.batch,
                    });
                }
                None if t.total > 0 || t.prompt > 0 || t.completion > 0 => {
                    estimate.unpriced.push(model);
                }
                None => {}
            }
        }
        if !estimate.models.is_empty() {
            estimate.source = sources(&estimate.models);
        }
        estimate
    }
}

/// One row of `runner prices`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PriceRow {
    /// The model (a dated snapshot of it is priced the same).
    pub model: String,
    /// USD per 1M input tokens, sent directly.
    pub input: f64,
    /// USD per 1M input tokens read from the prompt cache (`null`: as input).
    pub cached_input: Option<f64>,
    /// USD per 1M output tokens, reasoning included.
    pub output: f64,
    /// The same three through the hosted Batch API.
    pub batch_input: f64,
    /// See `batch_input`.
    pub batch_cached_input: Option<f64>,
    /// See `batch_input`.
    pub batch_output: f64,
    /// The day a built-in price was taken from OpenAI's pages; `null` for yours.
    pub as_of: Option<&'static str>,
}

/// `runner prices`: the table in use, built-in rows with their dates, yours marked.
///
/// # Errors
/// An unreadable or invalid prices file; a write failure.
pub fn list(args: &crate::cli::PricesArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let table = PriceTable::with_overrides(args.prices.prices.as_deref(), &args.prices.price)?;
    let rows: Vec<PriceRow> = table
        .entries()
        .map(|(model, Entry { price, as_of })| PriceRow {
            model: model.to_owned(),
            input: price.input,
            cached_input: price.cached_input,
            output: price.output,
            batch_input: price.input * BATCH_PRICE_SHARE,
            batch_cached_input: price.cached_input.map(|c| c * BATCH_PRICE_SHARE),
            batch_output: price.output * BATCH_PRICE_SHARE,
            as_of,
        })
        .collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    // Up to four decimals, at least two: 0.0125, 0.075, 10.00.
    let usd = |v: f64| {
        let text = format!("{v:.4}");
        let trimmed = text.trim_end_matches('0');
        match trimmed.split_once('.') {
            Some((_, decimals)) if decimals.len() < 2 => format!("{v:.2}"),
            _ => trimmed.to_owned(),
        }
    };
    let cached = |v: Option<f64>| v.map_or_else(|| "as input".to_owned(), usd);
    let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "{:width$}  {:>8}  {:>9}  {:>8}   {:>23}  as of",
        "model", "input", "cached", "output", "via batch: in/cached/out"
    )?;
    for r in &rows {
        let batch = format!(
            "{}/{}/{}",
            usd(r.batch_input),
            cached(r.batch_cached_input),
            usd(r.batch_output)
        );
        writeln!(
            out,
            "{:width$}  {:>8}  {:>9}  {:>8}   {:>23}  {}",
            r.model,
            usd(r.input),
            cached(r.cached_input),
            usd(r.output),
            batch,
            r.as_of.unwrap_or("yours")
        )?;
    }
    writeln!(
        out,
        "USD per 1M tokens, OpenAI's standard tier ({}). Reasoning tokens are billed as output. \
         A dated snapshot (gpt-4o-2024-08-06) is priced as its model. Yours go over these: \
         --price MODEL=IN,OUT[,CACHED] or --prices FILE, on submit (stored with the job), \
         estimate, status, export and report.",
        table.source()
    )?;
    Ok(())
}

/// "built-in prices of 2025-08-07", "built-in prices of 2025-08-07 for gpt-4o and gpt-4o-mini,
/// of 2026-12-01 for gpt-5.1", "… and your prices for my-model", "your prices".
fn sources(models: &[ModelCost]) -> String {
    let mut by_date: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut yours: Vec<&str> = Vec::new();
    for m in models {
        let names = match m.price_date {
            Some(day) => by_date.entry(day).or_default(),
            None => &mut yours,
        };
        if !names.contains(&m.priced_as.as_str()) {
            names.push(&m.priced_as);
        }
    }
    let built_in = match by_date.len() {
        0 => None,
        1 => by_date
            .keys()
            .next()
            .map(|day| format!("built-in prices of {day}")),
        _ => Some(format!(
            "built-in prices {}",
            by_date
                .iter()
                .map(|(day, names)| format!("of {day} for {}", and_list(names)))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    match (built_in, yours.is_empty()) {
        (Some(built_in), true) => built_in,
        (Some(built_in), false) => format!("{built_in} and your prices for {}", and_list(&yours)),
        (None, _) => "your prices".to_owned(),
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[&str]) -> String {
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_owned(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::price::{BUILT_IN, UsageTokens, is_snapshot_date};
    use rstest::rstest;

    #[rstest]
    #[case("gpt-4o", Some("gpt-4o"))]
    #[case("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini"))]
    #[case("gpt-4o-2024-08-06", Some("gpt-4o"))]
    #[case("gpt-4.1-nano-2025-04-14", Some("gpt-4.1-nano"))]
    #[case("gpt-5.1-2025-11-13", Some("gpt-5.1"))]
    #[case("gpt-5-nano", Some("gpt-5-nano"))]
    #[case("gpt-5.1-codex", None)]
    #[case("o3-mini", None)]
    #[case("gpt-4o-audio-preview", None)]
    #[case("test-model", None)]
    fn dated_snapshots_are_priced_as_their_model(
        #[case] model: &str,
        #[case] expected: Option<&str>,
    ) {
        let table = PriceTable::built_in();
        assert_eq!(table.lookup(model).map(|(name, _)| name), expected);
    }

    #[test]
    fn overrides_parse_and_win() {
        let o: PriceOverride = "test-model=1,2.5".parse().expect("parses");
        assert_eq!(
            o.price,
            Price {
                input: 1.0,
                output: 2.5,
                cached_input: None,
            }
        );
        for bad in ["x", "x=1", "=1,2", "x=a,2", "x=-1,2"] {
            assert!(bad.parse::<PriceOverride>().is_err(), "{bad}");
        }
        let table = PriceTable::with_overrides(None, &[o]).expect("table");
        assert!(table.source().contains("overrides"));
        let tokens = [ModelTokens {
            cached: 0,
            model: Some("test-model".into()),
            requests: 1,
            prompt: 1_000_000,
            completion: 2_000_000,
            total: 3_000_000,
            batch: false,
        }];
        let estimate = CostEstimate::new(&table, &tokens);
        assert!((estimate.usd - 6.0).abs() < 1e-9, "{estimate:?}");
        let batched = [ModelTokens {
            batch: true,
            ..tokens[0].clone()
        }];
        let half = CostEstimate::new(&table, &batched);
        assert!((half.usd - 3.0).abs() < 1e-9, "{half:?}");
        assert!((half.batch_saving - 3.0).abs() < 1e-9, "{half:?}");
        let plain = CostEstimate::new(&PriceTable::built_in(), &tokens);
        assert_eq!(plain.unpriced, ["test-model"]);
        assert_eq!(plain.usd, 0.0);
    }

    #[rstest]
    #[case::json_map("p.json", r#"{"m": {"input": 1, "output": 2}}"#)]
    #[case::json_list("p.json", r#"[{"model": "m", "input": 1, "output": 2}]"#)]
    #[case::csv_header("p.csv", "model,input,output\nm, 1, 2\n")]
    #[case::csv_plain("p.txt", "# my prices\nm,1,2\n")]
    fn prices_files_in_json_or_csv(#[case] name: &str, #[case] text: &str) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let table = PriceTable::with_overrides(Some(&path), &[]).expect("reads");
        assert_eq!(
            table.lookup("m").map(|(_, p)| p),
            Some(Price {
                input: 1.0,
                output: 2.0,
                cached_input: None,
            })
        );
    }

    #[test]
    fn a_bad_csv_row_names_its_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("p.csv");
        std::fs::write(&path, "model,input,output\nm,1,2\nn,cheap,2\n").expect("write");
        let err = PriceTable::with_overrides(Some(&path), &[]).expect_err("bad row");
        assert!(
            err.to_string().contains("p.csv:3: bad price 'cheap'"),
            "{err}"
        );
    }

    fn tokens(model: &str, batch: bool) -> ModelTokens {
        ModelTokens {
            cached: 0,
            model: Some(model.into()),
            requests: 1,
            prompt: 1_000_000,
            completion: 1_000_000,
            total: 2_000_000,
            batch,
        }
    }

    #[test]
    fn every_built_in_price_carries_its_own_date() {
        for (model, _, _, _, as_of) in BUILT_IN {
            assert!(is_snapshot_date(as_of), "{model}: {as_of}");
        }
        let table = PriceTable::built_in();
        let old = CostEstimate::new(&table, &[tokens("gpt-4o-2024-08-06", false)]);
        assert_eq!(old.models[0].price_date, Some("2025-08-07"));
        assert_eq!(old.source, "built-in prices of 2025-08-07");
        let new = CostEstimate::new(&table, &[tokens("gpt-5.1", true)]);
        assert_eq!(new.models[0].price_date, Some("2026-12-01"));
        assert_eq!(new.source, "built-in prices of 2026-12-01");
    }

    #[test]
    fn models_priced_on_different_days_show_their_own_dates() {
        let table = PriceTable::built_in();
        let both = [
            tokens("gpt-4o", false),
            tokens("gpt-5.1", false),
            tokens("gpt-4o-mini", false),
            tokens("gpt-4o", true),
        ];
        let estimate = CostEstimate::new(&table, &both);
        assert_eq!(
            estimate.source,
            "built-in prices of 2025-08-07 for gpt-4o and gpt-4o-mini, of 2026-12-01 for gpt-5.1"
        );
        let dates: Vec<_> = estimate.models.iter().map(|m| m.price_date).collect();
        assert_eq!(
            dates,
            [
                Some("2025-08-07"),
                Some("2026-12-01"),
                Some("2025-08-07"),
                Some("2025-08-07")
            ]
        );
    }

    #[test]
    fn your_prices_are_named_as_yours_and_undated() {
        let mine: PriceOverride = "gpt-5.1=1,2".parse().expect("parses");
        let table = PriceTable::with_overrides(None, &[mine]).expect("table");
        let estimate =
            CostEstimate::new(&table, &[tokens("gpt-4o", false), tokens("gpt-5.1", false)]);
        assert_eq!(estimate.models[1].price_date, None);
        assert_eq!(
            estimate.source,
            "built-in prices of 2025-08-07 and your prices for gpt-5.1"
        );
        let only = CostEstimate::new(&table, &[tokens("gpt-5.1", false)]);
        assert_eq!(only.source, "your prices");
        let none = CostEstimate::new(&PriceTable::built_in(), &[tokens("test-model", false)]);
        assert_eq!(none.source, "built-in prices of 2025-08-07 to 2026-12-01");
    }

    #[test]
    fn cached_input_is_billed_at_its_own_price_and_batch_at_half() {
        let table = PriceTable::built_in();
        // gpt-5.1: $1.25 in, $0.125 cached in, $10 out per 1M tokens.
        let tokens = UsageTokens {
            prompt: Some(1_000_000),
            cached: Some(800_000),
            completion: Some(100_000),
        };
        let usd = table.usage_cost("gpt-5.1", tokens, false).expect("priced");
        assert!(
            (usd - (0.2 * 1.25 + 0.8 * 0.125 + 0.1 * 10.0)).abs() < 1e-9,
            "{usd}"
        );
        let batch = table.usage_cost("gpt-5.1", tokens, true).expect("priced");
        assert!((batch - usd / 2.0).abs() < 1e-12);
        // A model without a cached price bills the cached tokens as any input.
        let embeddings = UsageTokens {
            prompt: Some(1_000_000),
            cached: Some(1_000_000),
            completion: None,
        };
        let usd = table
            .usage_cost("text-embedding-3-small", embeddings, false)
            .expect("priced");
        assert!((usd - 0.02).abs() < 1e-12, "{usd}");
        // Cached tokens never count for more than the prompt.
        let odd = UsageTokens {
            prompt: Some(10),
            cached: Some(1_000_000),
            completion: Some(0),
        };
        assert!(table.usage_cost("gpt-5.1", odd, false).expect("priced") < 1e-5);
    }

    #[test]
    fn a_cached_price_can_be_given_by_flag_and_by_file() {
        let o: PriceOverride = "m=1,2,0.5".parse().expect("parses");
        assert_eq!(o.price.cached_input, Some(0.5));
        assert!("m=1,2,x".parse::<PriceOverride>().is_err());
        let dir = tempfile::tempdir().expect("dir");
        for (name, text) in [
            (
                "p.json",
                r#"{"m": {"input": 1, "output": 2, "cached_input": 0.5}}"#,
            ),
            ("q.csv", "model,input,output,cached_input\nm,1,2,0.5\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let table = PriceTable::with_overrides(Some(&path), &[]).expect(name);
            let (_, price) = table.lookup("m").expect("m");
            assert_eq!(price.cached_input, Some(0.5), "{name}");
        }
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"[{"model": "m", "input": -1, "output": 2}]"#).expect("write");
        let err = PriceTable::with_overrides(Some(&path), &[]).expect_err("negative");
        assert!(
            err.to_string().contains("the price of m is below zero"),
            "{err}"
        );
    }

    #[test]
    fn dollars_read_well() {
        assert_eq!(Usd(12.345).to_string(), "$12.35");
        assert_eq!(Usd(0.1234).to_string(), "$0.123");
        assert_eq!(Usd(0.00123).to_string(), "$0.0012");
        assert_eq!(Usd(0.0).to_string(), "$0.00");
    }
}
