-- What the autoscaler of a cluster last saw and decided (issue 10): one row
-- per cluster, written by the replica holding the cluster's autoscale job,
-- read by GET /v1/clusters/{cluster}/autoscaler.
CREATE TABLE autoscaler_status (
    cluster_id  uuid PRIMARY KEY REFERENCES clusters (id) ON DELETE CASCADE,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    snapshot    jsonb NOT NULL
);
