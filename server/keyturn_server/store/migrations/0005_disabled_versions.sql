-- Keyturn schema, version 5: key versions can be DISABLED (DisableKeyVersion). A disabled
-- version still expires at its max lifetime, so the scheduler's index of version expiries
-- covers it too. An older server, which cannot read the new state, stops writing once it
-- sees this version (store/schema.py, NewerSchema).

DROP INDEX key_versions_expire;
CREATE INDEX key_versions_expire ON key_versions (expire_time) WHERE state IN ('ENABLED', 'DISABLED');
