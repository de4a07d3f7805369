-- The hosted Batch API (`--via batch`): a job's pending requests are cut into chunks, one input
-- file and one batch each. A chunk's row is written before and after every call that changes it
-- on the server, so that a crash never creates a second batch for the same chunk and never loses
-- track of one. Timestamps are unix milliseconds (UTC).
-- Never edit this file once shipped: add a new migration instead.

CREATE TABLE batch_chunks (
    id             INTEGER PRIMARY KEY,
    job_id         INTEGER NOT NULL REFERENCES jobs (id),
    -- 1, 2, 3 … within the job; the batch's metadata names it
    seq            INTEGER NOT NULL,
    -- random; the batch's metadata carries it, so a batch whose creation was not recorded is
    -- found again in the server's list
    token          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    model          TEXT NOT NULL,
    lines          INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    -- blake3 of the exact input file (rebuilt from the requests, byte for byte, at upload)
    hash           TEXT NOT NULL,
    -- cut | uploading | uploaded | creating | submitted | ended | imported | dropped
    state          TEXT NOT NULL,
    input_file_id  TEXT,
    batch_id       TEXT,
    -- the batch's status and request_counts at the last poll
    batch_status   TEXT,
    total          INTEGER,
    completed      INTEGER,
    failed         INTEGER,
    output_file_id TEXT,
    error_file_id  TEXT,
    -- the validation errors of a failed batch, as JSON
    errors         TEXT,
    cut_at         INTEGER NOT NULL,
    submitted_at   INTEGER,
    ended_at       INTEGER,
    imported_at    INTEGER,
    -- no call on this chunk before this time (poll interval, backoff after a failed call)
    next_call_at   INTEGER NOT NULL DEFAULT 0,
    -- consecutive failed calls of each retried class, for the same budgets as requests
    transient_calls INTEGER NOT NULL DEFAULT 0,
    auth_calls      INTEGER NOT NULL DEFAULT 0,
    rate_limited_calls INTEGER NOT NULL DEFAULT 0,
    invalid_calls   INTEGER NOT NULL DEFAULT 0,
    polls          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, seq)
);

CREATE INDEX batch_chunks_job ON batch_chunks (job_id, state);

-- Every Files and Batches call, as the attempts table journals every request's HTTP attempt.
CREATE TABLE batch_calls (
    id              INTEGER PRIMARY KEY,
    chunk_id        INTEGER NOT NULL REFERENCES batch_chunks (id),
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    -- upload | create | find | poll | download | cancel | delete
    operation       TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER NOT NULL,
    http_status     INTEGER,
    -- the taxonomy's class for a failed call; NULL for a call that did what it was for
    error_class     TEXT,
    error_code      TEXT,
    error_message   TEXT,
    -- what the call gave: a file or batch id, or the batch's status
    result          TEXT,
    key_fingerprint TEXT
);

CREATE INDEX batch_calls_chunk ON batch_calls (chunk_id, started_at);

-- The chunk a request was last put in; with state 'batched' it is waiting in that chunk's batch.
ALTER TABLE requests ADD COLUMN batch_chunk_id INTEGER REFERENCES batch_chunks (id);
CREATE INDEX requests_batch_chunk ON requests (batch_chunk_id, state) WHERE batch_chunk_id IS NOT NULL;

-- The batch whose output or error file (or end) an attempt was read from; NULL for a request
-- sent directly.
ALTER TABLE attempts ADD COLUMN batch_id TEXT;
