-- Answers too large for the memory budget (README "Memory"): the request's `response` is NULL
-- and its text is here, as a BLOB of UTF-8 written in pieces with incremental BLOB I/O. That
-- only works without loading the value when it is the last column of its row: SQLite builds a
-- row whole in memory, leaving out only a zero-filled tail (`zeroblob`), and `response` sits in
-- the middle of `requests`. Every journaled attempt replaces or removes its request's row here.
CREATE TABLE spilled_responses (
    request_id INTEGER PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    body       BLOB NOT NULL
);
