-- Whether the job's file is still being read into `requests`. A new job's file is checked
-- whole first (nothing is written or sent before it is known good), then its requests are
-- inserted in short transactions while the first ones are already sent (see
-- `store::ingest::direct`). The flag is set with the first of them and cleared with the last;
-- a runner that stops in between leaves it set, and the job's next `resume` reads the rest of
-- the file before it goes on. Never edit this file once shipped: add a new migration instead.
ALTER TABLE jobs ADD COLUMN reading_input INTEGER NOT NULL DEFAULT 0;
