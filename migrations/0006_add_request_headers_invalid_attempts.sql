-- A Batch line's own `"headers": {…}` (an extension of the Batch format), checked when read, as a
-- JSON object text with lower-case names; NULL when the line had none. Merged over the job's
-- `--header`s when the request is sent.
ALTER TABLE requests ADD COLUMN headers TEXT;

-- The `invalid_response` class (a 2xx whose body is neither JSON nor a complete event stream) has
-- its own retry budget, counted per request like the other retried classes (see 0003). Existing
-- journals have no attempt of that class: 0 is right for every row.
-- Never edit this file once shipped: add a new migration instead.
ALTER TABLE requests ADD COLUMN invalid_attempts INTEGER NOT NULL DEFAULT 0;
