//! Token prices and the cost estimate of `runner status` and `runner report`.
//!
//! A built-in table of OpenAI's published standard-tier prices (no cached-input or batch
//! discount) for common models, each dated the day it was taken from OpenAI's pages,
//! overridable by `--prices FILE` and `--price MODEL=IN,OUT`. The estimate names the dates of
//! the prices it used. Every figure is an estimate: prices change, and the answer's usage is all
//! the journal knows.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::price::parse_usd;
pub use crate::domain::{Price, PriceOverride};
use crate::store::journal::ModelTokens;

/// USD per 1M tokens, standard tier: (model, input, output, the day the price was taken from
/// OpenAI's pages). A row whose price is checked again gets the day of that check.
const BUILT_IN: [(&str, f64, f64, &str); 14] = [
    // From OpenAI's pricing page.
    ("gpt-4o", 2.50, 10.00, "2025-08-07"),
    ("gpt-4o-mini", 0.15, 0.60, "2025-08-07"),
    ("gpt-4.1", 2.00, 8.00, "2025-08-07"),
    ("gpt-4.1-mini", 0.40, 1.60, "2025-08-07"),
    ("gpt-4.1-nano", 0.10, 0.40, "2025-08-07"),
    ("gpt-5", 1.25, 10.00, "2025-08-07"),
    ("gpt-5-mini", 0.25, 2.00, "2025-08-07"),
    // From the models' pages on developers.openai.com (/api/docs/models/gpt-5.1, /gpt-5-nano,
    // /gpt-5-codex), standard tier.
    ("gpt-5.1", 1.25, 10.00, "2026-12-01"),
    ("gpt-5-nano", 0.05, 0.40, "2026-12-01"),
    ("gpt-5-codex", 1.25, 10.00, "2026-12-01"),
    // From OpenAI's pricing page.
    ("o3", 2.00, 8.00, "2025-08-07"),
    ("o4-mini", 1.10, 4.40, "2025-08-07"),
    ("text-embedding-3-small", 0.02, 0.0, "2025-08-07"),
    ("text-embedding-3-large", 0.13, 0.0, "2025-08-07"),
];

/// Errors reading prices.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The prices file cannot be read.
    #[error("{}: cannot read prices file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON does not have the expected shape.
    #[error(
        "{}: not a prices file: {source}: write {{\"MODEL\": {{\"input\": IN, \"output\": OUT}}}} in USD per 1M tokens",
        path.display()
    )]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A CSV row is not `model,input,output`.
    #[error("{}:{line}: {message}: write rows as model,input,output in USD per 1M tokens", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based row.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// The prices in force: the built-in table with any overrides applied.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    prices: BTreeMap<String, Entry>,
    overridden: bool,
}

/// One model's price and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    price: Price,
    /// The day a built-in price was taken from OpenAI's pages; `None` for a price the user gave
    /// (a file or a flag says no date).
    as_of: Option<&'static str>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::built_in()
    }
}

impl PriceTable {
    /// The built-in table.
    pub fn built_in() -> PriceTable {
        PriceTable {
            prices: BUILT_IN
                .iter()
                .map(|&(model, input, output, as_of)| {
                    let price = Price { input, output };
                    let as_of = Some(as_of);
                    (model.to_owned(), Entry { price, as_of })
                })
                .collect(),
            overridden: false,
        }
    }

    /// The built-in table, then the prices file, then the `--price` overrides.
    ///
    /// # Errors
    /// [`PriceError`] when the file cannot be read or parsed.
    pub fn with_overrides(
        file: Option<&Path>,
        overrides: &[PriceOverride],
    ) -> Result<PriceTable, PriceError> {
        let mut table = PriceTable::built_in();
        if let Some(path) = file {
            for (model, price) in read_prices_file(path)? {
                table.set(model, price);
            }
        }
        for o in overrides {
            table.set(o.model.clone(), o.price);
        }
        Ok(table)
    }

    /// Sets one model's price.
    pub fn set(&mut self, model: String, price: Price) {
        self.prices.insert(model, Entry { price, as_of: None });
        self.overridden = true;
    }

    /// The price of `model`: an exact entry, or the entry it is a dated snapshot of
    /// (`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`, but `o3-mini` is not `o3`).
    pub fn lookup(&self, model: &str) -> Option<(&str, Price)> {
        self.find(model).map(|(name, entry)| (name, entry.price))
    }

    fn find(&self, model: &str) -> Option<(&str, Entry)> {
        if let Some((name, entry)) = self.prices.get_key_value(model) {
            return Some((name.as_str(), *entry));
        }
        self.prices
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(is_snapshot_date)
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(name, entry)| (name.as_str(), *entry))
    }

    /// What the table is, for the reader when no price of it was used: the dates its built-in
    /// prices span, and whether overrides were applied.
    pub fn source(&self) -> String {
        let dates: Vec<&str> = self.prices.values().filter_map(|e| e.as_of).collect();
        let built_in = match (dates.iter().min(), dates.iter().max()) {
            (Some(first), Some(last)) if first != last => {
                format!("built-in prices of {first} to {last}")
            }
            (Some(day), _) => format!("built-in prices of {day}"),
            (None, _) => "your prices".to_owned(),
        };
        match self.overridden && !dates.is_empty() {
            true => format!("{built_in} with your overrides"),
            false => built_in,
        }
    }
}

/// `2024-07-18`.
fn is_snapshot_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// JSON (`{"MODEL": {"input": IN, "output": OUT}}` or a list of `{"model", "input", "output"}`)
/// or CSV (`model,input,output`, header optional), told apart by the first character.
fn read_prices_file(path: &Path) -> Result<Vec<(String, Price)>, PriceError> {
    let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim_start().starts_with(['{', '[']) {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Map(BTreeMap<String, Price>),
            List(Vec<Row>),
        }
        #[derive(Deserialize)]
        struct Row {
            model: String,
            input: f64,
            output: f64,
        }
        let shape: Shape = serde_json::from_str(&text).map_err(|source| PriceError::Json {
            path: path.to_owned(),
            source,
        })?;
        return Ok(match shape {
            Shape::Map(map) => map.into_iter().collect(),
            Shape::List(rows) => rows
                .into_iter()
                .map(|r| {
                    (
                        r.model,
                        Price {
                            input: r.input,
                            output: r.output,
                        },
                    )
                })
                .collect(),
        });
    }
    read_prices_csv(path, &text)
}

fn read_prices_csv(path: &Path, text: &str) -> Result<Vec<(String, Price)>, PriceError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut prices = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map_or(index as u64 + 1, csv::Position::line);
        let csv_error = |message: String| PriceError::Csv {
            path: path.to_owned(),
            line,
            message,
        };
        let record = record.map_err(|e| csv_error(e.to_string()))?;
        if index == 0 && record.get(0) == Some("model") {
            continue;
        }
        let [model, input, output] = [0, 1, 2].map(|i| record.get(i).unwrap_or(""));
        if record.len() != 3 || model.is_empty() {
            return Err(csv_error(format!(
                "expected 3 fields, got {}",
                record.len()
            )));
        }
        let input = parse_usd(input).ok_or_else(|| csv_error(format!("bad price '{input}'")))?;
        let output = parse_usd(output).ok_or_else(|| csv_error(format!("bad price '{output}'")))?;
        prices.push((model.to_owned(), Price { input, output }));
    }
    Ok(prices)
}

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

/// The hosted Batch API's price, as a share of the direct price of the same model.
pub const BATCH_PRICE_SHARE: f64 = 0.5;

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
                    let direct = (t.prompt as f64 * price.input
                        + t.completion as f64 * price.output)
                        / 1_000_000.0;
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

/// USD for people: `$12.34`, `$0.123`, `$0.0012`, `<$0.0001`.
pub struct Usd(pub f64);

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == 0.0 {
            f.write_str("$0.00")
        } else if v < 0.0001 {
            f.write_str("<$0.0001")
        } else if v < 0.01 {
            write!(f, "${v:.4}")
        } else if v < 1.0 {
            write!(f, "${v:.3}")
        } else {
            write!(f, "${v:.2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                output: 2.5
            }
        );
        for bad in ["x", "x=1", "=1,2", "x=a,2", "x=-1,2"] {
            assert!(bad.parse::<PriceOverride>().is_err(), "{bad}");
        }
        let table = PriceTable::with_overrides(None, &[o]).expect("table");
        assert!(table.source().contains("overrides"));
        let tokens = [ModelTokens {
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
                output: 2.0
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
        for (model, _, _, as_of) in BUILT_IN {
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
    fn dollars_read_well() {
        assert_eq!(Usd(12.345).to_string(), "$12.35");
        assert_eq!(Usd(0.1234).to_string(), "$0.123");
        assert_eq!(Usd(0.00123).to_string(), "$0.0012");
        assert_eq!(Usd(0.0).to_string(), "$0.00");
    }
}
