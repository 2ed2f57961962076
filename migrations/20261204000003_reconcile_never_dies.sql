-- The periodic reconcile of a cluster never dies (issue 13, point 6): its
-- job has no attempt limit, and its handler fails the operations after
-- repeated failures while it goes on. Jobs queued before this have a limit
-- of 8; a reconcile job dead-lettered under the old rule is revived, so
-- the cluster is looked at again.
UPDATE jobs
   SET max_attempts = 2147483647,
       state = CASE WHEN state = 'dead' THEN 'queued' ELSE state END,
       attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END,
       run_after = CASE WHEN state = 'dead' THEN now() ELSE run_after END
 WHERE kind = 'reconcile_cluster';
