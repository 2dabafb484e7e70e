-- Keyturn schema, version 4: handles that ended (expired, exhausted or revoked) by the end
-- of their maximum lifetime, so that the scheduler finds those past --handle-retention
-- (and the oldest of them) through an index, whatever the size of the table.

CREATE INDEX handles_ended ON handles (expire_time) WHERE state IN ('EXHAUSTED', 'EXPIRED', 'REVOKED');
