-- What the spending cap (`--max-cost`) and the bill need to be exact.
-- Never edit this file once shipped: add a new migration instead.

-- The prompt tokens of a request's answer that the server read from its prompt cache
-- (`usage.prompt_tokens_details.cached_tokens`, `usage.input_tokens_details.cached_tokens`),
-- billed at the cached-input price. NULL when the answer did not say.
ALTER TABLE requests ADD COLUMN cached_tokens INTEGER;

-- `--via batch` with `--max-cost`: the worst case of a chunk's requests at the batch price, USD,
-- held against the cap until its results are imported. NULL for a chunk cut without a cap.
ALTER TABLE batch_chunks ADD COLUMN worst_usd REAL;
