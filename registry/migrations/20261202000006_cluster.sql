-- The cluster: gateways sharing this registry as nodes. A node's row is rewritten by its
-- heartbeat (`beat` grows by one each time; peers judge liveness by whether it moves, by their
-- own clocks, so clock skew between machines does not matter). Neither table is a revision:
-- heartbeats would flood the change feed.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    body TEXT NOT NULL,
    beat BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);
-- What each node does with each version, written by that node alone: the per-node state that
-- replaces one state per version written by whichever gateway wrote last.
CREATE TABLE node_versions (
    node TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    replicas BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (node, model, version)
);
-- The cluster placer's decision: replicas of each version per node and device. Written whole
-- by the leader, as a revision, so that every node reloads what it must serve.
CREATE TABLE placements (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    replicas BIGINT NOT NULL,
    PRIMARY KEY (model, version, node, device)
);
