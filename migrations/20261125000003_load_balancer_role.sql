-- Highly available control planes get a load-balancer machine in the ledger.
ALTER TABLE machines DROP CONSTRAINT machines_role_check;
ALTER TABLE machines ADD CONSTRAINT machines_role_check
    CHECK (role IN ('control_plane', 'worker', 'load_balancer'));
