//! Token prices: as the user gives them (`--price MODEL=IN,OUT`, `--prices FILE`), the
//! built-in table of OpenAI's published standard-tier prices, each dated the day it was taken,
//! and USD for people. The cost estimate of `status` and `report` (`inspect::prices`) and the
//! spending cap (`engine::spend`) both price with [`PriceTable`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The price of one model, in USD per 1M tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per 1M input (prompt) tokens.
    pub input: f64,
    /// Per 1M output (completion) tokens; reasoning tokens are among them.
    pub output: f64,
    /// Per 1M input tokens read from the prompt cache; `None`: at the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl Price {
    /// What `input` prompt tokens and `output` completion tokens cost at this price, USD, sent
    /// directly (the hosted Batch API takes [`BATCH_PRICE_SHARE`] of it).
    pub fn usd(self, input: f64, output: f64) -> f64 {
        (input * self.input + output * self.output) / 1_000_000.0
    }

    /// [`Self::usd`] with `cached` of the `input` tokens read from the prompt cache, at the
    /// cached-input price.
    pub fn usd_cached(self, input: f64, cached: f64, output: f64) -> f64 {
        let cached = cached.clamp(0.0, input);
        let cached_price = self.cached_input.unwrap_or(self.input);
        self.usd(input - cached, output) + cached * cached_price / 1_000_000.0
    }
}

/// A `--price` value that is not `MODEL=IN,OUT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not MODEL=IN,OUT or MODEL=IN,OUT,CACHED_IN, e.g. gpt-4o=2.5,10 or gpt-4o=2.5,10,1.25 (USD per 1M tokens)"
)]
pub struct BadPrice(pub String);

/// One `--price MODEL=IN,OUT`.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceOverride {
    /// The model name, as answers name it (a dated snapshot of it matches too).
    pub model: String,
    /// Its price.
    pub price: Price,
}

impl FromStr for PriceOverride {
    type Err = BadPrice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPrice(s.to_owned());
        let (model, numbers) = s.split_once('=').ok_or_else(bad)?;
        let (input, output) = numbers.split_once(',').ok_or_else(bad)?;
        let (output, cached) = match output.split_once(',') {
            Some((output, cached)) => (output, Some(parse_usd(cached).ok_or_else(bad)?)),
            None => (output, None),
        };
        let model = model.trim();
        if model.is_empty() {
            return Err(bad());
        }
        let price = Price {
            input: parse_usd(input).ok_or_else(bad)?,
            output: parse_usd(output).ok_or_else(bad)?,
            cached_input: cached,
        };
        Ok(PriceOverride {
            model: model.to_owned(),
            price,
        })
    }
}

/// A non-negative finite number.
pub fn parse_usd(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// USD per 1M tokens, standard tier: (model, input, cached input, output, the day the price
/// was taken from OpenAI's pages). A row whose price is checked again gets the day of that
/// check. The Batch API takes [`BATCH_PRICE_SHARE`] of each.
pub(crate) const BUILT_IN: [(&str, f64, Option<f64>, f64, &str); 14] = [
    // From OpenAI's pricing page.
    ("gpt-4o", 2.50, Some(1.25), 10.00, "2025-08-07"),
    ("gpt-4o-mini", 0.15, Some(0.075), 0.60, "2025-08-07"),
    ("gpt-4.1", 2.00, Some(0.50), 8.00, "2025-08-07"),
    ("gpt-4.1-mini", 0.40, Some(0.10), 1.60, "2025-08-07"),
    ("gpt-4.1-nano", 0.10, Some(0.025), 0.40, "2025-08-07"),
    ("gpt-5", 1.25, Some(0.125), 10.00, "2025-08-07"),
    ("gpt-5-mini", 0.25, Some(0.025), 2.00, "2025-08-07"),
    // From the models' pages on developers.openai.com (/api/docs/models/gpt-5.1, /gpt-5-nano,
    // /gpt-5-codex), standard tier.
    ("gpt-5.1", 1.25, Some(0.125), 10.00, "2026-12-01"),
    ("gpt-5-nano", 0.05, Some(0.005), 0.40, "2026-12-01"),
    ("gpt-5-codex", 1.25, Some(0.125), 10.00, "2026-12-01"),
    // From OpenAI's pricing page.
    ("o3", 2.00, Some(0.50), 8.00, "2025-08-07"),
    ("o4-mini", 1.10, Some(0.275), 4.40, "2025-08-07"),
    // Embeddings read no cache.
    ("text-embedding-3-small", 0.02, None, 0.0, "2025-08-07"),
    ("text-embedding-3-large", 0.13, None, 0.0, "2025-08-07"),
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
    /// A price below zero.
    #[error("{}: the price of {model} is below zero", path.display())]
    Negative {
        /// The file.
        path: PathBuf,
        /// The model.
        model: String,
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
pub struct Entry {
    /// The price.
    pub price: Price,
    /// The day a built-in price was taken from OpenAI's pages; `None` for a price the user gave
    /// (a file or a flag says no date).
    pub as_of: Option<&'static str>,
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
                .map(|&(model, input, cached_input, output, as_of)| {
                    let price = Price {
                        input,
                        output,
                        cached_input,
                    };
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
        PriceTable::built_in().overridden_by(file, overrides)
    }

    /// This table, then the prices file, then the `--price` overrides.
    ///
    /// # Errors
    /// [`PriceError`] when the file cannot be read or parsed.
    pub fn overridden_by(
        mut self,
        file: Option<&Path>,
        overrides: &[PriceOverride],
    ) -> Result<PriceTable, PriceError> {
        if let Some(path) = file {
            for (model, price) in read_prices_file(path)? {
                self.set(model, price);
            }
        }
        for o in overrides {
            self.set(o.model.clone(), o.price);
        }
        Ok(self)
    }

    /// Every model's entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Entry)> {
        self.prices
            .iter()
            .map(|(name, entry)| (name.as_str(), *entry))
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

    /// The entry of `model` (as [`Self::lookup`] finds it), with its date.
    pub fn find(&self, model: &str) -> Option<(&str, Entry)> {
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
pub(crate) fn is_snapshot_date(text: &str) -> bool {
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
            #[serde(flatten)]
            price: Price,
        }
        let shape: Shape = serde_json::from_str(&text).map_err(|source| PriceError::Json {
            path: path.to_owned(),
            source,
        })?;
        let prices: Vec<(String, Price)> = match shape {
            Shape::Map(map) => map.into_iter().collect(),
            Shape::List(rows) => rows.into_iter().map(|r| (r.model, r.price)).collect(),
        };
        let valid = |v: f64| v.is_finite() && v >= 0.0;
        if let Some((model, _)) = prices.iter().find(|(_, p)| {
            !valid(p.input) || !valid(p.output) || p.cached_input.is_some_and(|c| !valid(c))
        }) {
            return Err(PriceError::Negative {
                path: path.to_owned(),
                model: model.clone(),
            });
        }
        return Ok(prices);
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
        let [model, input, output, cached] = [0, 1, 2, 3].map(|i| record.get(i).unwrap_or(""));
        if !(3..=4).contains(&record.len()) || model.is_empty() {
            return Err(csv_error(format!(
                "expected 3 or 4 fields, got {}",
                record.len()
            )));
        }
        let input = parse_usd(input).ok_or_else(|| csv_error(format!("bad price '{input}'")))?;
        let output = parse_usd(output).ok_or_else(|| csv_error(format!("bad price '{output}'")))?;
        let cached_input = match cached {
            "" => None,
            text => Some(parse_usd(text).ok_or_else(|| csv_error(format!("bad price '{text}'")))?),
        };
        prices.push((
            model.to_owned(),
            Price {
                input,
                output,
                cached_input,
            },
        ));
    }
    Ok(prices)
}

/// An answer's billed tokens, as the journal has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTokens {
    /// `prompt_tokens` / `input_tokens`.
    pub prompt: Option<i64>,
    /// Of them, read from the prompt cache.
    pub cached: Option<i64>,
    /// `completion_tokens` / `output_tokens`, reasoning included.
    pub completion: Option<i64>,
}

/// The hosted Batch API's price, as a share of the direct price of the same model.
pub const BATCH_PRICE_SHARE: f64 = 0.5;

impl PriceTable {
    /// What an answer's usage cost, USD: its prompt tokens (those read from the prompt cache
    /// at the cached-input price) and completion tokens (reasoning tokens are among them) at
    /// `model`'s price, at [`BATCH_PRICE_SHARE`] of it through the Batch API. `None` without a
    /// price, or without usage.
    pub fn usage_cost(&self, model: &str, tokens: UsageTokens, batch: bool) -> Option<f64> {
        let (_, price) = self.lookup(model)?;
        if tokens.prompt.is_none() && tokens.completion.is_none() {
            return None;
        }
        let count = |t: Option<i64>| t.unwrap_or(0).max(0) as f64;
        let usd = price.usd_cached(
            count(tokens.prompt),
            count(tokens.cached),
            count(tokens.completion),
        );
        Some(match batch {
            true => usd * BATCH_PRICE_SHARE,
            false => usd,
        })
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
