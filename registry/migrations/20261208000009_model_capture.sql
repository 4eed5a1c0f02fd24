-- A model's payload capture (a JSON document the gateway defines: the sampling rate, the
-- inputs and outputs kept or redacted, the sinks), beside its limits.
CREATE TABLE model_capture (
    model TEXT PRIMARY KEY REFERENCES models (name) ON DELETE CASCADE,
    spec TEXT NOT NULL
);
