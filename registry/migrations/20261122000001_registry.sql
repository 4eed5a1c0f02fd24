-- The registry's schema. Written once for both SQLite and PostgreSQL: timestamps are Unix
-- milliseconds, JSON is text, and every write bumps registry_state.revision.
CREATE TABLE registry_state (
    id INTEGER PRIMARY KEY,
    revision BIGINT NOT NULL
);
INSERT INTO registry_state (id, revision) VALUES (1, 0);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE versions (
    model TEXT NOT NULL REFERENCES models (name),
    label TEXT NOT NULL,
    runtime TEXT NOT NULL,
    artifact TEXT NOT NULL,
    config TEXT NOT NULL,
    metadata TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (model, label)
);

CREATE TABLE traffic (
    model TEXT NOT NULL REFERENCES models (name),
    version TEXT NOT NULL,
    weight BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE TABLE aliases (
    model TEXT NOT NULL REFERENCES models (name),
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (model, alias)
);

CREATE TABLE scores (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    dataset TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (model, version, metric, revision)
);

CREATE TABLE events (
    revision BIGINT PRIMARY KEY,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    model TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
