-- Secrets of the service itself rather than of one cluster (issue 11: the
-- CA of the autoscaler's externalgrpc endpoint), sealed like `secrets`:
-- AES-256-GCM with the row's name bound in as associated data
-- (`service/<name>`), the key id beside each value. A row is written once
-- (INSERT ... ON CONFLICT DO NOTHING) and never updated, so replicas that
-- race to create one all read back the same winner.
CREATE TABLE service_secrets (
    name        TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
