//! Inference API keys as tenants, on real gateways with real clients: a key made through the
//! management API is shown once and stored as a digest; it calls only its models, within its
//! rate and in-flight limits (429 with `Retry-After`, RESOURCE_EXHAUSTED on gRPC), while
//! another key is unaffected; rotation and revocation take effect on every gateway sharing
//! the registry within a second; the configuration's keys keep working; bad input is refused
//! with the API's error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

use crate::common::{
    MLP_IN, TestGateway, WRITER_TOKEN, mlp_raw_request, models_dir, postgres_url, test_tokens,
};

fn mlp_body() -> Value {
    let x: Vec<f32> = (0..MLP_IN).map(|i| i as f32 / 64.0).collect();
    json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": x}]})
}

/// One inference call with `key` (none: no credentials): its status, `Retry-After` and body.
async fn infer(gateway: &TestGateway, model: &str, key: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut request = gateway
        .client
        .post(gateway.url(&format!("/v2/models/{model}/infer")))
        .json(&mlp_body());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    (status, retry_after, response.json().await.unwrap())
}

async fn make_key(gateway: &TestGateway, body: Value) -> Value {
    let (status, made) = gateway
        .admin(Method::POST, "/v1/keys", Some(WRITER_TOKEN), Some(body))
        .await;
    assert_eq!(status, 201, "{made}");
    made
}

fn secret(made: &Value) -> String {
    made["key"].as_str().unwrap().to_owned()
}

async fn key_list(gateway: &TestGateway) -> Value {
    let (status, list) = gateway
        .admin(Method::GET, "/v1/keys", Some(WRITER_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{list}");
    list
}

/// Polls until `key` gets `status` on `model`; how long that took.
async fn until_status(gateway: &TestGateway, model: &str, key: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        if infer(gateway, model, Some(key)).await.0 == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key} never got {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every one of `keys` is in force on `gateway` (the change feed): an unknown key
/// is refused and each of them is not, on an endpoint that spends no token.
pub(crate) async fn in_force(gateway: &TestGateway, model: &str, keys: &[&str]) {
    let metadata = |key: &str| {
        gateway
            .client
            .get(gateway.url(&format!("/v2/models/{model}")))
            .bearer_auth(key)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ready = metadata("sy_unknown").await.unwrap().status() == 401;
        for key in keys {
            ready &= metadata(key).await.unwrap().status() == 200;
        }
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the keys never came into force");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_calls_only_its_models_within_its_limits_until_revoked() {
    let configured = hex::encode(switchyard_gateway::auth::digest("configured-secret"));
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
        config.inference.api_keys = vec![configured];
    })
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    assert_eq!(infer(&gateway, "mlp", None).await.0, 401);

    let limited = make_key(
        &gateway,
        json!({"name": "team-a", "models": ["mlp", "mlp_h*"],
               "limits": {"requests_per_s": 0.01, "requests_burst": 3}, "priority": 2}),
    )
    .await;
    let limited_key = secret(&limited);
    assert!(
        limited_key.starts_with("sy_") && limited_key.len() == 43,
        "{limited}"
    );
    assert_eq!(limited["warnings"], json!([]));
    let other = make_key(&gateway, json!({"name": "team-b", "models": ["resnet*"]})).await;
    assert_eq!(
        other["warnings"],
        json!(["'resnet*' matches no model today"]),
        "a glob that matches nothing is a warning, not an error"
    );

    in_force(&gateway, "mlp", &[&limited_key]).await;
    // Its burst of 3, then 429 with when to retry (100 s for one token at 0.01/s: no token
    // comes back while the test runs, however slow the machine).
    for _ in 0..3 {
        let (status, _, body) = infer(&gateway, "mlp", Some(&limited_key)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = infer(&gateway, "mlp", Some(&limited_key)).await;
    assert_eq!(status, 429, "{body}");
    assert!(matches!(retry_after, Some(99..=100)), "{retry_after:?}");
    assert!(body["error"].as_str().unwrap().contains("team-a"), "{body}");
    // gRPC: RESOURCE_EXHAUSTED with the same pushback.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .unwrap();
    let x: Vec<f32> = (0..MLP_IN).map(|i| i as f32).collect();
    let mut request = tonic::Request::new(mlp_raw_request(&x, 1));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {limited_key}").parse().unwrap(),
    );
    let refused = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.metadata().get("retry-after").is_some());

    // A model outside its globs: 403, not counted against anything else.
    let (status, _, body) = infer(&gateway, "digits", Some(&limited_key)).await;
    assert_eq!(status, 403, "{body}");
    // The other key matches no model; the configured key, none of this applies to.
    assert_eq!(infer(&gateway, "mlp", Some(&secret(&other))).await.0, 403);
    for _ in 0..5 {
        assert_eq!(
            infer(&gateway, "mlp", Some("configured-secret")).await.0,
            200
        );
    }
    // Malformed or unknown keys: 401.
    for bad in ["sy_nope", "x", &"k".repeat(4000)] {
        assert_eq!(infer(&gateway, "mlp", Some(bad)).await.0, 401, "{bad:.20}");
    }

    // The list shows names, prefixes and figures, never a secret or its digest.
    let list = key_list(&gateway).await;
    let text = list.to_string();
    assert!(
        !text.contains(&limited_key) && !text.contains("digest"),
        "{text}"
    );
    let team_a = &list["keys"][0];
    assert_eq!(team_a["name"], "team-a");
    assert_eq!(team_a["prefix"], &limited_key[..10]);
    assert_eq!(team_a["spec"]["priority"], 2);
    assert_eq!(team_a["figures"]["succeeded"], 3);
    assert_eq!(team_a["figures"]["refused"]["rate"], 2, "HTTP and gRPC");
    assert_eq!(team_a["figures"]["refused"]["model"], 1);
    assert_eq!(
        gateway
            .metric("switchyard_key_refusals_total{key=\"team-a\",reason=\"rate\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        gateway
            .metric("switchyard_rejections_total{reason=\"rate_limited\"}")
            .await,
        Some(2.0)
    );

    // Widen the other key's models: in force at once, no restart.
    let id = other["id"].as_str().unwrap();
    let (status, changed) = gateway
        .admin(
            Method::PUT,
            &format!("/v1/keys/{id}"),
            Some(WRITER_TOKEN),
            Some(json!({"models": ["mlp"]})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    until_status(&gateway, "mlp", &secret(&other), 200).await;

    // Rotation: the new secret works, the old one is refused.
    let (status, rotated) = gateway
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(secret(&rotated), secret(&other));
    until_status(&gateway, "mlp", &secret(&other), 401).await;
    assert_eq!(infer(&gateway, "mlp", Some(&secret(&rotated))).await.0, 200);

    // Revocation: refused within a second, and the API stays closed once no key is left.
    let (status, _) = gateway
        .admin(
            Method::DELETE,
            &format!("/v1/keys/{}", limited["id"].as_str().unwrap()),
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let took = until_status(&gateway, "mlp", &limited_key, 401).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let list = key_list(&gateway).await;
    assert!(list["keys"][0]["revoked_ms"].is_i64(), "{list}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_writes_are_refused_with_the_apis_error() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    for (body, says) in [
        (
            json!({"name": "a", "limits": {"requests_per_s": -1}}),
            "requests_per_s",
        ),
        (
            json!({"name": "a", "limits": {"requests_per_s": 0}}),
            "requests_per_s",
        ),
        (
            json!({"name": "a", "limits": {"rows_per_s": 1e12}}),
            "rows_per_s",
        ),
        (
            json!({"name": "a", "limits": {"requests_burst": 4}}),
            "needs its rate",
        ),
        (
            json!({"name": "a", "limits": {"in_flight": 0}}),
            "in_flight",
        ),
        (json!({"name": "a", "priority": 0}), "priority"),
        (json!({"name": "a", "priority": 99}), "priority"),
        (json!({"name": "a", "models": ["../etc/passwd"]}), "glob"),
        (json!({"name": "a", "models": [""]}), "glob"),
        (json!({"name": "a", "models": vec!["m"; 65]}), "at most 64"),
        (json!({"name": "../a"}), "name"),
        (json!({"name": "a", "limit": {}}), "unknown field"),
        (json!({"models": ["mlp"]}), "name"),
    ] {
        let (status, refused) = gateway
            .admin(
                Method::POST,
                "/v1/keys",
                Some(WRITER_TOKEN),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body} -> {refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(says),
            "{body} -> {refused}"
        );
    }
    let (status, refused) = gateway
        .admin(
            Method::DELETE,
            "/v1/keys/key-unknown",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404, "{refused}");
    let (status, _) = gateway
        .admin(
            Method::POST,
            "/v1/keys/key-unknown/rotate",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let made = make_key(&gateway, json!({"name": "a"})).await;
    let path = format!("/v1/keys/{}", made["id"].as_str().unwrap());
    assert_eq!(
        gateway
            .admin(Method::DELETE, &path, Some(WRITER_TOKEN), None)
            .await
            .0,
        200
    );
    assert_eq!(
        gateway
            .admin(Method::DELETE, &path, Some(WRITER_TOKEN), None)
            .await
            .0,
        409,
        "revoked twice"
    );
    // Keys are the write role's: a reader may list them, not make them.
    let (status, _) = gateway
        .admin(
            Method::POST,
            "/v1/keys",
            Some(crate::common::READER_TOKEN),
            Some(json!({"name": "b"})),
        )
        .await;
    assert_eq!(status, 403);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_in_flight_cap_is_refused_while_another_is_not() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    gateway.wait_for_serving("mlp_heavy", "1").await;
    let capped = secret(
        &make_key(
            &gateway,
            json!({"name": "capped", "limits": {"in_flight": 2}}),
        )
        .await,
    );
    let free = secret(&make_key(&gateway, json!({"name": "free"})).await);
    in_force(&gateway, "mlp_heavy", &[&capped, &free]).await;
    let call = |key: String| {
        let gateway_url = gateway.url("/v2/models/mlp_heavy/infer");
        let client = gateway.client.clone();
        async move {
            let x: Vec<f32> = (0..512 * 8).map(|i| (i % 7) as f32).collect();
            let body = json!({"inputs": [{"name": "x", "shape": [8, 512], "datatype": "FP32", "data": x}]});
            client
                .post(gateway_url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let capped_calls: Vec<_> = (0..12)
        .map(|_| tokio::spawn(call(capped.clone())))
        .collect();
    let free_calls: Vec<_> = (0..12).map(|_| tokio::spawn(call(free.clone()))).collect();
    let mut capped_statuses = Vec::new();
    for call in capped_calls {
        capped_statuses.push(call.await.unwrap());
    }
    let mut free_statuses = Vec::new();
    for call in free_calls {
        free_statuses.push(call.await.unwrap());
    }
    assert!(
        capped_statuses.iter().all(|s| *s == 200 || *s == 429),
        "{capped_statuses:?}"
    );
    assert!(
        capped_statuses.contains(&429),
        "12 at once over a cap of 2: {capped_statuses:?}"
    );
    assert!(capped_statuses.contains(&200), "{capped_statuses:?}");
    assert!(
        free_statuses.iter().all(|s| *s == 200),
        "the other key is unaffected: {free_statuses:?}"
    );
    let list = key_list(&gateway).await;
    let capped_view = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == "capped")
        .unwrap();
    let refused = capped_statuses.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(capped_view["figures"]["refused"]["in_flight"], refused);
    assert_eq!(capped_view["in_flight"], 0, "every slot given back");
    gateway.stop().await;
}

/// Two gateways on one PostgreSQL registry: a key made through one works on the other, and
/// once revoked through one, the other refuses it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_gateway_within_a_second() {
    let url = postgres_url().await;
    let models = models_dir();
    let start = |url: String| {
        TestGateway::start_with(&models, move |config| {
            config.admin.tokens = test_tokens();
            config.registry.url = url;
        })
    };
    let first = start(url.clone()).await;
    let second = start(url).await;
    second.wait_for_serving("mlp", "1").await;
    let made = make_key(&first, json!({"name": "shared"})).await;
    let key = secret(&made);
    let reached = until_status(&second, "mlp", &key, 200).await;
    assert!(reached < Duration::from_secs(1), "{reached:?}");
    let (status, _) = first
        .admin(
            Method::DELETE,
            &format!("/v1/keys/{}", made["id"].as_str().unwrap()),
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let took = until_status(&second, "mlp", &key, 401).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_makes_lists_and_revokes_keys() {
    use crate::registry_api::{cli, cli_text};
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    let (ok, made, err) = cli(
        &gateway,
        &[
            "keys",
            "create",
            "team-c",
            "--models",
            "mlp,digits",
            "--rps",
            "100",
            "--burst",
            "200",
            "--in-flight",
            "4",
            "--priority",
            "1",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(made["spec"]["models"], json!(["mlp", "digits"]));
    assert_eq!(made["spec"]["limits"]["requests_per_s"], 100.0);
    let key = secret(&made);
    in_force(&gateway, "mlp", &[&key]).await;
    assert_eq!(infer(&gateway, "mlp", Some(&key)).await.0, 200);
    let (ok, table, err) = cli_text(&gateway, &["keys", "list", "-o", "table"]).await;
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("REFUSED"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    for expected in ["team-c", &key[..10], "live", "mlp,digits", "100/s+200", "1"] {
        assert!(row.contains(expected), "{expected} in {row}");
    }
    assert!(!table.contains(&key), "the secret is never listed");
    let id = made["id"].as_str().unwrap();
    // `set` changes what its flags give and keeps the rest.
    let (ok, changed, err) = cli(&gateway, &["keys", "set", id, "--rps", "7"]).await;
    assert!(ok, "{err}");
    assert_eq!(changed["key"]["spec"]["models"], json!(["mlp", "digits"]));
    assert_eq!(changed["key"]["spec"]["limits"]["requests_per_s"], 7.0);
    assert_eq!(changed["key"]["spec"]["limits"]["in_flight"], 4);
    assert_eq!(changed["key"]["spec"]["priority"], 1);
    let (ok, _, err) = cli(&gateway, &["keys", "revoke", id]).await;
    assert!(ok, "{err}");
    until_status(&gateway, "mlp", &key, 401).await;
    let (ok, _, err) = cli(&gateway, &["keys", "revoke", "key-nobody"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_limits_hold_for_every_caller() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    gateway.wait_for_serving("digits", "1").await;
    let put = |path: &str, body: Value| {
        let gateway = &gateway;
        let path = path.to_owned();
        async move {
            gateway
                .admin(Method::PUT, &path, Some(WRITER_TOKEN), Some(body))
                .await
        }
    };
    for (path, body, status) in [
        ("/v1/models/mlp/limits", json!({"requests_per_s": -1}), 400),
        ("/v1/models/mlp/limits", json!({"in_flight": 0}), 400),
        ("/v1/models/mlp/limits", json!({"rps": 4}), 400),
        (
            "/v1/models/nobody/limits",
            json!({"requests_per_s": 4}),
            404,
        ),
    ] {
        let (got, answer) = put(path, body.clone()).await;
        assert_eq!(got, status, "{path} {body} -> {answer}");
    }
    // One request per 100 s, a burst of 2: once in force, mlp refuses with a long Retry-After.
    let (status, answer) = put(
        "/v1/models/mlp/limits",
        json!({"requests_per_s": 0.01, "requests_burst": 2}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let start = Instant::now();
    let retry_after = loop {
        let (status, retry_after, _) = infer(&gateway, "mlp", None).await;
        if status == 429 {
            break retry_after;
        }
        assert_eq!(status, 200);
        assert!(start.elapsed() < Duration::from_secs(5), "never limited");
    };
    assert!(matches!(retry_after, Some(90..=100)), "{retry_after:?}");
    for _ in 0..3 {
        assert_eq!(infer(&gateway, "mlp", None).await.0, 429);
    }
    assert_eq!(
        infer(&gateway, "digits", None).await.0,
        200,
        "another model is not limited"
    );
    // A tenant refused by the model's limit has it counted under its name.
    let key = secret(&make_key(&gateway, json!({"name": "team-m"})).await);
    // Once the key is in force, a caller without one is refused.
    until_status(&gateway, "mlp", "sy_none", 401).await;
    assert_eq!(infer(&gateway, "mlp", Some(&key)).await.0, 429);
    let list = key_list(&gateway).await;
    assert!(
        list["keys"][0]["figures"]["refused"]["model_limit"]
            .as_u64()
            .unwrap()
            >= 1,
        "{list}"
    );
    let (status, shown) = gateway
        .admin(
            Method::GET,
            "/v1/models/mlp/limits",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["limits"],
        json!({"requests_per_s": 0.01, "requests_burst": 2})
    );
    let (status, _) = gateway
        .admin(
            Method::DELETE,
            "/v1/models/mlp/limits",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let took = until_status(&gateway, "mlp", &key, 200).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    gateway.stop().await;
}
