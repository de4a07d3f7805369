//! `--max-cost`: the most a job may spend, held before every send.
//!
//! What the job has spent is what its answers cost: the usage journaled for them, at their
//! model's price (half through the Batch API), from earlier runs and from this one as answers
//! come. What it may still spend is not known until the answers come, so each request is
//! counted at its worst case while it is in flight: its prompt as the tokenizer counts it (with
//! a margin for the server counting a little differently) plus the most output it allows. A
//! request goes only when what is spent, plus the worst case of what is in flight, plus its own
//! worst case stays within the cap; the first that does not fit stops the job (exit 5), with
//! what is in flight left to finish. So the cap holds whatever the answers turn out to be.

use crate::domain::JobId;
use crate::domain::price::{BATCH_PRICE_SHARE, PriceTable, Usd};
use crate::domain::tokens::Cost;
use crate::domain::{Price, Usage};
use crate::store::journal::{self, ModelTokens};
use crate::store::{StoreError, batches};
use crate::util::sync::lock;

/// The share added to a counted prompt for its worst case: servers count a few tokens more than
/// the tokenizer (message framing, a name, tools), and the cap must hold all the same.
const PROMPT_MARGIN: f64 = 0.10;
/// Tokens added to every counted prompt beyond the margin, for short prompts.
const PROMPT_SLACK: u64 = 16;

/// The spending cap of one run, shared by the dispatcher and the attempts.
#[derive(Debug)]
pub struct Spend {
    cap: f64,
    table: PriceTable,
    state: std::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What the answers journaled so far cost, USD.
    spent: f64,
    /// The worst case of the requests in flight, USD.
    reserved: f64,
    /// The most prompt tokens a server counted beyond the tokenizer's count and its margin:
    /// a chat template that adds a system prompt (llama.cpp's for SmolLM2 adds 23 tokens to
    /// every request). Learned from the answers, added to every later worst case.
    extra_prompt: f64,
}

/// Why a request may not go.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Its worst case does not fit under the cap.
    Cap {
        /// Spent so far, USD.
        spent: f64,
        /// The cap, USD.
        cap: f64,
    },
    /// Its model has no price: the cap cannot be held for it.
    Unpriced(String),
}

impl Refusal {
    /// Why the job stopped, and how to go on.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Cap { spent, cap } => format!(
                "the spending cap is reached: {} spent of --max-cost {} (by the answers' usage; \
                 the requests in flight could have cost the rest). `runner resume --max-cost \
                 MORE` goes on; nothing that succeeded is sent again",
                Usd(*spent),
                Usd(*cap)
            ),
            Refusal::Unpriced(model) => format!(
                "--max-cost cannot be held for model {model}, which has no price: pass --price \
                 {model}=IN,OUT (USD per 1M input and output tokens), then `runner resume`"
            ),
        }
    }
}

impl Spend {
    /// A cap of `cap` USD, with `spent` already spent by the job's earlier answers.
    pub fn new(cap: f64, table: PriceTable, spent: f64) -> Spend {
        Spend {
            cap,
            table,
            state: std::sync::Mutex::new(State {
                spent,
                ..State::default()
            }),
        }
    }

    /// The price of `model`, if the table has one.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.table.lookup(model).map(|(_, price)| price)
    }

    /// Holds the worst case of a request for `model` costing `cost` tokens; returns it (USD),
    /// to be settled when its answer is in.
    ///
    /// # Errors
    /// [`Refusal`] when it does not fit, or cannot be priced.
    pub fn reserve(&self, model: Option<&str>, cost: Cost) -> Result<f64, Refusal> {
        let model = model.unwrap_or_default();
        let price = self
            .price(model)
            .ok_or_else(|| Refusal::Unpriced(model.to_owned()))?;
        let mut state = lock(&self.state);
        let worst = worst_case(price, cost) + price.usd(state.extra_prompt, 0.0);
        if state.spent + state.reserved + worst > self.cap {
            return Err(Refusal::Cap {
                spent: state.spent,
                cap: self.cap,
            });
        }
        state.reserved += worst;
        Ok(worst)
    }

    /// Settles a request held at `reserved`: its answer's `usage` is what it cost.
    ///
    /// `counted` is the request's prompt as the tokenizer counted it: a server that counted
    /// more than its worst case allowed teaches every later worst case the difference.
    pub fn settle(&self, reserved: f64, usage: &Usage, counted: Option<u64>) {
        let cost = usage
            .model
            .as_deref()
            .and_then(|model| self.table.usage_cost(model, usage.billed(), false))
            .unwrap_or(0.0);
        let mut state = lock(&self.state);
        state.reserved = (state.reserved - reserved).max(0.0);
        state.spent += cost;
        if let (Some(counted), Some(served)) = (counted, usage.prompt_tokens) {
            let allowed = worst_prompt(counted);
            state.extra_prompt = state.extra_prompt.max(served as f64 - allowed);
        }
    }

    /// Spent so far, USD.
    pub fn spent(&self) -> f64 {
        lock(&self.state).spent
    }

    /// The cap, USD.
    pub fn cap(&self) -> f64 {
        self.cap
    }
}

/// The most a request costing `cost` tokens can cost at `price`, sent directly, USD: its prompt
/// with a margin for the server counting a little differently, and its largest answer.
pub fn worst_case(price: Price, cost: Cost) -> f64 {
    price.usd(worst_prompt(cost.prompt), cost.output as f64)
}

/// The most prompt tokens a server may count for a prompt the tokenizer counted as `counted`.
fn worst_prompt(counted: u64) -> f64 {
    counted as f64 * (1.0 + PROMPT_MARGIN) + PROMPT_SLACK as f64
}

/// What a job's answers cost by their journaled usage, USD (half through the Batch API).
///
/// # Errors
/// The model of answers that `table` has no price for.
pub fn journaled(answered: &[ModelTokens], table: &PriceTable) -> Result<f64, String> {
    answered.iter().try_fold(0.0, |spent, tokens| {
        let model = tokens.model.as_deref().unwrap_or_default();
        table
            .usage_cost(model, tokens.billed(), tokens.batch)
            .map(|usd| spent + usd)
            .ok_or_else(|| model.to_owned())
    })
}

/// `--max-cost` in a `--via batch` run: a chunk is only cut when the worst case of its requests
/// at the batch price, with what the job's answers cost and the worst case of the chunks still
/// open, fits under the cap. Held on the store thread, where the cut is made.
#[derive(Clone, Debug)]
pub struct BatchCap {
    /// The cap, USD.
    pub cap: f64,
    /// The prices.
    pub table: PriceTable,
    /// Output counted for a request that names no maximum.
    pub default_output: u64,
}

impl BatchCap {
    /// What is held now: what the answers cost, plus the worst case of the chunks whose
    /// results are not all imported (an imported answer is counted once it is, and its chunk's
    /// worst case no more).
    ///
    /// # Errors
    /// Store errors.
    pub fn committed(&self, conn: &rusqlite::Connection, job: JobId) -> Result<f64, StoreError> {
        let answered = journal::tokens_by_model(conn, job)?;
        // A model without a price was refused before the run.
        let spent = journaled(&answered, &self.table).unwrap_or(f64::INFINITY);
        Ok(spent + batches::open_worst_usd(conn, job)?)
    }

    /// The worst case of a request to `url` with `body` through the Batch API, USD; `None`
    /// without a price for its model.
    pub fn worst(&self, url: &str, body: &serde_json::Value) -> Option<f64> {
        let model = body.get("model").and_then(serde_json::Value::as_str)?;
        let (_, price) = self.table.lookup(model)?;
        let cost = crate::domain::tokens::cost(url, body, self.default_output);
        Some(worst_case(price, cost) * BATCH_PRICE_SHARE)
    }

    /// Why a batch job stopped at its cap, and how to go on.
    pub fn reason(&self, committed: f64) -> String {
        format!(
            "the spending cap is reached: {} spent of --max-cost {} (by the answers' usage), and \
             the next request's worst case does not fit. `runner resume --max-cost MORE` goes \
             on; nothing that succeeded is sent again",
            Usd(committed),
            Usd(self.cap)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        let mut table = PriceTable::built_in();
        table.set(
            "m".into(),
            Price {
                input: 1_000_000.0,
                output: 2_000_000.0,
                cached_input: None,
            },
        );
        table
    }

    fn usage(prompt: i64, completion: i64) -> Usage {
        Usage {
            model: Some("m".into()),
            cached_tokens: None,
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(prompt + completion),
        }
    }

    #[test]
    fn a_request_goes_only_when_its_worst_case_fits() {
        let spend = Spend::new(1000.0, table(), 0.0);
        let cost = Cost {
            prompt: 100,
            output: 200,
        };
        // Worst case: (100 × 1.1 + 16) × $1 + 200 × $2 = $526.
        let held = spend.reserve(Some("m"), cost).expect("fits");
        assert!((held - 526.0).abs() < 1e-9, "{held}");
        assert_eq!(
            spend.reserve(Some("m"), cost),
            Err(Refusal::Cap {
                spent: 0.0,
                cap: 1000.0
            }),
            "two worst cases are over the cap"
        );
        // The answer was short: what it cost is spent, the rest of its hold is free again.
        spend.settle(held, &usage(100, 10), Some(100));
        assert!((spend.spent() - 120.0).abs() < 1e-9);
        let second = spend.reserve(Some("m"), cost).expect("fits now");
        spend.settle(second, &usage(100, 200), Some(100));
        assert!((spend.spent() - 620.0).abs() < 1e-9);
        assert!(spend.reserve(Some("m"), cost).is_err(), "620 + 526 > 1000");
    }

    #[test]
    fn a_server_that_counts_more_prompt_teaches_the_worst_case() {
        let spend = Spend::new(1000.0, table(), 0.0);
        let cost = Cost {
            prompt: 16,
            output: 0,
        };
        // (16 × 1.1 + 16) × $1 = $33.6; the server's template made it 60 tokens.
        let held = spend.reserve(Some("m"), cost).expect("fits");
        assert!((held - 33.6).abs() < 1e-9, "{held}");
        spend.settle(held, &usage(60, 0), Some(16));
        let next = spend.reserve(Some("m"), cost).expect("fits");
        assert!(
            (next - 60.0).abs() < 1e-9,
            "the next worst case holds 60: {next}"
        );
        // A server that counts less teaches nothing.
        spend.settle(next, &usage(10, 0), Some(16));
        let after = spend.reserve(Some("m"), cost).expect("fits");
        assert!((after - 60.0).abs() < 1e-9, "{after}");
    }

    #[test]
    fn a_model_without_a_price_cannot_be_held() {
        let spend = Spend::new(10.0, table(), 0.0);
        let cost = Cost {
            prompt: 1,
            output: 1,
        };
        assert_eq!(
            spend.reserve(Some("house-model"), cost),
            Err(Refusal::Unpriced("house-model".into()))
        );
        assert!(spend.reserve(None, cost).is_err());
        let dated = spend.reserve(Some("gpt-4o-mini-2024-07-18"), cost);
        assert!(dated.is_ok(), "a dated snapshot is priced as its model");
    }
}
