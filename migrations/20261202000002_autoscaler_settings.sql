-- Autoscaling node pools, the API part (issue 10). Additive: old replicas
-- ignore both columns.

-- A cluster's autoscaler settings (cluster::spec::AutoscalerSettings as
-- JSON). Fields left out read as their defaults, so existing clusters have
-- `{}`: mode builtin, expander least-waste and the rest of the defaults.
ALTER TABLE clusters ADD COLUMN autoscaler jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(autoscaler) = 'object');

-- A pool's rank for the `priority` expander; existing pools rank 0.
ALTER TABLE node_pools ADD COLUMN autoscaling_priority INT NOT NULL DEFAULT 0;
