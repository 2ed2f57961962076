-- A tenant's vCPU quota: counted as nodes are (each pool at its size or
-- autoscaling max, whichever is larger) but weighted by the machine type's
-- vCPUs, control planes included. Existing tenants get the service default.
ALTER TABLE tenants ADD COLUMN max_cpus INT NOT NULL DEFAULT 400 CHECK (max_cpus >= 0);
