-- Where the time of a new node goes (issue 10): when its machine first ran,
-- when its bootstrap started, when its Node registered and when it was
-- first Ready (the Ready condition's own transition time). Shown per node
-- on the operation that asked for it.
ALTER TABLE machines
    ADD COLUMN running_at timestamptz,
    ADD COLUMN bootstrap_started_at timestamptz,
    ADD COLUMN registered_at timestamptz,
    ADD COLUMN ready_at timestamptz;
