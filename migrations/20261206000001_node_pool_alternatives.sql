-- A pool's alternative machine types: launched instead of its machine type,
-- in order, when the provider has no capacity for it (aws only).
ALTER TABLE node_pools ADD COLUMN alternative_machine_types TEXT[] NOT NULL DEFAULT '{}';
