//! Three gateway nodes as one cluster: real `switchyard` processes, each in its own network
//! namespace (ip netns + veth on a bridge this test creates and removes), sharing one real
//! PostgreSQL registry. Their CPU budgets hold only some of the versions each, so the leader
//! must place them; every node answers for every version, forwarding what it does not host;
//! and after `kill -9` of a node under load its versions are placed again, while the versions
//! that also live on another node lose no request but the one in flight to the victim (which
//! may have run there, and is not run again elsewhere).
//!
//! Needs root (to make namespaces); elsewhere it says why and passes without checking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{WRITER_TOKEN, models_dir, postgres_url, repo_root};
use serde_json::{Value, json};

const NODES: usize = 3;
/// Declared per replica in the test's model.toml files; a node's budget holds five.
const REPLICA_MIB: u64 = 100;
const BUDGET_MIB: u64 = 550;

/// The namespaces, their veths and the bridge joining them; removed on drop.
struct Netns {
    bridge: String,
    namespaces: Vec<String>,
    subnet: [u8; 3],
}

impl Netns {
    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    fn node_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            2 + index as u8,
        )
    }

    /// A private /24 no interface of this machine uses, named after this process.
    fn create(count: usize) -> Netns {
        let tag = std::process::id() % 100_000;
        let used = run_output("ip", &["-4", "-o", "addr"]);
        let third = (0..250u8)
            .map(|offset| ((tag as u8).wrapping_add(offset)) % 250)
            .find(|third| !used.contains(&format!("10.243.{third}.")))
            .expect("no free 10.243.x.0/24 for the test's namespaces");
        let netns = Netns {
            bridge: format!("sy{tag}br"),
            namespaces: (0..count).map(|i| format!("sy{tag}n{i}")).collect(),
            subnet: [10, 243, third],
        };
        run("ip", &["link", "add", &netns.bridge, "type", "bridge"]);
        let host = format!("{}/24", netns.host_ip());
        run("ip", &["addr", "add", &host, "dev", &netns.bridge]);
        run("ip", &["link", "set", &netns.bridge, "up"]);
        for (index, namespace) in netns.namespaces.iter().enumerate() {
            let outside = format!("sy{tag}h{index}");
            let inside = format!("sy{tag}v{index}");
            run("ip", &["netns", "add", namespace]);
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            run(
                "ip",
                &["link", "set", &outside, "master", &netns.bridge, "up"],
            );
            run("ip", &["link", "set", &inside, "netns", namespace]);
            let address = format!("{}/24", netns.node_ip(index));
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", namespace.as_str()];
                all.extend_from_slice(args);
                run("ip", &all);
            };
            exec(&["ip", "addr", "add", &address, "dev", &inside]);
            exec(&["ip", "link", "set", &inside, "up"]);
            exec(&["ip", "link", "set", "lo", "up"]);
        }
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            // Deleting a namespace deletes its veth, and with it the peer on the bridge.
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn run_output(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new(program).args(args).output().unwrap().stdout).into()
}

/// Relays the namespaces' connections to PostgreSQL, which listens on the host's loopback:
/// the nodes reach it at the bridge's address. A connection closed on one side is closed on
/// the other, so a killed node's advisory lock goes with it.
async fn relay(listen: SocketAddr, upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let bound = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    bound
}

/// The nodes' namespaces and a fresh PostgreSQL registry they reach through the bridge; `None`
/// where namespaces cannot be made (not root, or no iproute2).
async fn namespaces_and_registry() -> Option<(Netns, String)> {
    if run_output("id", &["-u"]).trim() != "0" || Command::new("ip").arg("-V").output().is_err() {
        return None;
    }
    let netns = Netns::create(NODES);
    let upstream: SocketAddr = {
        let url = std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
            .expect("run through scripts/with-postgres");
        let host_port = url.split('@').nth(1).unwrap().split('/').next().unwrap();
        host_port.parse().unwrap()
    };
    let relayed = relay(SocketAddr::new(netns.host_ip().into(), 0), upstream).await;
    let database = postgres_url().await;
    let name = database.rsplit('/').next().unwrap();
    Some((netns, format!("postgres://postgres@{relayed}/{name}")))
}

/// mlp with two ONNX versions of two replicas each, digits with three ONNX versions of one
/// replica, and silero_vad (served as sequences) with two: nine replicas of 100 MiB declared,
/// for nodes that hold five.
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| {
        let target = repo.path().join(to);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(models_dir().join(from), target).unwrap();
    };
    copy("mlp/1/model.onnx", "mlp/1/model.onnx");
    copy("mlp/1/model.onnx", "mlp/2/model.onnx");
    for version in 1..=3 {
        copy(
            &format!("digits/{version}/model.onnx"),
            &format!("digits/{version}/model.onnx"),
        );
    }
    copy("silero_vad/1/model.onnx", "silero_vad/1/model.onnx");
    let settings = |model: &str, replicas: usize| {
        let base = std::fs::read_to_string(models_dir().join(model).join("model.toml")).unwrap();
        format!("replicas = {replicas}\nmemory = \"{REPLICA_MIB}MiB\"\n{base}")
    };
    std::fs::write(repo.path().join("mlp/model.toml"), settings("mlp", 2)).unwrap();
    std::fs::write(repo.path().join("digits/model.toml"), settings("digits", 1)).unwrap();
    std::fs::write(
        repo.path().join("silero_vad/model.toml"),
        settings("silero_vad", 2),
    )
    .unwrap();
    repo
}

struct Node {
    id: String,
    ip: Ipv4Addr,
    child: Child,
}

impl Node {
    fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.ip)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(netns: &Netns, index: usize, repo: &Path, registry: &str, config: &Path) -> Node {
    let ip = netns.node_ip(index);
    let id = format!("node-{index}");
    let logs = std::env::var_os("SWITCHYARD_CLUSTER_LOGS").map(std::path::PathBuf::from);
    let output = |name: &str| match &logs {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            Stdio::from(std::fs::File::create(dir.join(format!("{id}.{name}"))).unwrap())
        }
        None => Stdio::null(),
    };
    // `ip netns exec` execs the gateway in the namespace: the child is the gateway itself,
    // and killing it kills the gateway.
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.namespaces[index]])
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--models")
        .arg(repo)
        .args(["--registry", registry])
        .args(["--http-addr", &format!("{ip}:8000")])
        .args(["--grpc-addr", &format!("{ip}:8001")])
        .args(["--metrics-addr", &format!("{ip}:8002")])
        .args(["--admin-addr", &format!("{ip}:8080")])
        .args(["--cluster", "--node-id", &id])
        .current_dir(repo_root())
        .env("SWITCHYARD_ADMIN_TOKEN", WRITER_TOKEN)
        .stdout(output("out"))
        .stderr(output("err"))
        .spawn()
        .unwrap();
    Node { id, ip, child }
}

/// A node's Prometheus page.
async fn metrics_of(client: &reqwest::Client, node: &Node) -> String {
    client
        .get(node.url(8002, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .bearer_auth(WRITER_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.unwrap()
}

/// One inference request naming its version: Ok(version that answered) or the failure.
async fn infer(
    client: &reqwest::Client,
    node: Ipv4Addr,
    model: &str,
    version: &str,
) -> Result<String, String> {
    let x: Vec<f32> = (0..64).map(|i| (i % 7) as f32 / 7.0).collect();
    let body = json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x}]});
    let url = format!("http://{node}:8000/v2/models/{model}/versions/{version}/infer");
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if status != 200 {
        return Err(format!("{url}: {status} {body}"));
    }
    let outputs = body["outputs"][0]["data"].as_array().map_or(0, Vec::len);
    if outputs != 10 {
        return Err(format!("{url}: {outputs} logits in {body}"));
    }
    Ok(body["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Where the leader placed each version: (model, version) -> nodes.
fn placement(cluster: &Value) -> BTreeMap<(String, String), Vec<String>> {
    let mut placed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for row in cluster["placements"].as_array().unwrap() {
        placed
            .entry((
                row["model"].as_str().unwrap().into(),
                row["version"].as_str().unwrap().into(),
            ))
            .or_default()
            .push(row["node"].as_str().unwrap().into());
    }
    placed
}

/// Versions that take `x` [1, 64] and answer 10 logits, with their replicas.
const VERSIONS: [(&str, &str, usize); 5] = [
    ("digits", "1", 1),
    ("digits", "2", 1),
    ("digits", "3", 1),
    ("mlp", "1", 2),
    ("mlp", "2", 2),
];

/// Served as sequences, on two nodes.
const SEQUENCE_VERSION: (&str, &str, usize) = ("silero_vad", "1", 2);

/// One chunk of a silero_vad stream over HTTP; its speech probability.
async fn sequence_step(
    client: &reqwest::Client,
    node: Ipv4Addr,
    window: &[f32],
    id: u64,
    start: bool,
    end: bool,
) -> f32 {
    let body = json!({
        "inputs": [
            {"name": "input", "shape": [1, window.len()], "datatype": "FP32", "data": window},
            {"name": "sr", "shape": [], "datatype": "INT64", "data": [16000]},
        ],
        "parameters": {"sequence_id": id, "sequence_start": start, "sequence_end": end},
    });
    let url = format!("http://{node}:8000/v2/models/silero_vad/versions/1/infer");
    let response = client.post(&url).json(&body).send().await.unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{url} sequence {id}: {answer}");
    answer["outputs"][0]["data"][0].as_f64().unwrap() as f32
}

/// Whether every version has its replicas placed on live nodes and ready on each of them.
fn settled(cluster: &Value, dead: Option<&str>) -> bool {
    let placed = placement(cluster);
    VERSIONS
        .iter()
        .chain([&SEQUENCE_VERSION])
        .all(|(model, version, replicas)| {
            let Some(nodes) = placed.get(&(model.to_string(), version.to_string())) else {
                return false;
            };
            nodes.len() == *replicas
                && nodes.iter().all(|node| {
                    Some(node.as_str()) != dead
                        && cluster["nodes"].as_array().unwrap().iter().any(|n| {
                            n["id"] == node.as_str()
                                && n["alive"] == true
                                && n["versions"].as_array().unwrap().iter().any(|v| {
                                    v["model"] == *model
                                        && v["version"] == *version
                                        && v["state"] == "ready"
                                })
                        })
                })
        })
}

#[derive(Default)]
struct Outcomes {
    ok: u64,
    failed: u64,
    /// Failures after the kill: (since the kill, what failed).
    failures: Vec<(Duration, String)>,
    /// The longest time without an answer after the kill.
    longest_gap: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_place_forward_and_survive_a_kill() {
    let Some((netns, registry)) = namespaces_and_registry().await else {
        eprintln!("skipped: making network namespaces needs root and iproute2");
        return;
    };
    let repo = repository();
    let config = repo.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[[devices]]\nid = \"cpu\"\nmemory = \"{BUDGET_MIB}MiB\"\n"),
    )
    .unwrap();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|index| start_node(&netns, index, repo.path(), &registry, &config))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Every version placed, within the budgets, and ready where it was placed.
    let started = Instant::now();
    let cluster = loop {
        let answer = client
            .get(nodes[0].url(8080, "/v1/cluster"))
            .bearer_auth(WRITER_TOKEN)
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 200
        {
            let cluster: Value = answer.json().await.unwrap();
            if settled(&cluster, None) {
                break cluster;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the cluster did not place and load every version"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("settled after {:?}", started.elapsed());
    assert_eq!(cluster["enabled"], true);
    let listed = cluster["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), NODES, "every node registered: {cluster}");
    for node in listed {
        assert_eq!(node["alive"], true, "{node}");
        assert_eq!(
            node["devices"][0]["budget"].as_u64(),
            Some(BUDGET_MIB << 20),
            "each node reports its budget: {node}"
        );
        let hosted = node["versions"].as_array().unwrap().len() as u64;
        assert!(
            hosted * REPLICA_MIB <= BUDGET_MIB,
            "a node holds no more than its budget: {node}"
        );
        assert!(
            hosted <= VERSIONS.len() as u64,
            "no node holds every version (six)"
        );
    }
    let placed = placement(&cluster);
    for ((model, version), on) in &placed {
        let mut distinct = on.clone();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            on.len(),
            "{model} {version}'s replicas are spread: {on:?}"
        );
    }
    eprintln!("placement: {placed:?}");

    // Every node answers for every version, by forwarding what it does not host.
    for node in &nodes {
        for (model, version, _) in VERSIONS {
            let answered = infer(&client, node.ip, model, version).await;
            assert_eq!(
                answered.as_deref(),
                Ok(version),
                "{} for {model} {version}",
                node.id
            );
        }
    }
    let forwarding_node = nodes
        .iter()
        .find(|node| {
            VERSIONS.iter().any(|(model, version, _)| {
                !placed[&(model.to_string(), version.to_string())].contains(&node.id)
            })
        })
        .unwrap();
    let metrics = metrics_of(&client, forwarding_node).await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("switchyard_forwarded_requests_total")
                && line.contains("outcome=\"success\"")
        ),
        "forwarded requests are counted on {}",
        forwarding_node.id
    );
    // A sequence whose chunks reach a different node each time, as behind a load balancer:
    // its answers are those of the same stream sent to one node, so its state followed it.
    // Each node's view of who serves what is its last heartbeat's, up to one behind the
    // registry that `settled` read: a sequence started meanwhile may live where a lagging
    // node does not look for it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let audio = common::speech::audio();
    let chunks = 24;
    let mut alone = Vec::new();
    let mut spread = Vec::new();
    for index in 0..chunks {
        let window = common::speech::window(&audio, 0, index);
        let (start, end) = (index == 0, index == chunks - 1);
        alone.push(sequence_step(&client, nodes[0].ip, &window, 7_001, start, end).await);
        let node = nodes[index % NODES].ip;
        spread.push(sequence_step(&client, node, &window, 7_002, start, end).await);
    }
    for (index, (one, many)) in alone.iter().zip(&spread).enumerate() {
        assert!(
            (one - many).abs() <= 1e-4,
            "chunk {index}: {many} across the nodes, {one} on one node"
        );
    }
    assert!(
        alone.iter().any(|p| (p - alone[0]).abs() > 1e-3),
        "the stream's probabilities move, so a lost state would show: {alone:?}"
    );

    // Metadata and config of a version a node does not host, as Triton's clients read them
    // before they send anything.
    for (model, version, _) in VERSIONS {
        if placed[&(model.to_string(), version.to_string())].contains(&forwarding_node.id) {
            continue;
        }
        let metadata = get(
            &client,
            &forwarding_node.url(8000, &format!("/v2/models/{model}/versions/{version}")),
        )
        .await;
        assert_eq!(metadata["inputs"][0]["name"], "x", "{metadata}");
        assert_eq!(metadata["inputs"][0]["datatype"], "FP32", "{metadata}");
        assert_eq!(
            metadata["outputs"][0]["shape"],
            json!([-1, 10]),
            "{metadata}"
        );
        let config = get(
            &client,
            &forwarding_node.url(
                8000,
                &format!("/v2/models/{model}/versions/{version}/config"),
            ),
        )
        .await;
        assert_eq!(config["max_batch_size"], 64, "{config}");
        assert_eq!(config["input"][0]["dims"], json!([64]), "{config}");
    }
    // The mark of a forwarded request without the node's credential is a forged identity:
    // refused before anything runs.
    let (model, version, _) = VERSIONS
        .iter()
        .find(|(m, v, _)| !placed[&(m.to_string(), v.to_string())].contains(&forwarding_node.id))
        .unwrap();
    let x: Vec<f32> = vec![0.5; 64];
    let forged = client
        .post(forwarding_node.url(
            8000,
            &format!("/v2/models/{model}/versions/{version}/infer"),
        ))
        .header("switchyard-forwarded-from", "a-client-pretending")
        .json(&json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let error: Value = forged.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("no valid node credential"),
        "{error}"
    );
    // The cluster's figures follow the management API's auth rules.
    let anonymous = client
        .get(forwarding_node.url(8080, "/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "/v1/cluster without the token");
    // And the CLI draws them: a row per node, a row per placed version.
    let printed = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["cluster", "--admin-url", &forwarding_node.url(8080, "")])
        .args(["--token", WRITER_TOKEN])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    for node in &nodes {
        assert!(
            printed
                .lines()
                .any(|line| line.starts_with(&node.id) && line.contains(" yes ")),
            "{} alive in `switchyard cluster`:\n{printed}",
            node.id
        );
    }
    assert!(
        printed
            .lines()
            .any(|line| line.starts_with("mlp") && line.contains("(cpu x1)")),
        "{printed}"
    );

    let model = get(&client, &nodes[0].url(8080, "/v1/models/mlp")).await;
    let on_nodes = model["versions"][0]["nodes"].as_array().unwrap();
    assert_eq!(
        on_nodes.len(),
        2,
        "the API shows the nodes serving mlp 1: {model}"
    );

    // The victim: the node holding the most versions that live nowhere else, beside at least
    // one that also lives on another node.
    let victim = nodes
        .iter()
        .enumerate()
        .max_by_key(|(_, node)| {
            let mut only_here = 0;
            let mut shared = 0;
            for on in placed.values() {
                if on.contains(&node.id) {
                    if on.len() == 1 {
                        only_here += 1;
                    } else {
                        shared += 1;
                    }
                }
            }
            (shared > 0, only_here)
        })
        .map(|(index, _)| index)
        .unwrap();
    let victim_id = nodes[victim].id.clone();
    let survivors: Vec<usize> = (0..NODES).filter(|i| *i != victim).collect();
    eprintln!("killing {victim_id}");

    // Load on the survivors, for every version, before and after the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut workers = Vec::new();
    let survivor_nodes: Vec<(String, Ipv4Addr)> = survivors
        .iter()
        .map(|&i| (nodes[i].id.clone(), nodes[i].ip))
        .collect();
    for (id, ip) in survivor_nodes {
        for (model, version, _) in VERSIONS {
            let client = client.clone();
            let stop = stop.clone();
            let killed_at = killed_at.clone();
            let id = id.clone();
            workers.push(tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                let mut last_answer: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    let result = infer(&client, ip, model, version).await;
                    let now = Instant::now();
                    let kill = *killed_at.lock().unwrap();
                    match result {
                        Ok(_) => {
                            outcomes.ok += 1;
                            if let (Some(kill), Some(last)) = (kill, last_answer) {
                                let from = last.max(kill);
                                outcomes.longest_gap = outcomes
                                    .longest_gap
                                    .max(now.saturating_duration_since(from));
                            }
                            last_answer = Some(now);
                        }
                        Err(error) => {
                            outcomes.failed += 1;
                            if let Some(kill) = kill {
                                outcomes
                                    .failures
                                    .push((now.saturating_duration_since(kill), error));
                            } else {
                                outcomes
                                    .failures
                                    .push((Duration::ZERO, format!("before the kill: {error}")));
                            }
                        }
                    }
                }
                ((model, version, id), outcomes)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Noted first: a request failing the instant the node dies is after the kill.
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);
    nodes[victim].child.kill().unwrap();
    nodes[victim].child.wait().unwrap();

    // Its versions are placed again on the survivors.
    let replaced = loop {
        let cluster = get(&client, &nodes[survivors[0]].url(8080, "/v1/cluster")).await;
        if settled(&cluster, Some(&victim_id)) {
            break kill.elapsed();
        }
        assert!(
            kill.elapsed() < Duration::from_secs(30),
            "{victim_id}'s versions were not placed again and loaded: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("placed again and ready {replaced:?} after the kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = Vec::new();
    for worker in workers {
        let ((model, version, node), outcomes) = worker.await.unwrap();
        let on = &placed[&(model.to_string(), version.to_string())];
        let survived = on.iter().any(|n| *n != victim_id);
        eprintln!(
            "{node} {model} {version} (on {on:?}): {} ok, {} failed, longest gap after the kill {:?}",
            outcomes.ok, outcomes.failed, outcomes.longest_gap
        );
        for (at, error) in outcomes.failures.iter().take(3) {
            eprintln!("    at +{at:?}: {error}");
        }
        assert!(outcomes.ok > 0, "{node} answered {model} {version}");
        if survived {
            // Each worker sends one request at a time: the one in flight to the victim when
            // it died may have run there, so it fails rather than run twice; no other may.
            assert!(
                outcomes.failed <= 1
                    && outcomes
                        .failures
                        .iter()
                        .all(|(_, error)| error.contains("it may have run there")),
                "{model} {version} also lives on a survivor: only a request in flight to the \
                 victim may fail ({node}): {:?}",
                outcomes.failures
            );
        }
        assert!(
            outcomes
                .failures
                .iter()
                .all(|(at, error)| *at > Duration::ZERO && !error.starts_with("before")),
            "nothing fails before the kill"
        );
        report.push((
            model,
            version,
            node,
            survived,
            outcomes.failed,
            outcomes.longest_gap,
        ));
    }
    assert!(
        replaced < Duration::from_secs(10),
        "{victim_id}'s versions took {replaced:?} to be placed again and ready"
    );
    let cluster = get(&client, &nodes[survivors[0]].url(8080, "/v1/cluster")).await;
    let dead = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == victim_id.as_str())
        .unwrap();
    assert_eq!(
        dead["alive"], false,
        "the API shows the killed node dead: {dead}"
    );
    assert!(
        placement(&cluster)
            .values()
            .all(|on| !on.contains(&victim_id)),
        "nothing stays placed on the dead node"
    );
    drop(nodes);
}

/// Eight versions of one 100 MiB replica each for nodes that hold two, two and three: the
/// leader places seven, and the eighth is resident nowhere. Beside them `big`, of 400 MiB.
fn pool_repository() -> (tempfile::TempDir, Vec<(String, String)>) {
    let repo = tempfile::tempdir().unwrap();
    let mut versions = Vec::new();
    let mut add = |model: &str, from: &str, version: u32| {
        let target = repo.path().join(format!("{model}/{version}/model.onnx"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(models_dir().join(from), target).unwrap();
        versions.push((model.to_owned(), version.to_string()));
    };
    for version in 1..=3 {
        add("digits", &format!("digits/{version}/model.onnx"), version);
    }
    for version in 1..=5 {
        add("mlp", "mlp/1/model.onnx", version);
    }
    for model in ["digits", "mlp"] {
        let base = std::fs::read_to_string(models_dir().join(model).join("model.toml")).unwrap();
        std::fs::write(
            repo.path().join(model).join("model.toml"),
            format!("replicas = 1\nmemory = \"{REPLICA_MIB}MiB\"\n{base}"),
        )
        .unwrap();
    }
    // And one that no node could hold even empty.
    let big = repo.path().join("big/1/model.onnx");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::copy(models_dir().join("mlp/1/model.onnx"), big).unwrap();
    let base = std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap();
    std::fs::write(
        repo.path().join("big/model.toml"),
        format!("replicas = 1\nmemory = \"{}MiB\"\n{base}", 4 * REPLICA_MIB),
    )
    .unwrap();
    (repo, versions)
}

/// The events after `after` with this action and model.
async fn events(client: &reqwest::Client, node: &Node, after: i64, action: &str) -> Vec<Value> {
    let answer = get(
        client,
        &node.url(8080, &format!("/v1/events?after={after}&limit=1000")),
    )
    .await;
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_no_node_holds_loads_on_demand_where_room_is_made_and_the_others_forward() {
    let Some((netns, registry)) = namespaces_and_registry().await else {
        eprintln!("skipped: making network namespaces needs root and iproute2");
        return;
    };
    let (repo, versions) = pool_repository();
    let budgets = [2 * REPLICA_MIB, 2 * REPLICA_MIB, 3 * REPLICA_MIB];
    let nodes: Vec<Node> = (0..NODES)
        .map(|index| {
            let config = repo.path().join(format!("node-{index}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[[devices]]\nid = \"cpu\"\nmemory = \"{}MiB\"\n\n[cluster]\n\
                     heartbeat = \"250ms\"\ndead_after = \"3s\"\n",
                    budgets[index]
                ),
            )
            .unwrap();
            start_node(&netns, index, repo.path(), &registry, &config)
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Seven placed and ready; the eighth reads as not resident, not as failed.
    let started = Instant::now();
    let (cluster, cold) = loop {
        let answer = client
            .get(nodes[0].url(8080, "/v1/cluster"))
            .bearer_auth(WRITER_TOKEN)
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 200
        {
            let cluster: Value = answer.json().await.unwrap();
            let placed = placement(&cluster);
            let ready = |model: &str, version: &str| {
                cluster["nodes"].as_array().unwrap().iter().any(|n| {
                    n["versions"].as_array().unwrap().iter().any(|v| {
                        v["model"] == model && v["version"] == version && v["state"] == "ready"
                    })
                })
            };
            let unplaced: Vec<&(String, String)> = versions
                .iter()
                .filter(|v| !placed.contains_key(v))
                .collect();
            if placed.len() == 7
                && placed.keys().all(|(model, version)| ready(model, version))
                && unplaced.len() == 1
            {
                break (cluster, unplaced[0].clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the cluster did not place seven versions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let placed = placement(&cluster);
    eprintln!("placement: {placed:?}; resident nowhere: {cold:?}");
    let state = get(
        &client,
        &nodes[0].url(8080, &format!("/v1/models/{}", cold.0)),
    )
    .await;
    let record = state["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["label"] == cold.1.as_str())
        .unwrap()
        .clone();
    assert_eq!(record["state"], "pending", "{record}");
    assert!(
        record["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("not resident"),
        "{record}"
    );

    // Node 2 holds three, all idle; the one of them not asked for since it loaded is the
    // least recently used.
    let on_node_2: Vec<&(String, String)> = placed
        .iter()
        .filter(|(_, on)| on.contains(&"node-2".to_owned()))
        .map(|(version, _)| version)
        .collect();
    assert_eq!(on_node_2.len(), 3, "{placed:?}");
    let victim = on_node_2[0].clone();
    for (model, version) in &on_node_2[1..] {
        assert_eq!(
            infer(&client, nodes[2].ip, model, version).await.as_deref(),
            Ok(version.as_str())
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = get(
        &client,
        &nodes[0].url(8080, "/v1/events?after=0&limit=1000"),
    )
    .await["next_after"]
        .as_i64()
        .unwrap();

    // Ten requests for it on the two nodes with no room: each answered, by one load on the
    // node with the most memory to evict, which the other two forward to.
    let mut asks = Vec::new();
    for index in 0..10 {
        let (client, ip, cold) = (client.clone(), nodes[index % 2].ip, cold.clone());
        asks.push(tokio::spawn(async move {
            infer(&client, ip, &cold.0, &cold.1).await
        }));
    }
    for ask in asks {
        assert_eq!(ask.await.unwrap().as_deref(), Ok(cold.1.as_str()));
    }
    let loads: Vec<Value> = events(&client, &nodes[0], before, "replicas.scale")
        .await
        .into_iter()
        .filter(|e| e["model"] == cold.0.as_str() && e["payload"]["version"] == cold.1.as_str())
        .collect();
    assert_eq!(loads.len(), 1, "one load for ten requests: {loads:?}");
    assert_eq!(loads[0]["payload"]["node"], "node-2", "{loads:?}");
    let evictions = events(&client, &nodes[0], before, "replicas.evict").await;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    assert_eq!(evictions[0]["model"], victim.0.as_str(), "{evictions:?}");
    assert_eq!(
        evictions[0]["payload"]["version"],
        victim.1.as_str(),
        "the least recently used on node-2 went: {evictions:?}"
    );
    assert_eq!(evictions[0]["payload"]["node"], "node-2");
    let metrics = metrics_of(&client, &nodes[2]).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("switchyard_evictions_total")
                && line.contains(&format!("model=\"{}\"", victim.0))
                && line.ends_with(" 1")),
        "node-2 counts the eviction:\n{metrics}"
    );
    for node in &nodes[..2] {
        let metrics = metrics_of(&client, node).await;
        assert!(
            metrics.lines().any(|line| {
                line.starts_with("switchyard_forwarded_requests_total")
                    && line.contains(&format!("model=\"{}\"", cold.0))
                    && line.contains("outcome=\"success\"")
            }),
            "{} forwarded it:\n{metrics}",
            node.id
        );
    }
    // A version no node can hold even by evicting everything: refused with the reason as soon
    // as the leader has looked, not kept waiting until the deadline.
    let asked = Instant::now();
    let refused = infer(&client, nodes[1].ip, "big", "1").await;
    let waited = asked.elapsed();
    let error = refused.expect_err("big has no room anywhere");
    assert!(
        error.contains("503") && error.contains("even evicting idle replicas"),
        "{error}"
    );
    assert!(waited < Duration::from_secs(10), "refused after {waited:?}");
    let asked = Instant::now();
    let again = infer(&client, nodes[0].ip, "big", "1").await;
    assert!(again.is_err(), "{again:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "refused at once the second time: {:?}",
        asked.elapsed()
    );

    // The evicted version is resident nowhere now, and comes back the same way.
    let answered = infer(&client, nodes[0].ip, &victim.0, &victim.1).await;
    assert_eq!(answered.as_deref(), Ok(victim.1.as_str()));
    let cluster = get(&client, &nodes[0].url(8080, "/v1/cluster")).await;
    for node in cluster["nodes"].as_array().unwrap() {
        let budget = node["devices"][0]["budget"].as_u64().unwrap();
        let hosted = node["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] != "draining")
            .count() as u64;
        assert!(
            hosted * (REPLICA_MIB << 20) <= budget,
            "a node holds no more than its budget: {node}"
        );
    }
}

/// One `mlp_heavy` version that the autoscaler scales from one replica to three (at half a
/// request in flight per replica), 100 MiB declared each, on nodes that hold five.
fn hot_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let target = repo.path().join("hot/1/model.onnx");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(models_dir().join("mlp_heavy/1/model.onnx"), target).unwrap();
    std::fs::write(
        repo.path().join("hot/model.toml"),
        format!(
            "max_batch_size = 512\nmemory = \"{REPLICA_MIB}MiB\"\nmin_replicas = 1\n\
             max_replicas = 3\ntarget_concurrency = 0.5\nscale_window = \"1s\"\n\
             scale_up_delay = \"1s\"\nscale_down_delay = \"3s\"\n"
        ),
    )
    .unwrap();
    repo
}

/// The nodes the leader placed `hot` on.
async fn hot_nodes(client: &reqwest::Client, node: &Node) -> Vec<String> {
    let cluster = get(client, &node.url(8080, "/v1/cluster")).await;
    placement(&cluster)
        .remove(&("hot".to_owned(), "1".to_owned()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_version_gets_replicas_on_more_nodes_and_gives_them_back() {
    let Some((netns, registry)) = namespaces_and_registry().await else {
        eprintln!("skipped: making network namespaces needs root and iproute2");
        return;
    };
    let repo = hot_repository();
    let config = repo.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[devices]]\nid = \"cpu\"\nmemory = \"{BUDGET_MIB}MiB\"\n\n[cluster]\n\
             heartbeat = \"250ms\"\ndead_after = \"3s\"\n"
        ),
    )
    .unwrap();
    let nodes: Vec<Node> = (0..NODES)
        .map(|index| start_node(&netns, index, repo.path(), &registry, &config))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        if client
            .get(nodes[0].url(8080, "/v1/cluster"))
            .bearer_auth(WRITER_TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
            && hot_nodes(&client, &nodes[0]).await.len() == 1
            && infer_heavy(&client, nodes[0].ip).await.is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "hot was never placed and served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Six clients at a time, all through node 0, for at most 40 s: the load across the
    // cluster calls for three replicas, which the leader spreads over the three nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (client, ip, stop) = (client.clone(), nodes[0].ip, stop.clone());
        clients.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(40);
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if let Err(error) = infer_heavy(&client, ip).await {
                    failures.push(error);
                }
            }
            failures
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let spread = loop {
        let on = hot_nodes(&client, &nodes[0]).await;
        if on.len() == NODES {
            break on;
        }
        assert!(
            Instant::now() < deadline,
            "hot never reached three nodes: {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Once every node serves it, each takes a share of what node 0 is sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let served_before: Vec<f64> = served_on(&client, &nodes).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served_after: Vec<f64> = served_on(&client, &nodes).await;
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        let failures = task.await.unwrap();
        assert!(failures.is_empty(), "requests failed: {failures:?}");
    }
    let serving = served_before
        .iter()
        .zip(&served_after)
        .filter(|(before, after)| after > before)
        .count();
    assert!(
        serving >= 2,
        "placed on {spread:?}, but the nodes served {served_before:?} then {served_after:?}"
    );

    // Idle again: the leader gives the replicas back, down to the minimum of one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on = hot_nodes(&client, &nodes[0]).await;
        if on.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "hot kept {on:?} while idle");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(infer_heavy(&client, nodes[2].ip).await, Ok(()));
}

/// One request of 256 rows for `hot` through `node`.
async fn infer_heavy(client: &reqwest::Client, node: Ipv4Addr) -> Result<(), String> {
    let rows = 256;
    let body = json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32",
                                  "data": vec![0.5f32; rows * 512]}]});
    let url = format!("http://{node}:8000/v2/models/hot/infer");
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status != 200 {
        return Err(format!(
            "{url}: {status} {}",
            response.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

/// The requests each node served for `hot` itself (not forwarded), from its metrics.
async fn served_on(client: &reqwest::Client, nodes: &[Node]) -> Vec<f64> {
    let mut served = Vec::new();
    for node in nodes {
        let metrics = metrics_of(client, node).await;
        served.push(
            metrics
                .lines()
                .filter(|line| {
                    line.starts_with("switchyard_requests_total{")
                        && line.contains("model=\"hot\"")
                        && line.contains("outcome=\"success\"")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        );
    }
    served
}
