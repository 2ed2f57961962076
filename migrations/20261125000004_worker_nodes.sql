-- Worker node pools: how long a drain may take, when a sick node is
-- replaced, and what the engine last observed of each machine's node.
-- Additive: old replicas ignore the new columns and keep their defaults.
ALTER TABLE node_pools
    ADD COLUMN drain_timeout_seconds INT NOT NULL DEFAULT 300
        CHECK (drain_timeout_seconds BETWEEN 0 AND 3600),
    ADD COLUMN auto_repair BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN repair_after_seconds INT NOT NULL DEFAULT 300
        CHECK (repair_after_seconds BETWEEN 10 AND 86400);

-- node_state is NULL until the engine has looked at the node; then one of
-- 'joining', 'ready', 'not_ready', 'draining', 'missing'.
ALTER TABLE machines
    ADD COLUMN node_state TEXT,
    ADD COLUMN unhealthy_since TIMESTAMPTZ,
    ADD COLUMN unhealthy_reason TEXT,
    ADD COLUMN drain_started_at TIMESTAMPTZ,
    ADD COLUMN joined_at TIMESTAMPTZ;

-- A worker being removed is cordoned and drained before it is deleted.
ALTER TABLE machines DROP CONSTRAINT machines_state_check;
ALTER TABLE machines ADD CONSTRAINT machines_state_check
    CHECK (state IN ('pending', 'running', 'draining', 'deleting', 'deleted', 'failed'));
