-- A spreadsheet job's layout: the header's columns in order, and which of them hold the
-- custom_id and the prompt, as JSON (`input::TableLayout`). Set when the job's file is read
-- (NULL for JSONL and text files), so that `runner export` writes the input's columns back
-- first, with their names, and the answer columns after them. Every other column of a row is
-- in its request's `metadata` (migration 0005).
-- Never edit this file once shipped: add a new migration instead.
ALTER TABLE jobs ADD COLUMN input_layout TEXT;
