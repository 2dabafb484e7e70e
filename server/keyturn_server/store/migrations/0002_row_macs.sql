-- Keyturn schema, version 2: a MAC on every row that grants rights (store/integrity.py),
-- filled in for existing rows on the first start with the master key; and the AES-GCM
-- nonce budget reserved per key version (domain/nonce_budget.py).

ALTER TABLE keys ADD COLUMN mac {{BLOB}};
ALTER TABLE key_versions ADD COLUMN mac {{BLOB}};
ALTER TABLE key_versions ADD COLUMN nonces_reserved BIGINT NOT NULL DEFAULT 0;
ALTER TABLE handles ADD COLUMN mac {{BLOB}};
ALTER TABLE handle_secrets ADD COLUMN mac {{BLOB}};
ALTER TABLE access_tokens ADD COLUMN mac {{BLOB}};
ALTER TABLE config ADD COLUMN mac {{BLOB}};
ALTER TABLE events ADD COLUMN mac {{BLOB}};
