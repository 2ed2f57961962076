-- Kubeforge foundation schema. Forward-only; later changes are additive
-- (expand, then contract) so old and new replicas can share the database.

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    max_clusters  INT  NOT NULL CHECK (max_clusters >= 0),
    max_nodes     INT  NOT NULL CHECK (max_nodes >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE clusters (
    id                    UUID PRIMARY KEY,
    tenant                TEXT NOT NULL REFERENCES tenants (id),
    name                  TEXT NOT NULL,
    kubernetes_version    TEXT NOT NULL,
    provider              JSONB NOT NULL,
    control_plane         JSONB NOT NULL,
    network               JSONB NOT NULL,
    labels                JSONB NOT NULL DEFAULT '{}',
    deletion_protection   BOOLEAN NOT NULL DEFAULT false,
    phase                 TEXT NOT NULL,
    conditions            JSONB NOT NULL DEFAULT '[]',
    endpoint              TEXT,
    certificates          JSONB NOT NULL DEFAULT '{}',
    generation            BIGINT NOT NULL DEFAULT 1,
    observed_generation   BIGINT NOT NULL DEFAULT 0,
    resource_version      BIGINT NOT NULL DEFAULT 1,
    deletion_requested_at TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX clusters_live_name ON clusters (tenant, name) WHERE deleted_at IS NULL;
CREATE INDEX clusters_tenant_id ON clusters (tenant, id) WHERE deleted_at IS NULL;

CREATE TABLE node_pools (
    id                    UUID PRIMARY KEY,
    tenant                TEXT NOT NULL REFERENCES tenants (id),
    cluster_id            UUID NOT NULL REFERENCES clusters (id),
    name                  TEXT NOT NULL,
    machine_type          TEXT NOT NULL,
    size                  INT  NOT NULL CHECK (size >= 0),
    autoscaling_min       INT,
    autoscaling_max       INT,
    labels                JSONB NOT NULL DEFAULT '{}',
    taints                JSONB NOT NULL DEFAULT '[]',
    phase                 TEXT NOT NULL,
    conditions            JSONB NOT NULL DEFAULT '[]',
    generation            BIGINT NOT NULL DEFAULT 1,
    observed_generation   BIGINT NOT NULL DEFAULT 0,
    resource_version      BIGINT NOT NULL DEFAULT 1,
    deletion_requested_at TIMESTAMPTZ,
    deleted_at            TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((autoscaling_min IS NULL) = (autoscaling_max IS NULL))
);
CREATE UNIQUE INDEX node_pools_live_name ON node_pools (cluster_id, name) WHERE deleted_at IS NULL;

-- The machine ledger. A row is committed BEFORE the provider is called; its
-- id is the idempotency token the provider receives, so a retried create
-- finds the machine it already made instead of making a second one.
CREATE TABLE machines (
    id            UUID PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (id),
    cluster_id    UUID NOT NULL REFERENCES clusters (id),
    node_pool_id  UUID REFERENCES node_pools (id),
    role          TEXT NOT NULL CHECK (role IN ('control_plane', 'worker')),
    name          TEXT NOT NULL,
    provider      TEXT NOT NULL,
    machine_type  TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'running', 'deleting', 'deleted', 'failed')),
    provider_id   TEXT,
    address       TEXT,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ
);
CREATE INDEX machines_cluster ON machines (cluster_id) WHERE deleted_at IS NULL;

CREATE TABLE operations (
    id            UUID PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (id),
    cluster_id    UUID NOT NULL REFERENCES clusters (id),
    node_pool_id  UUID REFERENCES node_pools (id),
    type          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    target_generation BIGINT NOT NULL,
    error         JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX operations_cluster ON operations (cluster_id, created_at DESC);

CREATE TABLE operation_steps (
    operation_id  UUID NOT NULL REFERENCES operations (id),
    position      INT  NOT NULL,
    name          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    message       TEXT,
    error         JSONB,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (operation_id, name)
);

CREATE TABLE events (
    id            BIGSERIAL PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (id),
    cluster_id    UUID NOT NULL REFERENCES clusters (id),
    node_pool_id  UUID REFERENCES node_pools (id),
    operation_id  UUID REFERENCES operations (id),
    type          TEXT NOT NULL CHECK (type IN ('Normal', 'Warning')),
    reason        TEXT NOT NULL,
    message       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_cluster ON events (cluster_id, id DESC);

-- A POST with an Idempotency-Key stores its response here, in the same
-- transaction as the work, so a replay returns exactly the first answer.
CREATE TABLE idempotency_keys (
    tenant          TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INT  NOT NULL,
    response_body   JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);

-- Secrets are AEAD-encrypted; key_id names the key so keys can rotate.
CREATE TABLE secrets (
    id          UUID PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants (id),
    cluster_id  UUID NOT NULL REFERENCES clusters (id),
    name        TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (cluster_id, name)
);

-- The job queue. Workers claim with FOR UPDATE SKIP LOCKED and hold a lease
-- they renew while running; a job whose lease ran out is taken again.
-- dedupe_key makes "reconcile cluster C" one row: a request that arrives
-- while it runs sets rerun instead of queueing a second, concurrent run.
CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          JSONB NOT NULL DEFAULT '{}',
    dedupe_key       TEXT UNIQUE,
    operation_id     UUID REFERENCES operations (id),
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'dead')),
    rerun            BOOLEAN NOT NULL DEFAULT false,
    attempts         INT NOT NULL DEFAULT 0,
    max_attempts     INT NOT NULL,
    run_after        TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      UUID,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    enqueued_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX jobs_ready ON jobs (run_after) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';

-- The `ssh` provider's pool of bring-your-own machines, managed by a
-- platform admin. Credentials are sealed like secrets; the host key is
-- pinned at registration and never learned on the fly.
CREATE TABLE hosts (
    id                 UUID PRIMARY KEY,
    address            TEXT NOT NULL,
    port               INT  NOT NULL CHECK (port BETWEEN 1 AND 65535),
    ssh_user           TEXT NOT NULL,
    host_key           TEXT NOT NULL,
    labels             JSONB NOT NULL DEFAULT '{}',
    credential_kind    TEXT NOT NULL CHECK (credential_kind IN ('private_key', 'password')),
    credential_key_id  TEXT NOT NULL,
    credential_nonce   BYTEA NOT NULL,
    credential_sealed  BYTEA NOT NULL,
    claimed_by         UUID REFERENCES machines (id),
    lease_expires_at   TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (address, port)
);
