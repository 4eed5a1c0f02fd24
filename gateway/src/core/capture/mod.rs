//! Payload capture (docs/capture.md): a sample of each captured model's requests, each with
//! its answer or error, the version chosen and why, the caller's key name, the latency and the
//! shadow's comparison, written as one JSON event to the model's sinks: JSON-lines files
//! under `capture.roots`, and HTTP endpoints taking CloudEvents.
//!
//! The request path does three cheap things and never waits:
//! - [`Capture::ticket`] draws the sample: one atomic load when no model is captured, a map
//!   lookup and a random number when one is;
//! - the pipeline and the core write what they know into the [`Ticket`]; tensors are
//!   reference-counted buffers, so keeping one is no copy;
//! - when the last holder lets go of the ticket (the pipeline once it has answered, or the
//!   shadow's task once it has compared), the event is offered to the encoder's bounded queue,
//!   and dropped and counted if that queue or the byte budget is full.
//!
//! Encoding and delivery run on their own threads and tasks (`sinks.rs`): one encoder thread,
//! a thread per file sink, a task per HTTP sink, each sink with its own bounded queue, so
//! that a slow sink drops its own events and no other sink's.

mod event;
mod sinks;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::CaptureConfig;
use crate::core::InferRequest;
use crate::core::route::Chosen;
use crate::error::GatewayError;
use crate::telemetry::capture::{CaptureFigures, CaptureFiguresView, SinkFiguresView};
use crate::telemetry::keys::KeyFigures;

use event::{Event, Outcome, ShadowNote};
use sinks::{Encoder, Sink};

/// The most sinks one model writes to.
pub const MAX_SINKS: usize = 8;
/// The most input or output names a capture lists (to keep, or to redact).
pub const MAX_NAMES: usize = 256;
/// The longest name, folder or URL a capture names.
pub const MAX_TEXT: usize = 1024;
/// The lowest sampling rate: one request in a million.
pub const MIN_SAMPLE: f64 = 1e-6;

/// A model's capture, as the management API takes it and the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// The fraction of the model's requests captured, from 0.000001 to 1.
    pub sample: f64,
    /// The inputs whose data is captured; absent: every input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// The outputs whose data is captured; absent: every output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    /// Inputs and outputs captured as their name, datatype and shape, without their data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Where the events go: one to eight sinks.
    pub sinks: Vec<SinkSpec>,
}

/// One place events go.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSpec {
    /// A folder under one of `capture.roots` (a relative one is under the first), where the
    /// events are appended to `capture.jsonl`, rotated by size.
    File(String),
    /// An http:// or https:// URL that each event is POSTed to as a CloudEvent (binary
    /// content mode, as KServe's logger sends them).
    Http(String),
}

impl CaptureSpec {
    /// Checks the spec against this gateway's roots: its bounds, and each file sink's place.
    pub fn check(&self, roots: &Roots) -> Result<(), String> {
        self.check_bounds()?;
        let mut folders = std::collections::BTreeSet::new();
        for sink in &self.sinks {
            if let SinkSpec::File(folder) = sink {
                let placed = roots.place(folder)?;
                roots.check_links(&placed)?;
                if !folders.insert(placed) {
                    return Err(format!(
                        "capture folder '{}' is named twice",
                        crate::error::quoted(folder)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks what holds on every gateway: the rate, the names, the sinks' count and URLs.
    /// (Another gateway of a cluster may have other roots: a folder outside its own is a
    /// sink it cannot start, shown with why, not a capture it ignores.)
    pub fn check_bounds(&self) -> Result<(), String> {
        if !(MIN_SAMPLE..=1.0).contains(&self.sample) {
            return Err(format!(
                "sample must be from {MIN_SAMPLE} to 1 (the fraction of requests captured), not {}",
                self.sample
            ));
        }
        let lists = [
            ("inputs", self.inputs.as_deref().unwrap_or_default()),
            ("outputs", self.outputs.as_deref().unwrap_or_default()),
            ("redact", &self.redact[..]),
        ];
        for (field, names) in lists {
            if names.len() > MAX_NAMES {
                return Err(format!("{field} lists more than {MAX_NAMES} names"));
            }
            if let Some(name) = names
                .iter()
                .find(|name| name.is_empty() || name.len() > MAX_TEXT)
            {
                return Err(format!(
                    "{field} names '{}': a name is 1 to {MAX_TEXT} bytes",
                    crate::error::quoted(name)
                ));
            }
        }
        if self.sinks.is_empty() || self.sinks.len() > MAX_SINKS {
            return Err(format!("a capture has 1 to {MAX_SINKS} sinks"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for sink in &self.sinks {
            if !seen.insert(sink) {
                return Err(format!("sink {sink:?} is named twice"));
            }
            if let SinkSpec::Http(url) = sink {
                check_url(url)?;
            }
        }
        Ok(())
    }
}

/// An HTTP sink's URL: http or https, with a host, no credentials.
fn check_url(url: &str) -> Result<reqwest::Url, String> {
    if url.len() > MAX_TEXT {
        return Err(format!("a sink URL is at most {MAX_TEXT} bytes"));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| format!("sink URL '{}': {error}", crate::error::quoted(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "sink URL '{}' is not http:// or https://",
            crate::error::quoted(url)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "sink URL '{}' names no host",
            crate::error::quoted(url)
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a sink URL carries no credentials".into());
    }
    Ok(parsed)
}

/// The folders file sinks may be in, absolute.
#[derive(Debug, Clone)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    /// `capture.roots`, made absolute against the working directory.
    pub fn new(configured: &[PathBuf]) -> Roots {
        let base = std::env::current_dir().unwrap_or_default();
        Roots(
            configured
                .iter()
                .map(|root| lexical(&base.join(root)))
                .collect(),
        )
    }

    /// Where `folder` is: under the first root when relative, and under one of them in any
    /// case, without `..`. Checked again, links resolved, when the sink opens it.
    pub fn place(&self, folder: &str) -> Result<PathBuf, String> {
        let shown = crate::error::quoted(folder);
        if folder.is_empty() || folder.len() > MAX_TEXT || folder.contains('\0') {
            return Err(format!(
                "a capture folder is 1 to {MAX_TEXT} bytes ('{shown}')"
            ));
        }
        let path = Path::new(folder);
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("capture folder '{shown}' climbs with '..'"));
        }
        let Some(first) = self.0.first() else {
            return Err("capture.roots is empty: no folder may take captured events".into());
        };
        let placed = lexical(&first.join(path));
        if self.0.iter().any(|root| placed.starts_with(root)) {
            Ok(placed)
        } else {
            Err(format!(
                "capture folder '{shown}' is outside the allowed roots [{}] (capture.roots)",
                self.shown()
            ))
        }
    }

    /// Checks, making nothing, that the part of a placed folder that exists is under a root
    /// once its links are resolved.
    pub fn check_links(&self, placed: &Path) -> Result<(), String> {
        let existing = placed
            .ancestors()
            .take_while(|part| self.0.iter().any(|root| part.starts_with(root)))
            .find(|part| part.exists());
        match existing {
            Some(existing) => self.inside(existing, placed).map(|_| ()),
            // Not even its root exists yet: nothing there leads anywhere.
            None => Ok(()),
        }
    }

    /// Makes the folder, checking that it is under a root once links are resolved: the part
    /// of it that exists before anything is made, and the whole once made; its real path.
    fn open(&self, folder: &str) -> Result<PathBuf, String> {
        let placed = self.place(folder)?;
        if let Some(root) = self.0.iter().find(|root| placed.starts_with(root)) {
            // A configured root is trusted: it is made if missing.
            make_folder(root)?;
        }
        self.check_links(&placed)?;
        make_folder(&placed)?;
        self.inside(&placed, &placed)
    }

    /// `path` with its links resolved, if that is under a root.
    pub(super) fn inside(&self, path: &Path, placed: &Path) -> Result<PathBuf, String> {
        let real = path
            .canonicalize()
            .map_err(|error| format!("cannot resolve {}: {error}", path.display()))?;
        let inside = self
            .0
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .any(|root| real.starts_with(root));
        if !inside {
            return Err(format!(
                "capture folder {} leads outside the allowed roots [{}] (capture.roots)",
                placed.display(),
                self.shown()
            ));
        }
        Ok(real)
    }

    fn shown(&self) -> String {
        self.0
            .iter()
            .map(|root| root.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Makes a folder and its parents, readable by its owner and group only: captured requests
/// are the callers' data.
fn make_folder(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
        .map_err(|error| format!("cannot make {}: {error}", path.display()))
}

/// A path with its `.` dropped (it has no `..`, or its `..` are kept as they are).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// What to do with a named tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Data,
    Redacted,
    Left,
}

/// A side's (inputs' or outputs') choice of tensors.
#[derive(Debug, Default)]
struct Selection {
    only: Option<Vec<String>>,
    redact: Vec<String>,
}

impl Selection {
    fn keep(&self, name: &str) -> Keep {
        if self
            .only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|kept| kept == name))
        {
            Keep::Left
        } else if self.redact.iter().any(|redacted| redacted == name) {
            Keep::Redacted
        } else {
            Keep::Data
        }
    }
}

/// A captured model's plan, as the request path reads it.
struct ModelPlan {
    /// The spec it was made from, to tell whether a spec is in force here.
    spec: CaptureSpec,
    sample: f64,
    inputs: Selection,
    outputs: Selection,
    sinks: Vec<Arc<Sink>>,
    figures: Arc<CaptureFigures>,
}

/// A sink as this gateway runs it: its figures, and why it could not start if it could not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SinkView {
    pub sink: SinkSpec,
    #[serde(flatten)]
    pub figures: SinkFiguresView,
    /// Why this gateway does not write to it (a folder it cannot make, another process
    /// writing its file, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The payload capture of every model: cheap to clone, one per gateway.
#[derive(Clone)]
pub struct Capture(Arc<Inner>);

struct Inner {
    plans: ArcSwap<HashMap<String, Arc<ModelPlan>>>,
    /// The running sinks by what they are, and the sinks that could not start with why.
    pool: Mutex<Pool>,
    /// Each model's figures, kept across reloads.
    figures: Mutex<BTreeMap<String, Arc<CaptureFigures>>>,
    roots: Roots,
    settings: CaptureConfig,
    /// The tensor bytes of the events waiting to be encoded.
    bytes: Arc<Semaphore>,
    encoder: Encoder,
}

/// What a sink is once resolved: two specs naming one folder (`mlp`, `./mlp`, a link to it)
/// are one file sink.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SinkKey {
    File(PathBuf),
    Http(reqwest::Url),
}

#[derive(Default)]
struct Pool {
    running: HashMap<SinkKey, Arc<Sink>>,
    /// Each named sink's key, or why it cannot run here.
    named: HashMap<SinkSpec, Result<SinkKey, String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Capture {
    /// A capture with no model captured; `node` names this gateway in the CloudEvents'
    /// source. Its encoder thread starts here.
    pub fn new(settings: &CaptureConfig, node: &str) -> Capture {
        let settings = CaptureConfig {
            queue_events: settings.queue_events.clamp(1, 1 << 20),
            files_kept: settings.files_kept.min(10_000),
            http_concurrency: settings.http_concurrency.clamp(1, 1024),
            ..settings.clone()
        };
        Capture(Arc::new(Inner {
            plans: ArcSwap::default(),
            pool: Mutex::default(),
            figures: Mutex::default(),
            roots: Roots::new(&settings.roots),
            encoder: Encoder::start(settings.queue_events, node),
            bytes: sinks::queue_budget(&settings),
            settings,
        }))
    }

    pub fn roots(&self) -> &Roots {
        &self.0.roots
    }

    /// Draws whether a request for `model` is captured: a ticket for it if so.
    pub fn ticket(&self, model: &str) -> Option<Ticket> {
        let plans = self.0.plans.load();
        if plans.is_empty() {
            return None;
        }
        let plan = plans.get(model)?;
        if plan.sample < 1.0 && fastrand::f64() >= plan.sample {
            return None;
        }
        Some(Ticket(Arc::new(Pending {
            capture: self.0.clone(),
            plan: plan.clone(),
            event: Mutex::new(Event::new(model)),
        })))
    }

    /// Puts `specs` in force, replacing every model's capture. A sink already running for
    /// another model, or before, goes on with its queue; one no longer named stops once
    /// the events it holds are written. A sink that cannot start here (a folder outside this
    /// gateway's roots, a file another process writes) is left out, logged, and shown with
    /// why. Folders are made and files opened here: call it off the executor's threads.
    pub fn replace(&self, specs: BTreeMap<String, CaptureSpec>) {
        let inner = &self.0;
        // The sinks are started without the pool's lock, which `/metrics` takes.
        let before = lock(&inner.pool).running.clone();
        let mut running: HashMap<SinkKey, Arc<Sink>> = HashMap::new();
        let mut named = HashMap::new();
        let mut plans = HashMap::new();
        for (model, spec) in specs {
            let mut sinks: Vec<Arc<Sink>> = Vec::new();
            for sink in &spec.sinks {
                let started = self.key_of(sink).and_then(|key| {
                    let started = match running.get(&key).or_else(|| before.get(&key)) {
                        Some(started) => started.clone(),
                        None => self.start(&key)?,
                    };
                    running.insert(key.clone(), started.clone());
                    Ok((key, started))
                });
                match started {
                    Ok((key, started)) => {
                        named.insert(sink.clone(), Ok(key));
                        if !sinks.iter().any(|kept| Arc::ptr_eq(kept, &started)) {
                            sinks.push(started);
                        }
                    }
                    Err(error) => {
                        tracing::error!(%model, ?sink, %error, "a capture sink cannot start");
                        named.insert(sink.clone(), Err(error));
                    }
                }
            }
            let model_figures = lock(&inner.figures)
                .entry(model.clone())
                .or_default()
                .clone();
            plans.insert(
                model,
                Arc::new(ModelPlan {
                    sample: spec.sample,
                    inputs: Selection {
                        only: spec.inputs.clone(),
                        redact: spec.redact.clone(),
                    },
                    outputs: Selection {
                        only: spec.outputs.clone(),
                        redact: spec.redact.clone(),
                    },
                    sinks,
                    figures: model_figures,
                    spec,
                }),
            );
        }
        lock(&inner.figures).retain(|model, _| plans.contains_key(model));
        *lock(&inner.pool) = Pool { running, named };
        inner.plans.store(Arc::new(plans));
    }

    fn key_of(&self, sink: &SinkSpec) -> Result<SinkKey, String> {
        match sink {
            SinkSpec::File(folder) => self.0.roots.open(folder).map(SinkKey::File),
            SinkSpec::Http(url) => check_url(url).map(SinkKey::Http),
        }
    }

    fn start(&self, key: &SinkKey) -> Result<Arc<Sink>, String> {
        let inner = &self.0;
        match key {
            SinkKey::File(folder) => Sink::file(
                folder.clone(),
                &inner.roots,
                &inner.settings,
                &inner.encoder,
            ),
            SinkKey::Http(url) => Sink::http(url.clone(), &inner.settings, &inner.encoder),
        }
        .map(Arc::new)
    }

    /// Each captured model's figures.
    pub fn model_figures(&self) -> Vec<(String, CaptureFiguresView)> {
        lock(&self.0.figures)
            .iter()
            .map(|(model, figures)| (model.clone(), figures.view()))
            .collect()
    }

    /// Every named sink, running or not, with its figures here.
    pub fn sinks(&self) -> Vec<SinkView> {
        let pool = lock(&self.0.pool);
        let mut views: Vec<SinkView> = pool
            .named
            .iter()
            .map(|(sink, key)| {
                let running = key
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|key| pool.running.get(key).ok_or_else(|| "stopped".to_owned()));
                SinkView {
                    sink: sink.clone(),
                    figures: running
                        .as_ref()
                        .map(|sink| sink.figures.view())
                        .unwrap_or_default(),
                    error: running.err(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.sink.cmp(&b.sink));
        views
    }

    /// Sinks' names as `/metrics` labels them, with their figures.
    pub fn sink_figures(&self) -> Vec<(String, SinkFiguresView)> {
        lock(&self.0.pool)
            .running
            .values()
            .map(|sink| (sink.label.clone(), sink.figures.view()))
            .collect()
    }

    /// Stops capturing and waits, up to `within`, for the events already taken to be
    /// written; a stopping gateway calls it once its requests have finished.
    pub async fn close(&self, within: Duration) {
        self.replace(BTreeMap::new());
        if !self.0.encoder.close(within).await {
            tracing::warn!(
                ?within,
                "captured events were still being delivered when the gateway stopped"
            );
        }
    }
}

/// A request drawn for capture: what the pipeline and the core learn of it is written here,
/// and the event goes to the sinks when the last clone is dropped.
#[derive(Clone)]
pub struct Ticket(Arc<Pending>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

struct Pending {
    capture: Arc<Inner>,
    plan: Arc<ModelPlan>,
    event: Mutex<Event>,
}

impl Ticket {
    /// The request as decoded, once its priority and parameters are settled; `key` is the
    /// caller's key name and figures.
    pub fn request(&self, request: &InferRequest, key: Option<(&Arc<str>, &Arc<KeyFigures>)>) {
        let pending = &self.0;
        let budget = pending.capture.settings.event_bytes.0;
        let mut event = lock(&pending.event);
        event.asked = request.version.clone();
        event.protocol = request.protocol.as_str();
        event.priority = request.priority().level();
        event.parameters = request.parameters.clone();
        event.inputs = event::captured(&request.inputs, &pending.plan.inputs, budget);
        if let Some((name, figures)) = key {
            event.key = Some(name.clone());
            event.key_figures = Some(figures.clone());
        }
    }

    /// The version the request went to, why (`None` keeps the reason already written: a
    /// sequence's start, routed by the policy), and the id feedback refers to it by.
    pub fn routed(&self, version: &Arc<str>, chosen: Option<Chosen>, id: Option<&str>) {
        let mut event = lock(&self.0.event);
        event.version = Some(version.clone());
        if chosen.is_some() {
            event.chosen = chosen;
        }
        if event.id.is_none() {
            event.id = id.map(str::to_owned);
        }
    }

    /// The answer, or the error, and the time from arrival to it.
    pub fn answered(
        &self,
        result: &Result<crate::core::InferResponse, GatewayError>,
        latency: Duration,
    ) {
        let pending = &self.0;
        let budget = pending.capture.settings.event_bytes.0;
        let mut event = lock(&pending.event);
        event.latency = Some(latency);
        // The request's tensors came first: what is left of the budget is the answer's.
        let used: u64 = event.inputs.iter().map(event::Captured::bytes).sum();
        event.outcome = Some(match result {
            Ok(response) => {
                if event.version.is_none() {
                    event.version = Some(response.model_version.clone());
                }
                if let Some(id) = &response.id {
                    event.id = Some(id.clone());
                }
                Outcome::Response(event::captured(
                    &response.outputs,
                    &pending.plan.outputs,
                    budget.saturating_sub(used),
                ))
            }
            Err(error) => Outcome::Error {
                status: error.kind.http_status().as_u16(),
                code: error.kind.row().reason,
                message: error.message.clone(),
            },
        });
    }

    /// The shadow's comparison with the answer: the largest absolute difference and whether
    /// the argmax agreed, or `None` when the shadow failed or nothing compared.
    pub fn shadow(&self, version: &Arc<str>, comparison: Option<(f64, Option<bool>)>) {
        lock(&self.0.event).shadow = Some(ShadowNote {
            version: version.clone(),
            comparison,
        });
    }
}

impl Drop for Pending {
    /// The last holder is done: the event goes to the encoder, or is dropped and counted if
    /// the queue or the byte budget is full. Never waits.
    fn drop(&mut self) {
        let event = std::mem::take(self.event.get_mut().unwrap_or_else(|p| p.into_inner()));
        if event.outcome.is_none() {
            // Dropped before it was answered: the client went away, and the pipeline with it.
            return;
        }
        let raw = event.bytes();
        let key_figures = event.key_figures.clone();
        let permits = u32::try_from(raw).unwrap_or(u32::MAX);
        let taken = self
            .capture
            .bytes
            .clone()
            .try_acquire_many_owned(permits)
            .ok()
            .and_then(|permit| {
                self.capture.encoder.offer(sinks::Job {
                    event,
                    sinks: self.plan.sinks.clone(),
                    raw: permit,
                })
            });
        let figures: [Option<&CaptureFigures>; 2] = [
            Some(&self.plan.figures),
            key_figures.as_deref().map(|k| &k.capture),
        ];
        for figures in figures.into_iter().flatten() {
            match taken {
                Some(()) => figures.captured(),
                None => figures.dropped(),
            }
        }
    }
}

/// The capture's answer for one model: its spec, and its figures and sinks on this gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaptureView {
    pub model: String,
    pub spec: CaptureSpec,
    /// Whether this gateway has put this spec in force yet (the change feed carries it).
    pub in_force: bool,
    #[serde(flatten)]
    pub figures: CaptureFiguresView,
    /// The model's sinks as this gateway runs them.
    pub sinks: Vec<SinkView>,
}

impl Capture {
    /// `model`'s capture as this gateway runs it.
    pub fn view(&self, model: &str, spec: CaptureSpec) -> CaptureView {
        let figures = lock(&self.0.figures)
            .get(model)
            .map(|figures| figures.view())
            .unwrap_or_default();
        let sinks = self
            .sinks()
            .into_iter()
            .filter(|view| spec.sinks.contains(&view.sink))
            .collect();
        let in_force = self
            .0
            .plans
            .load()
            .get(model)
            .is_some_and(|plan| plan.spec == spec);
        CaptureView {
            model: model.to_owned(),
            spec,
            in_force,
            figures,
            sinks,
        }
    }
}
