//! A new `--model` for the requests that are still to be sent: `runner resume --model`, or a
//! resubmit with another `--model`, fixes a job that stopped on a wrong model in place. A
//! request's key is its line's own content (see [`crate::input::InputOptions::own_content_keys`]),
//! so the fix never makes a second copy of a request: the pending requests whose model came
//! from the old `--model`, or that name none, get the new one; a model a line wrote itself is
//! left as it is.

use rusqlite::{Connection, params};
use serde_json::Value;

use super::StoreError;
use super::db::atomically;
use crate::domain::JobId;
use crate::input::model_was_filled;

/// Which requests took their model from `--model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Those whose body without its model hashes to their key: a job keyed by its lines' own
    /// content (every job made since the key left the model out).
    ByHash,
    /// Those whose model is the old `--model`: a job stored before, whose key holds the model
    /// and cannot tell a filled model from one its line wrote.
    ByName,
}

/// Gives `model` to the job's pending POST requests whose model came from `old` (the job's
/// previous `--model`), or that have none. Returns how many changed. One transaction: a crash
/// leaves every request with the old model or every one with the new.
///
/// # Errors
/// Database errors.
pub fn refill(
    conn: &Connection,
    job: JobId,
    old: Option<&str>,
    model: &str,
    filled: Filled,
) -> Result<u64, StoreError> {
    atomically(conn, |c| {
        let mut read = c.prepare(
            "SELECT id, method, url, body, body_hash FROM requests
             WHERE job_id = ?1 AND state = 'pending' AND method = 'POST'
               AND json_valid(body) AND json_extract(body, '$.model') IS ?2",
        )?;
        let mut write = c.prepare("UPDATE requests SET body = ?2 WHERE id = ?1")?;
        let mut changed = 0;
        let mut rows = read.query(params![job.0, old])?;
        while let Some(row) = rows.next()? {
            let (id, method, url, body, hash): (i64, String, String, String, String) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            let from_flag = match (old, filled) {
                (None, _) | (Some(_), Filled::ByName) => true,
                (Some(_), Filled::ByHash) => model_was_filled(&method, &url, &body, &hash),
            };
            if !from_flag {
                continue;
            }
            let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            object.insert("model".into(), model.into());
            write.execute(params![id, Value::Object(object).to_string()])?;
            changed += 1;
        }
        Ok(changed)
    })
}
