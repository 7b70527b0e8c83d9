-- 0013: two-phase reclaim (issue 16, controlplane/internal/coord/pool.go).
-- transit is what a reclaim took from the member's allowance that the
-- member has not yet confirmed enforcing: still held, not free. seq
-- versions alloc (it rises with every change, from the database's clock in
-- microseconds), so a proxy ignores allowances that reach it out of order
-- and its confirmation names the allowance it enforces.
ALTER TABLE lease_allocs
    ADD COLUMN transit bigint NOT NULL DEFAULT 0,
    ADD COLUMN seq bigint NOT NULL DEFAULT 0;
