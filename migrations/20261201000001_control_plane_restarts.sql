-- What the engine last saw of each control-plane member's systemd units
-- (restart counter, invocation id, whether a crash is already accounted
-- for, when the machine's systemd started) and the component restarts it
-- counted recently: see kubeforge_cluster::restarts. NULL until the first
-- observation, which is only a baseline. Kept in the database because any
-- replica may run the next reconcile of the cluster.
-- Additive: old replicas ignore the column.
ALTER TABLE machines ADD COLUMN component_restarts JSONB;
