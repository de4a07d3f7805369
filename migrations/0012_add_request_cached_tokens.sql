-- The prompt tokens of a request's answer that the server read from its prompt cache
-- (`usage.prompt_tokens_details.cached_tokens`, `usage.input_tokens_details.cached_tokens`):
-- billed at the cached-input price, so that the cost of `status`, `export` and `--max-cost`
-- matches the bill. NULL when the answer did not say.
-- Never edit this file once shipped: add a new migration instead.
ALTER TABLE requests ADD COLUMN cached_tokens INTEGER;
