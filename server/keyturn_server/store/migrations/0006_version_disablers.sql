-- Keyturn schema, version 6: who disabled a key version (OWNER or OPERATOR; NULL when it
-- is not disabled), which decides who may enable it again: an operator's containment
-- of a compromise is not lifted by the owner's token (domain/key_versions.py). Kept once
-- the version expires while disabled, so that it stays refused. It has a MAC of its own
-- (store/integrity.py, HOLD_TABLE): the row's MAC stays as schema 5 computes it, so an
-- older replica still running authenticates the row and refuses the version as DISABLED.
-- A version disabled before this schema has no holder recorded: it is read as held by
-- an operator (store/rows.py), so only an operator may enable it.

ALTER TABLE key_versions ADD COLUMN disabled_by TEXT;
ALTER TABLE key_versions ADD COLUMN disabled_by_mac {{BLOB}};
