//! What a file's requests hold, counted: requests, prompt tokens (the model's tokenizer, as
//! the pacing counts them) and output tokens as a range, by endpoint and model, and priced
//! directly and through the hosted Batch API. `runner estimate` tallies a whole file; every
//! `submit` tallies the first lines of a new file for its opening line.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Prompt;
use crate::domain::price::{BATCH_PRICE_SHARE, PriceTable};
use crate::domain::tokens;

/// The share of a request's largest answer that an answer is expected to take, when no
/// finished job says better (`--like JOB`). Answers often stop well short of `max_tokens`;
/// half of it is a round guess that errs towards paying more.
pub const EXPECTED_OUTPUT_SHARE: f64 = 0.5;

/// USD expected, and at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Range {
    /// With the expected output.
    pub expected: f64,
    /// With every request's largest answer.
    pub at_most: f64,
}

impl Range {
    fn add(&mut self, other: Range) {
        self.expected += other.expected;
        self.at_most += other.at_most;
    }

    /// Both ends times `factor`.
    pub fn times(self, factor: f64) -> Range {
        Range {
            expected: self.expected * factor,
            at_most: self.at_most * factor,
        }
    }
}

/// Requests of one endpoint and model.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The model the requests name (none: the server picks).
    pub model: Option<String>,
    /// How many requests.
    pub requests: u64,
    /// Their prompt tokens, counted with the model's tokenizer.
    pub input_tokens: u64,
    /// The most output they may take, all together.
    pub output_tokens_max: u64,
    /// The output expected of them.
    pub output_tokens_expected: u64,
    /// The price entry their model is priced as, if any.
    pub priced_as: Option<String>,
    /// USD sent directly. `None` without a price.
    pub usd_direct: Option<Range>,
    /// USD through the hosted Batch API.
    pub usd_batch: Option<Range>,
}

/// How the expected output of a request is found.
#[derive(Clone, Copy, Debug)]
pub enum Share {
    /// This share of the request's largest answer.
    Fraction(f64),
    /// A finished job's average answer, in tokens (never more than the request's largest).
    Like(f64),
}

/// Requests counted so far, by endpoint and model.
#[derive(Debug)]
pub struct Tally {
    groups: BTreeMap<(String, Option<String>), Group>,
    default_output: u64,
    share: Share,
    exact: bool,
    /// Requests counted.
    pub requests: u64,
}

/// A tally priced: its groups with their USD, the sums, and the models without a price.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Priced {
    /// Per endpoint and model.
    pub groups: Vec<Group>,
    /// Sum of the priced groups, sent directly.
    pub usd_direct: Range,
    /// The same through the hosted Batch API.
    pub usd_batch: Range,
    /// Models with no price: not in the sums.
    pub unpriced: Vec<String>,
}

impl Tally {
    /// An empty tally: a request without an output limit may take `default_output` tokens,
    /// and is expected to take its `share`. Prompts are counted with the model's tokenizer
    /// when `exact`, else at a token per 4 bytes (no tokenizer loaded: see
    /// [`tokens::Encoding::Bytes`]).
    pub fn new(default_output: u64, share: Share, exact: bool) -> Tally {
        Tally {
            groups: BTreeMap::new(),
            default_output,
            share,
            exact,
            requests: 0,
        }
    }

    /// Counts one request.
    pub fn add(&mut self, prompt: &Prompt) {
        let body: Value = serde_json::from_str(&prompt.body).unwrap_or(Value::Null);
        let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
        let cost = match self.exact {
            true => tokens::cost(&prompt.url, &body, self.default_output),
            false => tokens::cost_by_size(&prompt.url, &body, self.default_output),
        };
        let expected = match self.share {
            Share::Fraction(f) => (cost.output as f64 * f).round() as u64,
            Share::Like(avg) => (avg.round() as u64).min(cost.output),
        };
        let group = self
            .groups
            .entry((prompt.url.clone(), model.clone()))
            .or_insert_with(|| Group {
                endpoint: prompt.url.clone(),
                model,
                ..Group::default()
            });
        group.requests += 1;
        group.input_tokens += cost.prompt;
        group.output_tokens_max += cost.output;
        group.output_tokens_expected += expected;
        self.requests += 1;
    }

    /// Prices each group directly and through the Batch API with `table`, and sums them.
    pub fn price(self, table: &PriceTable) -> Priced {
        let mut priced = Priced::default();
        for mut group in self.groups.into_values() {
            match group.model.as_deref().and_then(|m| table.lookup(m)) {
                Some((name, price)) => {
                    let usd = |output: u64| price.usd(group.input_tokens as f64, output as f64);
                    let direct = Range {
                        expected: usd(group.output_tokens_expected),
                        at_most: usd(group.output_tokens_max),
                    };
                    let batch = direct.times(BATCH_PRICE_SHARE);
                    group.priced_as = Some(name.to_owned());
                    group.usd_direct = Some(direct);
                    group.usd_batch = Some(batch);
                    priced.usd_direct.add(direct);
                    priced.usd_batch.add(batch);
                }
                None => {
                    let name = group.model.as_deref().unwrap_or("(no model)");
                    if !priced.unpriced.iter().any(|m| m == name) {
                        priced.unpriced.push(name.to_owned());
                    }
                }
            }
            priced.groups.push(group);
        }
        priced
    }
}
