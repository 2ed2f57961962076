-- What a worker last applied of the cluster's pod network (the sha256 of its
-- routes, pod range, script and unit; kubeforge_cluster::routes::digest).
-- NULL: never applied; the engine applies it on its next pass.
ALTER TABLE machines ADD COLUMN network_sha TEXT;
