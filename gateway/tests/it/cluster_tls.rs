//! Three gateway nodes as one cluster with TLS on every listener: real `switchyard` processes
//! on loopback, sharing one real PostgreSQL registry. A request to the node that does not host
//! the version is forwarded over TLS; a request that claims to come from a node, without that
//! node's credential, is refused; a host stopped with SIGSTOP leaves the rotation within
//! seconds; and the hosts together run no more requests than the clients sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::pki::{Pki, make_pki};
use common::{MLP_IN, WRITER_TOKEN, free_port, mlp_raw_request, models_dir, postgres_url};
use serde_json::Value;
use switchyard_gateway::auth::{NODE_CREDENTIAL, NodeKey, unix_ms};
use switchyard_gateway::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const NODES: usize = 3;

struct Node {
    id: String,
    grpc: u16,
    admin: u16,
    metrics: u16,
    child: common::Child,
}

/// mlp version 1 with two replicas of 100 MiB: placed on two of the three nodes.
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let target = repo.path().join("mlp/1/model.onnx");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(models_dir().join("mlp/1/model.onnx"), target).unwrap();
    let base = std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap();
    std::fs::write(
        repo.path().join("mlp/model.toml"),
        format!("replicas = 2\nmemory = \"100MiB\"\n{base}"),
    )
    .unwrap();
    repo
}

fn start_node(index: usize, repo: &Path, registry: &str, config: &Path) -> Node {
    let id = format!("node-{index}");
    let (http, grpc, admin, metrics) = (free_port(), free_port(), free_port(), free_port());
    let log = match std::env::var_os("SWITCHYARD_CLUSTER_LOGS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            Stdio::from(std::fs::File::create(Path::new(&dir).join(format!("{id}.err"))).unwrap())
        }
        None => Stdio::null(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--models")
        .arg(repo)
        .args(["--registry", registry])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(["--cluster", "--node-id", &id])
        .args(["--advertise", &format!("127.0.0.1:{grpc}")])
        .env("SWITCHYARD_ADMIN_TOKEN", WRITER_TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Node {
        id,
        grpc,
        admin,
        metrics,
        child: common::Child(child),
    }
}

/// `GET /v1/cluster` over HTTPS (curl: the tests' reqwest speaks no TLS); `None` until the
/// node answers.
async fn cluster(node: &Node, pki: &Pki) -> Option<Value> {
    let url = format!("https://127.0.0.1:{}/v1/cluster", node.admin);
    let ca = pki.ca.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(ca)
            .args(["-H", &format!("Authorization: Bearer {WRITER_TOKEN}"), &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    serde_json::from_slice(&output.stdout).ok()
}

/// The nodes on which mlp version 1 is placed and ready, once two are.
fn hosts(cluster: &Value) -> Option<Vec<String>> {
    let placed: Vec<String> = cluster["placements"]
        .as_array()?
        .iter()
        .filter(|row| row["model"] == "mlp" && row["version"] == "1")
        .map(|row| row["node"].as_str().unwrap().to_owned())
        .collect();
    let ready =
        placed.iter().all(|node| {
            cluster["nodes"].as_array().unwrap().iter().any(|n| {
                n["id"] == node.as_str()
                    && n["alive"] == true
                    && n["versions"].as_array().unwrap().iter().any(|v| {
                        v["model"] == "mlp" && v["version"] == "1" && v["state"] == "ready"
                    })
            })
        });
    (placed.len() == 2 && ready).then_some(placed)
}

async fn tls_client(node: &Node, pki: &Pki) -> GrpcInferenceServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", node.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

fn mlp_v1(id: u64) -> tonic::Request<switchyard_gateway::protocol::grpc::pb::ModelInferRequest> {
    let mut message = mlp_raw_request(&vec![0.25; MLP_IN], 1);
    message.model_version = "1".into();
    message.id = format!("request-{id}");
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(3));
    request
}

/// The requests a node ran for mlp version 1, by its own metrics (a node that forwards a
/// request does not count it there; the node that runs it does).
async fn ran(node: &Node) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", node.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("switchyard_requests_total{")
                && line.contains("model=\"mlp\"")
                && line.contains("version=\"1\"")
        })
        .map(|line| {
            line.rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap_or(0.0) as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_forwards_refuses_forged_nodes_and_drops_a_stopped_peer() {
    let repo = repository();
    let pki = make_pki(repo.path());
    let config = repo.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[devices]]\nid = \"cpu\"\nmemory = \"550MiB\"\n\n[tls]\ncert = {:?}\nkey = {:?}\n\n\
             [cluster]\npeer_ca = {:?}\npeer_stall_timeout = \"2s\"\n",
            pki.cert, pki.key, pki.ca
        ),
    )
    .unwrap();
    let registry = postgres_url().await;
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|index| start_node(index, repo.path(), &registry, &config))
        .collect();

    let started = Instant::now();
    let hosts = loop {
        if let Some(cluster) = cluster(&nodes[0], &pki).await
            && let Some(hosts) = hosts(&cluster)
        {
            break hosts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "mlp 1 was not placed on two nodes and loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let forwarder = nodes.iter().position(|n| !hosts.contains(&n.id)).unwrap();
    let host_indices: Vec<usize> = (0..NODES).filter(|i| *i != forwarder).collect();
    eprintln!("mlp 1 on {hosts:?}; {} forwards", nodes[forwarder].id);

    // A forward over TLS: the answer comes from a host, through the node that has no replica.
    let mut client = tls_client(&nodes[forwarder], &pki).await;
    let answer = client.model_infer(mlp_v1(0)).await.unwrap().into_inner();
    assert_eq!(answer.model_version, "1");
    assert_eq!(answer.raw_output_contents[0].len(), 10 * 4, "ten logits");
    let sent = AtomicU64::new(1);

    // A client that claims to be a node: without the credential, with a made-up one, and with
    // one signed by a key that is not the cluster's, it is refused before anything runs.
    let host = &nodes[host_indices[0]];
    let mut direct = tls_client(host, &pki).await;
    let forged_key = NodeKey::new(b"a guess at the cluster's secret");
    let forgeries = [
        None,
        Some("1700000000000.00".to_owned()),
        Some(forged_key.sign(&nodes[forwarder].id, unix_ms())),
    ];
    for credential in forgeries {
        let mut request = mlp_v1(0);
        request.metadata_mut().insert(
            "switchyard-forwarded-from",
            nodes[forwarder].id.parse().unwrap(),
        );
        if let Some(credential) = &credential {
            request
                .metadata_mut()
                .insert(NODE_CREDENTIAL, credential.parse().unwrap());
        }
        let refused = direct.model_infer(request).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{credential:?}"
        );
        assert!(
            refused.message().contains("no valid node credential"),
            "{refused:?}"
        );
    }

    // Load through the forwarding node, then one host stopped (SIGSTOP): it keeps its
    // connections open and answers nothing.
    let sent = Arc::new(sent);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, sent, stopped_at) = (stop.clone(), sent.clone(), stopped_at.clone());
        let mut client = client.clone();
        workers.push(tokio::spawn(async move {
            // (since the stop, succeeded, error) of each request sent after it.
            let mut after = Vec::new();
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = sent.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let result = client.model_infer(mlp_v1(id)).await;
                let since = stopped_at
                    .lock()
                    .unwrap()
                    .map(|at| began.saturating_duration_since(at));
                ok += u64::from(result.is_ok());
                if let Some(since) = since {
                    after.push((since, result.err().map(|e| e.message().to_owned())));
                }
            }
            (ok, after)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = host_indices[0];
    let pid = nodes[victim].child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    *stopped_at.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    let mut after = Vec::new();
    for worker in workers {
        let (ok, outcomes) = worker.await.unwrap();
        answered += ok;
        after.extend(outcomes);
    }
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let late: Vec<_> = after
        .iter()
        .filter(|(since, error)| *since > Duration::from_secs(4) && error.is_some())
        .collect();
    eprintln!(
        "{} requests after the stop; failures: {:?}",
        after.len(),
        after
            .iter()
            .filter(|(_, e)| e.is_some())
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        after
            .iter()
            .filter(|(since, _)| *since > Duration::from_secs(4))
            .count()
            > 20,
        "the survivor answered too few requests"
    );
    assert!(
        late.is_empty(),
        "4 s after the stop, the stopped host should be out of rotation: {late:?}"
    );

    // No request ran twice: the nodes together ran at most what the clients sent (requests in
    // flight to the stopped host may have run there when it went on, but none elsewhere too).
    // Once the stopped host was dead, the leader placed its replica on the forwarding node,
    // which then ran requests itself: every node counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut total = 0;
    for node in &nodes {
        total += ran(node).await;
    }
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("sent {sent}, answered {answered}, ran on the nodes {total}");
    assert!(total >= answered, "every answer was run somewhere");
    assert!(
        total <= sent,
        "the hosts ran {total} requests of {sent} sent"
    );
    for node in &mut nodes {
        let _ = node.child.0.kill();
    }
}
