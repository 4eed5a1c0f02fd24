-- Routing policies (JSON text, see the gateway's routing module) and the bandit's learned
-- statistics, which outlive a restart. Reward updates are not revisions: they change often,
-- and no gateway needs to reload anything when they do.
ALTER TABLE models ADD COLUMN policy TEXT NOT NULL DEFAULT '{"mode":"fixed"}';

CREATE TABLE rewards (
    model TEXT NOT NULL REFERENCES models (name),
    version TEXT NOT NULL,
    successes DOUBLE PRECISION NOT NULL,
    failures DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model, version)
);
