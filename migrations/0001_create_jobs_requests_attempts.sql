-- The first schema. Never edit this file once shipped: add a new migration instead.
-- Timestamps are unix milliseconds (UTC).

CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    input_path        TEXT NOT NULL,
    -- blake3 of the input file as last ingested
    input_fingerprint TEXT,
    -- JSON of the run settings (base URL, endpoint, limits); never holds a key
    config            TEXT NOT NULL,
    -- created | running | completed | stopped | interrupted
    state             TEXT NOT NULL,
    state_reason      TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE TABLE requests (
    id                INTEGER PRIMARY KEY,
    job_id            INTEGER NOT NULL REFERENCES jobs (id),
    -- custom_id when the input gave one, else derived from the body's content
    key               TEXT NOT NULL,
    custom_id         TEXT,
    line              INTEGER NOT NULL,
    method            TEXT NOT NULL,
    url               TEXT NOT NULL,
    body              TEXT NOT NULL,
    body_hash         TEXT NOT NULL,
    -- pending | in_flight | succeeded | failed
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL DEFAULT 0,
    in_flight_since   INTEGER,
    -- the last answer (or transport failure) seen for this request
    http_status       INTEGER,
    error_class       TEXT,
    error_code        TEXT,
    error_message     TEXT,
    x_request_id      TEXT,
    response          TEXT,
    model             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    total_tokens      INTEGER,
    latency_ms        INTEGER,
    finished_at       INTEGER,
    UNIQUE (job_id, key)
);

-- The dispatch queue: due pending requests of a job, oldest deadline first, then input order (rowid).
CREATE INDEX requests_dispatch ON requests (job_id, state, next_attempt_at);
CREATE INDEX requests_line ON requests (job_id, line);

-- Append-only journal: one row per HTTP attempt, written with the request's state change.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    request_id      INTEGER NOT NULL REFERENCES requests (id),
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    number          INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER NOT NULL,
    latency_ms      INTEGER,
    -- answered | not_sent | outcome_unknown | interrupted
    outcome         TEXT NOT NULL,
    http_status     INTEGER,
    -- the classification (see README "Error taxonomy"); NULL for interrupted attempts
    error_class     TEXT,
    error_code      TEXT,
    error_message   TEXT,
    x_request_id    TEXT,
    -- "sk-…abcd" or a label: never the key itself
    key_fingerprint TEXT,
    UNIQUE (request_id, number)
);

CREATE INDEX attempts_job ON attempts (job_id, started_at);

-- Job-level events: started, stopped, interrupted, completed (later: breaker transitions).
CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT
);

CREATE INDEX events_job ON events (job_id, at);
