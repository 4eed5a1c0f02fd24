//! One suite, run against both stores: a real SQLite file and a real PostgreSQL server (the
//! throwaway one `scripts/with-postgres` starts, named by SWITCHYARD_TEST_POSTGRES_URL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_registry::{
    Heartbeat, NewKey, NewModel, NewScores, NewVersion, PlacementRow, RegistryError, Rewards,
    RolloutWrite, SqlStore, Store, VersionState,
};

async fn sqlite_store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data/registry.db").display());
    (SqlStore::open(&url).await.unwrap(), dir)
}

/// A fresh database on the test server, so that tests running at once do not meet.
pub async fn postgres_url() -> String {
    let admin = std::env::var("SWITCHYARD_TEST_POSTGRES_URL").expect(
        "SWITCHYARD_TEST_POSTGRES_URL is not set: run the tests through scripts/test, which starts a throwaway PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let name = format!("sy_{}_{}", std::process::id(), fastrand_suffix());
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut connection, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish() % 1_000_000_000
}

fn onnx(artifact: &str) -> NewVersion {
    NewVersion {
        runtime: "onnx".into(),
        artifact: artifact.into(),
        ..NewVersion::default()
    }
}

fn weights(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn suite(store: &dyn Store) {
    // A shared secret: the first proposal is kept, later ones get it back.
    let name = format!(
        "suite-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let first = store.shared_secret(&name, "aaaa").await.unwrap();
    let second = store.shared_secret(&name, "bbbb").await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("aaaa", "aaaa"));

    let mut changes = store.subscribe();
    let start = store.revision().await.unwrap();
    assert_eq!(start, 0);

    // Models.
    let r1 = store
        .create_model(
            "alice",
            NewModel {
                name: "mlp".into(),
                description: "a test".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r1, 1);
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 1);
    assert!(matches!(
        store
            .create_model(
                "alice",
                NewModel {
                    name: "mlp".into(),
                    ..NewModel::default()
                }
            )
            .await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_model(
                "alice",
                NewModel {
                    name: "bad/name".into(),
                    ..NewModel::default()
                }
            )
            .await,
        Err(RegistryError::Invalid(_))
    ));
    let models = store.list_models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].description, "a test");

    // Versions: labels, duplicates, unknown models.
    let (v1, _) = store
        .register_version("alice", "mlp", onnx("/m/1.onnx"))
        .await
        .unwrap();
    assert_eq!(v1.label, "1");
    assert_eq!(v1.state, VersionState::Registered);
    let mut named = onnx("/m/7.onnx");
    named.version = Some("7".into());
    named.metadata = Some(serde_json::json!({"commit": "abc"}));
    store
        .register_version("alice", "mlp", named.clone())
        .await
        .unwrap();
    let (next, _) = store
        .register_version("alice", "mlp", onnx("/m/8.onnx"))
        .await
        .unwrap();
    assert_eq!(
        next.label, "8",
        "the next integer after the highest numeric label"
    );
    assert!(matches!(
        store.register_version("alice", "mlp", named).await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store.register_version("alice", "nope", onnx("/x")).await,
        Err(RegistryError::NotFound(_))
    ));
    let mut bad_config = onnx("/x");
    bad_config.config = Some(serde_json::json!([1, 2]));
    assert!(matches!(
        store.register_version("alice", "mlp", bad_config).await,
        Err(RegistryError::Invalid(_))
    ));
    let seven = store.version("mlp", "7").await.unwrap();
    assert_eq!(seven.metadata["commit"], "abc");
    assert!(matches!(
        store.version("mlp", "9").await,
        Err(RegistryError::NotFound(_))
    ));

    // Lifecycle.
    store
        .set_version_state("gateway", "mlp", "1", VersionState::Loading, "")
        .await
        .unwrap();
    store
        .set_version_state("gateway", "mlp", "1", VersionState::Ready, "")
        .await
        .unwrap();
    store
        .set_version_state("gateway", "mlp", "8", VersionState::Failed, "corrupt file")
        .await
        .unwrap();
    let before = store.revision().await.unwrap();
    store
        .set_version_state("gateway", "mlp", "1", VersionState::Ready, "")
        .await
        .unwrap();
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "a no-op state change writes nothing"
    );

    // Metadata: merged key by key; an unchanged patch writes nothing.
    let mut patch = serde_json::Map::new();
    patch.insert("measured_memory_bytes".into(), serde_json::json!(1234));
    store
        .merge_version_metadata("gateway", "mlp", "7", patch.clone())
        .await
        .unwrap();
    let seven = store.version("mlp", "7").await.unwrap();
    assert_eq!(seven.metadata["commit"], "abc");
    assert_eq!(seven.metadata["measured_memory_bytes"], 1234);
    let before = store.revision().await.unwrap();
    store
        .merge_version_metadata("gateway", "mlp", "7", patch)
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), before);
    assert!(matches!(
        store
            .merge_version_metadata("gateway", "mlp", "99", serde_json::Map::new())
            .await,
        Err(RegistryError::NotFound(_))
    ));

    // Routing policy: stored as given, read back in the model's record; not an object: refused.
    let record = store.model("mlp").await.unwrap();
    assert_eq!(record.policy, serde_json::json!({"mode": "fixed"}));
    let sticky = serde_json::json!({"mode": "sticky", "header": "x-user-id"});
    let revision = store
        .set_policy("alice", "mlp", sticky.clone())
        .await
        .unwrap();
    assert_eq!(store.model("mlp").await.unwrap().policy, sticky);
    assert!(matches!(
        store
            .set_policy("alice", "mlp", serde_json::json!("fixed"))
            .await,
        Err(RegistryError::Invalid(_))
    ));
    let events = store.events_after(revision - 1, 10).await.unwrap();
    assert_eq!(events[0].action, "policy.set");

    // A bare event: the audit log only.
    let revision = store
        .log_event(
            "gateway",
            "mlp",
            "replicas.scale",
            serde_json::json!({"to": 2}),
        )
        .await
        .unwrap();
    let events = store.events_after(revision - 1, 10).await.unwrap();
    assert_eq!(
        (events[0].action.as_str(), &events[0].payload),
        ("replicas.scale", &serde_json::json!({"to": 2}))
    );

    // Rewards add up, without a revision; unknown versions are refused.
    let before = store.revision().await.unwrap();
    let first = Rewards {
        successes: 0.75,
        failures: 0.25,
    };
    assert_eq!(store.add_rewards("mlp", "1", first).await.unwrap(), first);
    let total = store.add_rewards("mlp", "1", first).await.unwrap();
    assert_eq!((total.successes, total.failures), (1.5, 0.5));
    assert_eq!(store.revision().await.unwrap(), before);
    assert_eq!(store.model("mlp").await.unwrap().rewards["1"], total);
    assert!(matches!(
        store.add_rewards("mlp", "99", first).await,
        Err(RegistryError::NotFound(_))
    ));
    let negative = Rewards {
        successes: -1.0,
        failures: 0.0,
    };
    assert!(matches!(
        store.add_rewards("mlp", "1", negative).await,
        Err(RegistryError::Invalid(_))
    ));

    // Traffic: validation, then a change.
    for bad in [
        weights(&[("1", 0), ("7", 0)]),
        weights(&[("1", 5), ("9", 5)]),
        weights(&[("8", 1)]),
        weights(&[]),
    ] {
        assert!(matches!(
            store.set_traffic("bob", "mlp", bad).await,
            Err(RegistryError::Invalid(_))
        ));
    }
    let rev = store
        .set_traffic("bob", "mlp", weights(&[("1", 90), ("7", 10)]))
        .await
        .unwrap();
    let record = store.model("mlp").await.unwrap();
    assert_eq!(record.traffic, weights(&[("1", 90), ("7", 10)]));
    assert_eq!(
        record
            .versions
            .iter()
            .map(|v| v.label.as_str())
            .collect::<Vec<_>>(),
        ["1", "7", "8"]
    );
    assert_eq!(*changes.borrow_and_update(), rev);

    // Aliases.
    store.set_alias("bob", "mlp", "stable", "1").await.unwrap();
    store.set_alias("bob", "mlp", "canary", "7").await.unwrap();
    store.set_alias("bob", "mlp", "canary", "1").await.unwrap();
    assert!(matches!(
        store.set_alias("bob", "mlp", "7", "1").await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        store.set_alias("bob", "mlp", "x", "9").await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(
        matches!(
            store.set_alias("bob", "mlp", "x", "8").await,
            Err(RegistryError::Invalid(_))
        ),
        "failed version"
    );
    let record = store.model("mlp").await.unwrap();
    assert_eq!(record.aliases.get("canary").map(String::as_str), Some("1"));
    store.remove_alias("bob", "mlp", "canary").await.unwrap();
    assert!(matches!(
        store.remove_alias("bob", "mlp", "canary").await,
        Err(RegistryError::NotFound(_))
    ));

    // Scores: a history.
    let mut metrics = BTreeMap::new();
    metrics.insert("accuracy".to_string(), 0.91);
    metrics.insert("f1".to_string(), 0.88);
    store
        .add_scores(
            "ci",
            "mlp",
            "7",
            NewScores {
                metrics: metrics.clone(),
                source: "eval".into(),
                dataset: "val".into(),
            },
        )
        .await
        .unwrap();
    metrics.insert("accuracy".to_string(), 0.93);
    store
        .add_scores(
            "ci",
            "mlp",
            "7",
            NewScores {
                metrics,
                source: "eval".into(),
                dataset: "val".into(),
            },
        )
        .await
        .unwrap();
    let scores = store.scores("mlp", "7").await.unwrap();
    let accuracy: Vec<f64> = scores
        .iter()
        .filter(|s| s.metric == "accuracy")
        .map(|s| s.value)
        .collect();
    assert_eq!(accuracy, [0.91, 0.93]);
    let latest = &store.model("mlp").await.unwrap().latest_scores["7"];
    assert_eq!((latest["accuracy"], latest["f1"]), (0.93, 0.88));
    assert!(matches!(
        store
            .add_scores(
                "ci",
                "mlp",
                "7",
                NewScores {
                    metrics: BTreeMap::from([("x".to_string(), f64::NAN)]),
                    ..NewScores::default()
                }
            )
            .await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        store
            .add_scores("ci", "mlp", "7", NewScores::default())
            .await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        store.scores("mlp", "9").await,
        Err(RegistryError::NotFound(_))
    ));

    // Removal: refused with traffic or an alias, then draining.
    assert!(matches!(
        store.remove_version("bob", "mlp", "7").await,
        Err(RegistryError::Conflict(_))
    ));
    store
        .set_traffic("bob", "mlp", weights(&[("1", 100)]))
        .await
        .unwrap();
    assert!(matches!(
        store.remove_version("bob", "mlp", "1").await,
        Err(RegistryError::Conflict(_))
    ));
    store.remove_version("bob", "mlp", "7").await.unwrap();
    assert_eq!(
        store.version("mlp", "7").await.unwrap().state,
        VersionState::Draining
    );
    assert!(matches!(
        store.set_traffic("bob", "mlp", weights(&[("7", 1)])).await,
        Err(RegistryError::Invalid(_))
    ));
    // Removal wins over a late state write; only a draining version retires.
    assert!(matches!(
        store
            .set_version_state("gateway", "mlp", "7", VersionState::Ready, "")
            .await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_version_state("gateway", "mlp", "1", VersionState::Retired, "")
            .await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_version_state("gateway", "mlp", "1", VersionState::Draining, "")
            .await,
        Err(RegistryError::Invalid(_))
    ));
    store
        .set_version_state("gateway", "mlp", "7", VersionState::Retired, "")
        .await
        .unwrap();
    assert_eq!(
        store.version("mlp", "7").await.unwrap().state,
        VersionState::Retired
    );

    // A retired version can be served again, from another config, keeping its label; only a
    // retired one.
    let again = |config: serde_json::Value| NewVersion {
        version: None,
        runtime: "onnx".into(),
        artifact: "/models/mlp/7/model.onnx".into(),
        config: Some(config),
        metadata: None,
    };
    assert!(matches!(
        store
            .reinstate_version("bob", "mlp", "1", again(serde_json::json!({})))
            .await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store
            .reinstate_version("bob", "mlp", "7", again(serde_json::json!([1])))
            .await,
        Err(RegistryError::Invalid(_))
    ));
    store
        .reinstate_version(
            "bob",
            "mlp",
            "7",
            again(serde_json::json!({"max_batch_size": 16})),
        )
        .await
        .unwrap();
    let reinstated = store.version("mlp", "7").await.unwrap();
    assert_eq!(reinstated.state, VersionState::Registered);
    assert_eq!(reinstated.config["max_batch_size"], 16);
    store.remove_version("bob", "mlp", "7").await.unwrap();
    store
        .set_version_state("gateway", "mlp", "7", VersionState::Retired, "")
        .await
        .unwrap();

    // The audit log: every write, in order, with its actor.
    let events = store.events_after(0, 1000).await.unwrap();
    let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<i64> = (1..=store.revision().await.unwrap()).collect();
    assert_eq!(revisions, expected, "one event per revision, no gaps");
    assert_eq!(events[0].action, "model.create");
    assert_eq!(events[0].actor, "alice");
    let traffic_events: Vec<_> = events
        .iter()
        .filter(|e| e.action == "traffic.set")
        .collect();
    assert_eq!(traffic_events[0].payload["weights"]["1"], 90);
    assert_eq!(
        store
            .events_after(events[2].revision, 2)
            .await
            .unwrap()
            .len(),
        2
    );

    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, store.revision().await.unwrap());
    assert_eq!(snapshot.models.len(), 1);
}

#[tokio::test]
async fn postgres_over_tls_passes_the_suite() {
    let ca = std::env::var("SWITCHYARD_TEST_POSTGRES_CA").expect(
        "SWITCHYARD_TEST_POSTGRES_CA is not set: run the tests through scripts/with-postgres",
    );
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        postgres_url().await
    );
    // The connection is encrypted, as the server itself reports it.
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert!(encrypted);
    // A CA that did not sign the server's certificate is refused.
    let wrong_ca = std::env::temp_dir().join(format!("not-the-ca-{}.pem", std::process::id()));
    std::fs::write(
        &wrong_ca,
        std::fs::read_to_string(&ca).unwrap().replace('A', "B"),
    )
    .unwrap();
    let refused = url.replace(&ca, wrong_ca.to_str().unwrap());
    assert!(SqlStore::open(&refused).await.is_err());
    let _ = std::fs::remove_file(&wrong_ca);
    let store = SqlStore::open(&url).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    suite(&store).await;
}

#[tokio::test]
async fn sqlite_store_passes_the_suite() {
    let (store, _dir) = sqlite_store().await;
    assert_eq!(store.backend(), "sqlite");
    suite(&store).await;
}

#[tokio::test]
async fn postgres_store_passes_the_suite() {
    let store = SqlStore::open(&postgres_url().await).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    suite(&store).await;
}

#[tokio::test]
async fn sqlite_keeps_everything_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    {
        let store = SqlStore::open(&url).await.unwrap();
        store
            .create_model(
                "a",
                NewModel {
                    name: "m".into(),
                    ..NewModel::default()
                },
            )
            .await
            .unwrap();
        store.register_version("a", "m", onnx("/x")).await.unwrap();
        store
            .set_traffic("a", "m", weights(&[("1", 3)]))
            .await
            .unwrap();
    }
    let store = SqlStore::open(&url).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 3);
    assert_eq!(
        store.model("m").await.unwrap().traffic,
        weights(&[("1", 3)])
    );
}

#[tokio::test]
async fn postgres_changes_reach_another_process_store_within_a_second() {
    let url = postgres_url().await;
    let writer = SqlStore::open(&url).await.unwrap();
    let reader = SqlStore::open(&url).await.unwrap();
    let mut changes = reader.subscribe();
    let revision = writer
        .create_model(
            "a",
            NewModel {
                name: "m".into(),
                ..NewModel::default()
            },
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(1),
        changes.wait_for(|seen| *seen >= revision),
    )
    .await
    .expect("the other store learned of the change within 1 s")
    .unwrap();
    assert_eq!(reader.model("m").await.unwrap().model.name, "m");
}

#[tokio::test]
async fn concurrent_writers_get_distinct_revisions() {
    let url = postgres_url().await;
    let store = std::sync::Arc::new(SqlStore::open(&url).await.unwrap());
    store
        .create_model(
            "a",
            NewModel {
                name: "m".into(),
                ..NewModel::default()
            },
        )
        .await
        .unwrap();
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.register_version("a", "m", onnx("/x")).await.unwrap() })
        })
        .collect();
    let mut labels = Vec::new();
    let mut revisions = Vec::new();
    for writer in writers {
        let (version, revision) = writer.await.unwrap();
        labels.push(version.label.parse::<u32>().unwrap());
        revisions.push(revision);
    }
    labels.sort();
    revisions.sort();
    assert_eq!(labels, (1..=16).collect::<Vec<_>>());
    assert_eq!(revisions, (2..=17).collect::<Vec<_>>());
}

/// Rollouts: one active per model, writes that carry the traffic with them, and a write from a
/// stale read refused; counters summed by whoever reads them.
async fn rollout_suite(store: &dyn Store) {
    store
        .create_model(
            "alice",
            NewModel {
                name: "m".into(),
                ..NewModel::default()
            },
        )
        .await
        .unwrap();
    for label in ["1", "2"] {
        let version = NewVersion {
            version: Some(label.into()),
            ..onnx("m.onnx")
        };
        store.register_version("alice", "m", version).await.unwrap();
    }
    let start = |state: &str| RolloutWrite {
        state: state.into(),
        body: serde_json::json!({"target": "2"}),
        action: "rollout.started".into(),
        payload: serde_json::json!({"target": "2"}),
        weights: Some(weights(&[("1", 95), ("2", 5)])),
        ..RolloutWrite::default()
    };
    let (created, revision) = store
        .write_rollout("alice", "m", start("running"))
        .await
        .unwrap();
    assert_eq!((created.generation, created.state.as_str()), (1, "running"));
    let record = store.model("m").await.unwrap();
    assert_eq!(
        record.traffic,
        weights(&[("1", 95), ("2", 5)]),
        "the weights came with it"
    );
    let events = store.events_after(revision - 1, 10).await.unwrap();
    assert_eq!(events[0].action, "rollout.started");
    let second = store.write_rollout("alice", "m", start("running")).await;
    assert!(
        matches!(second, Err(RegistryError::Conflict(_))),
        "{second:?}"
    );

    let promote = RolloutWrite {
        existing: Some((created.id, 1)),
        state: "promoted".into(),
        body: serde_json::json!({"target": "2", "done": true}),
        action: "rollout.promoted".into(),
        weights: Some(weights(&[("2", 100)])),
        alias: Some(("stable".into(), "2".into())),
        ..RolloutWrite::default()
    };
    let (promoted, _) = store
        .write_rollout("gw", "m", promote.clone())
        .await
        .unwrap();
    assert_eq!(promoted.generation, 2);
    // The same write again comes from a stale read: refused, and nothing changes.
    let stale = store.write_rollout("gw", "m", promote).await;
    assert!(
        matches!(stale, Err(RegistryError::Conflict(_))),
        "{stale:?}"
    );
    let record = store.model("m").await.unwrap();
    assert_eq!(record.aliases["stable"], "2");
    assert_eq!(record.traffic, weights(&[("2", 100)]));
    let listed = store.rollouts("m", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].body["done"], true);
    assert!(store.active_rollouts().await.unwrap().is_empty());
    // A write that cannot apply its traffic writes nothing.
    let bad = RolloutWrite {
        weights: Some(weights(&[("9", 100)])),
        ..start("running")
    };
    assert!(store.write_rollout("alice", "m", bad).await.is_err());
    assert_eq!(store.rollouts("m", 10).await.unwrap().len(), 1);

    store
        .put_counters(
            "a",
            vec![("m".into(), "1".into(), serde_json::json!({"requests": 3}))],
        )
        .await
        .unwrap();
    store
        .put_counters(
            "b",
            vec![("m".into(), "1".into(), serde_json::json!({"requests": 4}))],
        )
        .await
        .unwrap();
    store
        .put_counters(
            "a",
            vec![("m".into(), "1".into(), serde_json::json!({"requests": 5}))],
        )
        .await
        .unwrap();
    let rows = store.counters("m").await.unwrap();
    let total: i64 = rows
        .iter()
        .map(|r| r.body["requests"].as_i64().unwrap())
        .sum();
    assert_eq!((rows.len(), total), (2, 9));
}

#[tokio::test]
async fn sqlite_store_keeps_rollouts() {
    let (store, _dir) = sqlite_store().await;
    rollout_suite(&store).await;
    assert!(store.try_lead().await.unwrap(), "the only process leads");
}

#[tokio::test]
async fn postgres_store_keeps_rollouts() {
    let store = SqlStore::open(&postgres_url().await).await.unwrap();
    rollout_suite(&store).await;
}

#[tokio::test]
async fn one_postgres_process_leads_and_another_takes_over_when_it_goes() {
    let url = postgres_url().await;
    let first = SqlStore::open(&url).await.unwrap();
    let second = SqlStore::open(&url).await.unwrap();
    assert!(first.try_lead().await.unwrap());
    assert!(first.try_lead().await.unwrap(), "it keeps the lead");
    assert!(!second.try_lead().await.unwrap());
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !second.try_lead().await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lead was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_suite(store: &dyn Store) {
    let beat = |node: &str, versions: Vec<(String, String, String, String, i64)>| Heartbeat {
        node: node.into(),
        address: format!("{node}:8001"),
        body: serde_json::json!({"load": 1}),
        versions,
    };
    let row = |version: &str, state: &str| {
        (
            "mlp".to_owned(),
            version.to_owned(),
            state.to_owned(),
            String::new(),
            1,
        )
    };
    let before = store.revision().await.unwrap();
    store
        .heartbeat(beat("a", vec![row("1", "loading")]))
        .await
        .unwrap();
    store
        .heartbeat(beat("b", vec![row("1", "ready"), row("2", "ready")]))
        .await
        .unwrap();
    store
        .heartbeat(beat("a", vec![row("1", "ready")]))
        .await
        .unwrap();
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "heartbeats are not revisions"
    );
    let nodes = store.nodes().await.unwrap();
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.id.as_str(), n.beat))
            .collect::<Vec<_>>(),
        [("a", 2), ("b", 1)],
        "each heartbeat moves the node's beat"
    );
    assert_eq!(nodes[0].address, "a:8001");
    assert!(
        (0..60_000).contains(&nodes[0].age_ms),
        "a heartbeat just written is young, by the database's clock: {}",
        nodes[0].age_ms
    );
    let states: Vec<_> = store
        .node_versions()
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.node, v.version, v.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), "1".into(), "ready".into()),
            ("b".into(), "1".into(), "ready".into()),
            ("b".into(), "2".into(), "ready".into()),
        ],
        "a heartbeat replaces its node's rows, and only its node's"
    );

    let placed = |node: &str, version: &str| PlacementRow {
        model: "mlp".into(),
        version: version.into(),
        node: node.into(),
        device: "cpu".into(),
        replicas: 1,
    };
    let revision = store
        .write_placements(
            "leader",
            vec![placed("b", "2"), placed("a", "1")],
            serde_json::json!({"moved": 0}),
        )
        .await
        .unwrap();
    assert_eq!(revision, before + 1, "a placement is a revision");
    assert_eq!(
        store.placements().await.unwrap(),
        [placed("a", "1"), placed("b", "2")]
    );
    let events = store.events_after(before, 10).await.unwrap();
    assert_eq!(events.last().unwrap().action, "cluster.placed");
    store
        .write_placements("leader", vec![placed("a", "2")], serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        store.placements().await.unwrap(),
        [placed("a", "2")],
        "a placement replaces the last one whole"
    );
    let mut empty = placed("a", "3");
    empty.replicas = 0;
    assert!(matches!(
        store
            .write_placements("leader", vec![empty], serde_json::json!({}))
            .await,
        Err(RegistryError::Invalid(_))
    ));
    assert_eq!(store.placements().await.unwrap(), [placed("a", "2")]);

    store.remove_node("a").await.unwrap();
    assert_eq!(store.nodes().await.unwrap().len(), 1);
    assert!(
        store
            .node_versions()
            .await
            .unwrap()
            .iter()
            .all(|v| v.node == "b")
    );
}

#[tokio::test]
async fn sqlite_store_keeps_the_cluster() {
    let (store, _dir) = sqlite_store().await;
    cluster_suite(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_the_cluster() {
    let store = SqlStore::open(&postgres_url().await).await.unwrap();
    cluster_suite(&store).await;
}

async fn key_suite(store: &dyn Store) {
    let new = |id: &str, digest: &str| NewKey {
        id: id.into(),
        name: "team-a".into(),
        digest: digest.into(),
        prefix: "sy_abc".into(),
        spec: serde_json::json!({"models": ["mlp*"]}),
    };
    let before = store.revision().await.unwrap();
    let (made, revision) = store.create_key("test", new("k1", "d1")).await.unwrap();
    assert!(revision > before);
    assert_eq!(made.revoked_ms, None);
    assert!(matches!(
        store.create_key("test", new("k1", "d2")).await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(
        matches!(
            store.create_key("test", new("k2", "d1")).await,
            Err(RegistryError::Conflict(_))
        ),
        "two keys with one secret"
    );
    assert!(matches!(
        store.create_key("test", new("../k", "d3")).await,
        Err(RegistryError::Invalid(_))
    ));
    store.create_key("test", new("k2", "d2")).await.unwrap();

    let (rotated, _) = store
        .rotate_key("test", "k1", "d9", "sy_new")
        .await
        .unwrap();
    assert_eq!(
        (rotated.digest.as_str(), rotated.prefix.as_str()),
        ("d9", "sy_new")
    );
    assert!(rotated.rotated_ms.is_some());
    assert!(matches!(
        store.rotate_key("test", "k1", "d2", "sy_x").await,
        Err(RegistryError::Conflict(_))
    ));
    let (updated, _) = store
        .set_key_spec("test", "k2", serde_json::json!({"priority": 1}))
        .await
        .unwrap();
    assert_eq!(updated.spec, serde_json::json!({"priority": 1}));
    assert!(matches!(
        store
            .set_key_spec("test", "k2", serde_json::json!([1]))
            .await,
        Err(RegistryError::Invalid(_))
    ));

    let revoked_at = store.revoke_key("test", "k2").await.unwrap();
    assert!(matches!(
        store.revoke_key("test", "k2").await,
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        store.revoke_key("test", "nobody").await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        store.rotate_key("test", "k2", "d7", "p").await,
        Err(RegistryError::Conflict(_))
    ));
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    let k1 = keys.iter().find(|key| key.id == "k1").unwrap();
    assert_eq!((k1.digest.as_str(), k1.revoked_ms), ("d9", None));
    assert_eq!(k1.spec, serde_json::json!({"models": ["mlp*"]}));
    assert!(
        keys.iter()
            .find(|key| key.id == "k2")
            .unwrap()
            .revoked_ms
            .is_some()
    );
    let events = store.events_after(before, 100).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|event| event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.create",
            "key.rotate",
            "key.update",
            "key.revoke"
        ]
    );
    assert_eq!(events.last().unwrap().revision, revoked_at);
    assert!(
        events
            .iter()
            .all(|event| !event.payload.to_string().contains("d9")),
        "the feed never carries a digest"
    );
}

#[tokio::test]
async fn sqlite_store_keeps_keys() {
    let (store, _dir) = sqlite_store().await;
    key_suite(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_keys() {
    let store = SqlStore::open(&postgres_url().await).await.unwrap();
    key_suite(&store).await;
}

/// A model's limits and its capture: JSON objects kept whole, each written with its own event,
/// removed with `None` and with their model.
async fn model_document_suite(store: &dyn Store) {
    store
        .create_model(
            "test",
            NewModel {
                name: "mlp".into(),
                ..NewModel::default()
            },
        )
        .await
        .unwrap();
    let before = store.revision().await.unwrap();
    let capture = serde_json::json!({"sample": 0.5, "sinks": [{"file": "mlp"}]});
    let limits = serde_json::json!({"requests_per_second": 5.0});
    store
        .set_model_capture("test", "mlp", Some(capture.clone()))
        .await
        .unwrap();
    store
        .set_model_limits("test", "mlp", Some(limits.clone()))
        .await
        .unwrap();
    assert_eq!(store.model_captures().await.unwrap()["mlp"], capture);
    assert_eq!(store.model_limits().await.unwrap()["mlp"], limits);
    assert!(matches!(
        store
            .set_model_capture("test", "mlp", Some(serde_json::json!([1])))
            .await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        store
            .set_model_capture("test", "nope", Some(capture.clone()))
            .await,
        Err(RegistryError::NotFound(_))
    ));
    store.set_model_capture("test", "mlp", None).await.unwrap();
    assert!(store.model_captures().await.unwrap().is_empty());
    assert_eq!(store.model_limits().await.unwrap().len(), 1, "limits stay");
    let events = store.events_after(before, 100).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|event| event.action.as_str()).collect();
    assert_eq!(actions, ["model.capture", "model.limits", "model.capture"]);
    assert_eq!(events[0].payload["capture"], capture);
    assert_eq!(events[2].payload["capture"], serde_json::Value::Null);
}

#[tokio::test]
async fn sqlite_store_keeps_model_documents() {
    let (store, _dir) = sqlite_store().await;
    model_document_suite(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_model_documents() {
    let store = SqlStore::open(&postgres_url().await).await.unwrap();
    model_document_suite(&store).await;
}
