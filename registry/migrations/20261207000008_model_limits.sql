-- Limits of a model for every caller (a JSON document the gateway defines: requests and rows
-- per second, requests in flight), beside each key's own.
CREATE TABLE model_limits (
    model TEXT PRIMARY KEY REFERENCES models (name) ON DELETE CASCADE,
    spec TEXT NOT NULL
);
