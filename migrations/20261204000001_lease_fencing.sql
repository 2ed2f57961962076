-- Leases that cannot run a job twice (issue 13 point 5).
--
-- A fencing token per claim: `claim` increments it, and every write a
-- worker makes on behalf of a job first checks, in its own transaction
-- and under a share lock on the job row, that the row still has the
-- worker's owner and fence and an unexpired lease. A worker that lost its
-- lease (paused, cut off, or even re-claiming its own job) holds an older
-- fence and writes nothing. Additive: an older replica ignores the column.
ALTER TABLE jobs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;

-- At most one live machine of a name in a cluster: a second worker's
-- insert of the same machine fails instead of making it twice. Ledger
-- rows that already break this would make the index fail to build; say
-- which, rather than guess which one is the real machine.
DO $$
DECLARE
    dup TEXT;
BEGIN
    SELECT string_agg(cluster_id || '/' || name, ', ') INTO dup
    FROM (SELECT cluster_id, name FROM machines WHERE deleted_at IS NULL
          GROUP BY cluster_id, name HAVING count(*) > 1) d;
    IF dup IS NOT NULL THEN
        RAISE EXCEPTION 'live machines share a name within a cluster (%); mark the extra rows deleted (after deleting them at the provider) and migrate again', dup;
    END IF;
END
$$;
CREATE UNIQUE INDEX machines_live_name ON machines (cluster_id, name) WHERE deleted_at IS NULL;
