-- The machine's SSH host key, pinned when the provider creates it.
ALTER TABLE machines ADD COLUMN host_key TEXT;
