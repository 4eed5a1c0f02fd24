-- Rollouts: one row per rollout, its whole state as a JSON document that the gateway defines
-- (steps, gates, the current step, the analyses). `generation` grows with every write, so that
-- a write made from a stale read fails instead of overwriting a newer state.
CREATE TABLE rollouts (
    id BIGINT PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models (name),
    state TEXT NOT NULL,
    generation BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX rollouts_by_model ON rollouts (model, id);

-- Each gateway's running totals per version (requests, errors, latency buckets, shadow
-- comparisons), written every second, so that the gateway driving a rollout judges the sum of
-- every gateway's figures. Not revisions: no gateway reloads anything when they change.
CREATE TABLE version_counters (
    gateway TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (gateway, model, version)
);
