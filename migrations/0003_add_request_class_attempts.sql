-- Retry budgets are per class: count each request's attempts by class since its budget was last
-- reset (by `runner retry-failed`, or when a configuration error's streak is requeued).
ALTER TABLE requests ADD COLUMN transient_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN auth_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN rate_limited_attempts INTEGER NOT NULL DEFAULT 0;

-- Existing journals: fill the counters from the attempts already recorded.
UPDATE requests SET
    transient_attempts = (SELECT count(*) FROM attempts a WHERE a.request_id = requests.id AND a.error_class = 'transient'),
    auth_attempts = (SELECT count(*) FROM attempts a WHERE a.request_id = requests.id AND a.error_class = 'auth_transient'),
    rate_limited_attempts = (SELECT count(*) FROM attempts a WHERE a.request_id = requests.id AND a.error_class = 'rate_limited');
