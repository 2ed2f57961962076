-- Provider contract v2. Additive: old replicas ignore the new column and
-- never write the new state.

-- A machine the provider accepted but that is not running yet. The engine
-- observes it with `get` and never asks the provider to create it again.
ALTER TABLE machines DROP CONSTRAINT machines_state_check;
ALTER TABLE machines ADD CONSTRAINT machines_state_check
    CHECK (state IN ('pending', 'provisioning', 'running', 'draining', 'deleting', 'deleted', 'failed'));

-- The provider kind a job needs; only replicas that run it claim the job.
-- NULL: any replica may.
ALTER TABLE jobs ADD COLUMN provider TEXT;
UPDATE jobs SET provider = c.provider->>'kind'
FROM clusters c
WHERE jobs.kind = 'reconcile_cluster'
  AND jobs.payload->>'cluster_id' = c.id::text;
