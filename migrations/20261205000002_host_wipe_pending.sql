-- A host whose machine left while the host did not answer: released from
-- the machine (so the cluster's deletion or repair goes on) but not free.
-- Claims skip it until the ssh provider's upkeep has wiped it.
ALTER TABLE hosts ADD COLUMN wipe_pending_since TIMESTAMPTZ;
CREATE INDEX hosts_wipe_pending ON hosts (wipe_pending_since) WHERE wipe_pending_since IS NOT NULL;
