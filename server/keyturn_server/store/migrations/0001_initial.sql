-- Keyturn schema, version 1. Portable between SQLite and PostgreSQL: times are
-- integer microseconds since the epoch (exact and indexable), booleans are 0/1,
-- maps are JSON text. {{BLOB}} and {{SEQUENCE}} are filled in per backend.

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value {{BLOB}} NOT NULL
);

CREATE TABLE config (
    revision    BIGINT PRIMARY KEY,
    body        TEXT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,
    type               TEXT NOT NULL,
    algorithm          TEXT NOT NULL,
    key_length         INTEGER NOT NULL,
    state              TEXT NOT NULL,
    primary_version    INTEGER NOT NULL,
    owner              TEXT NOT NULL,
    created_for        TEXT NOT NULL,
    metadata           TEXT NOT NULL,
    create_time        BIGINT NOT NULL,
    rotation_interval  BIGINT NOT NULL,
    warning_threshold  BIGINT NOT NULL,
    max_lifetime       BIGINT NOT NULL,
    exportable         INTEGER NOT NULL,
    next_rotation_time BIGINT,
    expire_time        BIGINT NOT NULL,
    warn_time          BIGINT,
    notify_time        BIGINT,
    destroy_time       BIGINT,
    usage_count        BIGINT NOT NULL DEFAULT 0,
    last_used_time     BIGINT,
    restore_state      TEXT
);
-- The scheduler asks each index for its smallest due deadline; never a scan.
CREATE INDEX keys_notify ON keys (notify_time) WHERE state = 'ACTIVE' AND notify_time IS NOT NULL;
CREATE INDEX keys_rotation ON keys (next_rotation_time) WHERE state = 'ACTIVE';
CREATE INDEX keys_expire ON keys (expire_time) WHERE state = 'ACTIVE';
CREATE INDEX keys_destroy ON keys (destroy_time) WHERE state = 'REMOVED';
CREATE INDEX keys_warning ON keys (warn_time, id) WHERE state = 'ACTIVE';
CREATE INDEX keys_listing ON keys (create_time, id);
CREATE INDEX keys_by_type ON keys (type, state);
CREATE INDEX keys_by_owner ON keys (owner, create_time, id);

CREATE TABLE key_versions (
    key_id       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    state        TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    expire_time  BIGINT NOT NULL,
    destroy_time BIGINT,
    -- AES-256-GCM under the master key, bound to (key_id, version); NULL once destroyed.
    material     {{BLOB}},
    public_pem   TEXT,
    PRIMARY KEY (key_id, version)
);
CREATE INDEX key_versions_expire ON key_versions (expire_time) WHERE state = 'ENABLED';

CREATE TABLE handles (
    id                TEXT PRIMARY KEY,
    type              TEXT NOT NULL,
    algorithm         TEXT NOT NULL,
    state             TEXT NOT NULL,
    owner             TEXT NOT NULL,
    created_for       TEXT NOT NULL,
    context           TEXT NOT NULL,
    usage_count       BIGINT NOT NULL,
    max_usage         BIGINT NOT NULL,
    create_time       BIGINT NOT NULL,
    rotate_time       BIGINT NOT NULL,
    expire_time       BIGINT NOT NULL,
    warn_time         BIGINT NOT NULL,
    notify_time       BIGINT,
    rotation_interval BIGINT NOT NULL,
    warning_threshold BIGINT NOT NULL,
    max_lifetime      BIGINT NOT NULL,
    grace_period      BIGINT NOT NULL,
    generation        INTEGER NOT NULL,
    last_used_time    BIGINT,
    anomaly_count     BIGINT NOT NULL DEFAULT 0,
    bound_ip          TEXT,
    bound_user_agent  TEXT,
    revoke_reason     TEXT,
    rate_start        BIGINT,
    rate_previous     INTEGER NOT NULL DEFAULT 0,
    rate_current      INTEGER NOT NULL DEFAULT 0,
    rate_flagged      BIGINT
);
CREATE INDEX handles_notify ON handles (notify_time) WHERE state = 'ACTIVE' AND notify_time IS NOT NULL;
CREATE INDEX handles_rotate ON handles (rotate_time) WHERE state = 'ACTIVE';
CREATE INDEX handles_expire ON handles (expire_time) WHERE state IN ('ACTIVE', 'EXHAUSTED');
CREATE INDEX handles_active_owner ON handles (owner) WHERE state = 'ACTIVE';
CREATE INDEX handles_warning ON handles (warn_time, id) WHERE state = 'ACTIVE';
CREATE INDEX handles_listing ON handles (create_time, id);
CREATE INDEX handles_by_type ON handles (type, state);
CREATE INDEX handles_by_owner ON handles (owner, create_time, id);

-- Secrets are known only by a keyed digest (HMAC under a key derived from the master key).
CREATE TABLE handle_secrets (
    digest          {{BLOB}} PRIMARY KEY,
    handle_id       TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    create_time     BIGINT NOT NULL,
    superseded_time BIGINT,
    grace_until     BIGINT,
    -- An automatically rotated successor, sealed, until its grace period ends.
    sealed_token    {{BLOB}}
);
CREATE INDEX handle_secrets_by_handle ON handle_secrets (handle_id, generation);
CREATE INDEX handle_secrets_pending ON handle_secrets (grace_until) WHERE sealed_token IS NOT NULL;

CREATE TABLE anomalies (
    id        TEXT PRIMARY KEY,
    time      BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    severity  INTEGER NOT NULL,
    action    TEXT NOT NULL,
    handle_id TEXT NOT NULL,
    evidence  TEXT NOT NULL
);
CREATE INDEX anomalies_by_time ON anomalies (time);
CREATE INDEX anomalies_by_handle ON anomalies (handle_id, time);

CREATE TABLE events (
    sequence     {{SEQUENCE}},
    time         BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    owner        TEXT NOT NULL,
    deadline     BIGINT,
    reason       TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    snapshot     TEXT NOT NULL,
    anomaly      TEXT,
    sealed_token {{BLOB}}
);
CREATE INDEX events_by_time ON events (time);
CREATE INDEX events_sealed ON events (subject_id) WHERE sealed_token IS NOT NULL;

CREATE TABLE audit (
    sequence      BIGINT PRIMARY KEY,
    time          BIGINT NOT NULL,
    action        TEXT NOT NULL,
    principal     TEXT NOT NULL,
    role          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    reason        TEXT NOT NULL,
    peer          TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    details       TEXT NOT NULL,
    hash          {{BLOB}} NOT NULL,
    previous_hash {{BLOB}} NOT NULL
);
CREATE INDEX audit_by_time ON audit (time);
CREATE INDEX audit_by_resource ON audit (resource_id, sequence);
CREATE INDEX audit_by_action ON audit (action, sequence);

CREATE TABLE access_tokens (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL,
    digest         {{BLOB}} NOT NULL UNIQUE,
    create_time    BIGINT NOT NULL,
    expire_time    BIGINT,
    revoke_time    BIGINT,
    created_by     TEXT NOT NULL,
    last_used_time BIGINT
);
