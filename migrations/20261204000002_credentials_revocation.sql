-- Tenant credentials that can be taken back (issue 13 point 12).
--
-- A cluster's credential generation names the Kubernetes groups its
-- kubeconfigs carry (kubeforge:cluster-admins:g<N>, kubeforge:editors:g<N>,
-- kubeforge:viewers:g<N>); the engine binds the current generation's groups
-- in the cluster and records it as applied. POST .../credentials/revoke
-- moves the generation on, and the old groups lose every binding.
-- Existing clusters start at generation 1, applied 0: their next pass binds it.
ALTER TABLE clusters
    ADD COLUMN credential_generation BIGINT NOT NULL DEFAULT 1
        CHECK (credential_generation >= 1),
    ADD COLUMN credential_generation_applied BIGINT NOT NULL DEFAULT 0;

-- Revoked API tokens, by jti, kept until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    -- The tenant of the token, when the revoker showed the token itself.
    tenant      TEXT,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_by  TEXT NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
