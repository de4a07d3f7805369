-- The lines of an ingest in progress. A big file is read in many short write transactions (so
-- other processes sharing the database are never locked out for long); its lines wait here,
-- invisible to every query over `requests`, until one final transaction publishes them all. A
-- runner that dies mid-ingest leaves rows here: the next submit or resume of the job (which
-- holds the job's lease) deletes them. `action` is what the publish does with the line:
-- `add` a new request, `keep` a known one (its line may move), `replace` the marker of a line
-- that was invalid and is fixed now, record an `invalid` line as a marker, or nothing
-- (`kept_invalid`: an invalid line whose custom_id holds a real request).
-- Never edit this file once shipped: add a new migration instead.
CREATE TABLE ingest_staging (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs (id),
    key           TEXT NOT NULL,
    line          INTEGER NOT NULL,
    action        TEXT NOT NULL
                  CHECK (action IN ('add', 'keep', 'replace', 'invalid', 'kept_invalid')),
    custom_id     TEXT,
    method        TEXT,
    url           TEXT,
    body          TEXT,
    body_hash     TEXT,
    metadata      TEXT,
    headers       TEXT,
    error_code    TEXT,
    error_message TEXT,
    UNIQUE (job_id, key)
);
