//! Token prices as the user gives them (`--price MODEL=IN,OUT`) and as the cost estimate uses
//! them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The price of one model, in USD per 1M tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per 1M input (prompt) tokens.
    pub input: f64,
    /// Per 1M output (completion) tokens.
    pub output: f64,
}

/// A `--price` value that is not `MODEL=IN,OUT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not MODEL=IN,OUT, e.g. gpt-4o=2.5,10 (USD per 1M tokens)")]
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
        let model = model.trim();
        if model.is_empty() {
            return Err(bad());
        }
        let price = Price {
            input: parse_usd(input).ok_or_else(bad)?,
            output: parse_usd(output).ok_or_else(bad)?,
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
