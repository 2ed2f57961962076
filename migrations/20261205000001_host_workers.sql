-- Registered hosts as workers: what a host has (declared at registration
-- or measured on first contact), why it was last found unfit, and which
-- hosts a node pool may claim.

-- The host's Kubernetes resource map ({"cpu": "8", "memory": "32Gi", ...});
-- NULL until declared or measured.
ALTER TABLE hosts ADD COLUMN capacity JSONB;
ALTER TABLE hosts ADD COLUMN capacity_source TEXT
    CHECK (capacity_source IN ('declared', 'measured'));
ALTER TABLE hosts ADD CONSTRAINT hosts_capacity_source_set
    CHECK ((capacity IS NULL) = (capacity_source IS NULL));
-- The last reason the host could not serve ({code, message}) and when it was
-- found; claims skip the host for a while after problem_at.
ALTER TABLE hosts ADD COLUMN problem JSONB;
ALTER TABLE hosts ADD COLUMN problem_at TIMESTAMPTZ;
ALTER TABLE hosts ADD CONSTRAINT hosts_problem_at_set
    CHECK ((problem IS NULL) = (problem_at IS NULL));

-- Labels a registered host must carry to serve the pool; {} = any host.
ALTER TABLE node_pools ADD COLUMN host_selector JSONB NOT NULL DEFAULT '{}';
