-- The inference API's keys, one row per key: the tenant's name, the SHA-256 digest of the
-- secret (the secret itself is shown once, when made, and never stored), the first characters
-- of the secret to recognise it by, and what the key may do (a JSON document the gateway
-- defines: its allowed models, limits and default priority). A revoked key keeps its row,
-- for the audit log, with the time it was revoked.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    rotated_ms BIGINT,
    revoked_ms BIGINT
);
