-- A request's `metadata` (a plain line's top-level `metadata`, or a Batch line's `metadata`
-- object), kept as JSON text for the export; never sent. NULL when the line had none.
-- Never edit this file once shipped: add a new migration instead.
ALTER TABLE requests ADD COLUMN metadata TEXT;
