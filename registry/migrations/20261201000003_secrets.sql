-- Secrets the gateways sharing this registry agree on, such as the key of the MAC in the
-- request ids they issue: the first gateway to start proposes one, every later one takes it.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
