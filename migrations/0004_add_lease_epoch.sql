-- Fencing. Every acquisition of a job's lease increments lease_epoch, and every write a runner
-- makes for the job checks, inside the same transaction, that the epoch is still the one it got
-- when it took the lease (see src/store/mod.rs, "fencing"). A runner that was suspended past its
-- lease and woke up after another runner took the job over finds a newer epoch: its writes are
-- refused and it stops. The epoch only ever grows; releasing a lease leaves it as it is.
-- Never edit this file once shipped: add a new migration instead.
ALTER TABLE jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
