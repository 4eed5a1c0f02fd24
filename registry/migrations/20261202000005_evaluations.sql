-- Evaluation jobs: what was asked (dataset, versions) and, once done, the report (JSON the
-- gateway defines). Their scores go to `scores` like any other.
CREATE TABLE evaluations (
    id BIGINT PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models (name),
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    report TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT NOT NULL
);
CREATE INDEX evaluations_by_model ON evaluations (model, id);
