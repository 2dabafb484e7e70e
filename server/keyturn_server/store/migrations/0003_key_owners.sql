-- Keyturn schema, version 3: the keys each owner holds (not destroyed), kept as one row
-- per owner in the transaction that creates or destroys a key, so that GenerateKey's
-- per-owner cap (security_policies.max_keys_per_owner) is one row's conditional update
-- instead of a count over the owner's keys. It grants nothing, so it carries no MAC.

CREATE TABLE key_owners (
    owner TEXT PRIMARY KEY,
    held  BIGINT NOT NULL
);
INSERT INTO key_owners (owner, held)
    SELECT owner, COUNT(*) FROM keys WHERE state != 'DESTROYED' GROUP BY owner;
