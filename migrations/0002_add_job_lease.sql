-- One runner per job. The runner working on a job holds its lease: it writes its identity here,
-- renews lease_expires_at while it runs and clears both when it ends. A runner that dies stops
-- renewing, so its lease expires; on the same host, one whose process is gone is taken over at
-- once (see src/store/lease.rs). Never edit this file once shipped: add a new migration instead.

-- "pid 1234 on host h (pidns 4026531836, run 9f86d081)"; NULL when no runner holds the job.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
-- unix ms; the lease is free once this time has passed.
ALTER TABLE jobs ADD COLUMN lease_expires_at INTEGER;
