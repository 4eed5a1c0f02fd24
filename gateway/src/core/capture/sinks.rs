//! Where captured events go, off the request path: the encoder thread turns each event into
//! its JSON line once and offers it to each of its model's sinks; a file sink's thread appends
//! the lines to `capture.jsonl`, rotated by size; an HTTP sink's task POSTs each as a
//! CloudEvent. Every queue is bounded in events and each sink's also in bytes, so that a sink
//! that falls behind drops its own events and no other's; a full queue drops the event and
//! counts it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::event::Event;
use super::{Roots, lock};
use crate::config::CaptureConfig;
use crate::tasks::{self, TaskKind};
use crate::telemetry::capture::SinkFigures;

static CAPTURE_HTTP: TaskKind = TaskKind::new("capture_http");

/// The file a file sink appends to, in its folder; rotated ones are `capture-<ms>.jsonl`.
pub const FILE_NAME: &str = "capture.jsonl";

/// An event on its way to the encoder, holding its tensors' bytes in the encoder's budget.
pub(super) struct Job {
    pub event: Event,
    pub sinks: Vec<Arc<Sink>>,
    pub raw: OwnedSemaphorePermit,
}

/// An encoded event, shared by its sinks.
pub(super) struct Line {
    json: Bytes,
    event_id: String,
    time: String,
    model: String,
    version: Option<Arc<str>>,
}

/// A line in one sink's queue, holding its bytes in that sink's budget.
type Queued = (Arc<Line>, OwnedSemaphorePermit);

/// Signals, by being dropped, that a worker (the encoder or a sink) has finished.
#[derive(Clone)]
struct Alive(#[allow(dead_code)] mpsc::Sender<()>);

/// The encoder thread's queue, and what a stop waits on.
pub(super) struct Encoder {
    queue: Mutex<Option<SyncSender<Job>>>,
    alive: Mutex<Option<Alive>>,
    finished: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// The CloudEvents' source: this gateway.
    source: Arc<str>,
}

impl Encoder {
    pub fn start(queue_events: usize, node: &str) -> Encoder {
        let (queue, jobs) = sync_channel(queue_events);
        let (alive, finished) = mpsc::channel(1);
        let alive = Alive(alive);
        let worker = alive.clone();
        let started = std::thread::Builder::new()
            .name("capture-encode".into())
            .spawn(move || encode(jobs, worker));
        if let Err(error) = &started {
            tracing::error!(%error, "cannot start the capture's encoder; nothing will be captured");
        }
        Encoder {
            queue: Mutex::new(started.ok().map(|_| queue)),
            alive: Mutex::new(Some(alive)),
            finished: tokio::sync::Mutex::new(finished),
            source: format!("/switchyard/{node}").into(),
        }
    }

    /// Queues a job, or gives `None` at once when the queue is full or stopped.
    pub fn offer(&self, job: Job) -> Option<()> {
        let queue = lock(&self.queue);
        let queue = queue.as_ref()?;
        match queue.try_send(job) {
            Ok(()) => Some(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }

    fn alive(&self) -> Result<Alive, String> {
        lock(&self.alive)
            .clone()
            .ok_or_else(|| "the capture is stopping".to_owned())
    }

    /// Stops taking events, and waits up to `within` for the encoder and every sink to have
    /// written what they hold; whether they all did. The sinks must be let go of first.
    pub async fn close(&self, within: Duration) -> bool {
        lock(&self.queue).take();
        lock(&self.alive).take();
        let mut finished = self.finished.lock().await;
        tokio::time::timeout(within, finished.recv()).await.is_ok()
    }
}

fn encode(jobs: Receiver<Job>, _alive: Alive) {
    for job in jobs {
        let json = job.event.encode();
        drop(job.raw);
        let line = Arc::new(Line {
            json: Bytes::from(json),
            time: job.event.time_text(),
            event_id: job.event.event_id,
            model: job.event.model,
            version: job.event.version,
        });
        for sink in &job.sinks {
            sink.offer(&line);
        }
    }
}

/// A running sink: its queue and its bytes, and what became of its events.
pub(super) struct Sink {
    /// How `/metrics` names it: `file:<folder>` or its URL without its query.
    pub label: String,
    queue: Queue,
    /// The bytes of the lines in its queue, `capture.queue_bytes` at most.
    bytes: Arc<Semaphore>,
    pub figures: Arc<SinkFigures>,
}

enum Queue {
    File(SyncSender<Queued>),
    Http(mpsc::Sender<Queued>),
}

/// One queue's byte budget: the encoder's, or a sink's.
pub(super) fn queue_budget(settings: &CaptureConfig) -> Arc<Semaphore> {
    let bytes = usize::try_from(settings.queue_bytes.0).unwrap_or(usize::MAX);
    Arc::new(Semaphore::new(bytes.clamp(1, Semaphore::MAX_PERMITS)))
}

impl Sink {
    /// A file sink appending to `folder`/`capture.jsonl` (made and checked by the caller),
    /// opened here so that a folder it cannot write, or a file another process writes, is an
    /// error now.
    pub fn file(
        folder: PathBuf,
        roots: &Roots,
        settings: &CaptureConfig,
        encoder: &Encoder,
    ) -> Result<Sink, String> {
        let mut writer = FileWriter {
            path: folder.join(FILE_NAME),
            folder: folder.clone(),
            roots: roots.clone(),
            file: None,
            size: 0,
            max_bytes: settings.file_bytes.0.max(1),
            kept: settings.files_kept,
        };
        writer
            .reopen()
            .map_err(|error| format!("cannot open {}: {error}", writer.path.display()))?;
        let (queue, lines) = sync_channel(settings.queue_events);
        let figures = Arc::new(SinkFigures::default());
        let counted = figures.clone();
        let alive = encoder.alive()?;
        std::thread::Builder::new()
            .name("capture-file".into())
            .spawn(move || writer.run(lines, &counted, alive))
            .map_err(|error| format!("cannot start a file sink's thread: {error}"))?;
        Ok(Sink {
            label: format!("file:{}", folder.display()),
            queue: Queue::File(queue),
            bytes: queue_budget(settings),
            figures,
        })
    }

    /// An HTTP sink POSTing each event to `url` as a CloudEvent.
    pub fn http(
        url: reqwest::Url,
        settings: &CaptureConfig,
        encoder: &Encoder,
    ) -> Result<Sink, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("an HTTP sink starts on the gateway's runtime".into());
        }
        let client = http_client(settings)?;
        let (queue, lines) = mpsc::channel(settings.queue_events);
        let figures = Arc::new(SinkFigures::default());
        let delivery = Delivery {
            url: url.clone(),
            client,
            figures: figures.clone(),
            source: encoder.source.clone(),
            breaker: Breaker::default(),
        };
        let alive = encoder.alive()?;
        tasks::spawn(
            &CAPTURE_HTTP,
            delivery.run(lines, settings.http_concurrency, alive),
        );
        // A token in the query stays out of the metrics.
        let mut label = url;
        label.set_query(None);
        label.set_fragment(None);
        Ok(Sink {
            label: label.to_string(),
            queue: Queue::Http(queue),
            bytes: queue_budget(settings),
            figures,
        })
    }

    fn offer(&self, line: &Arc<Line>) {
        let permits = u32::try_from(line.json.len()).unwrap_or(u32::MAX);
        let sent = match self.bytes.clone().try_acquire_many_owned(permits) {
            Ok(budget) => match &self.queue {
                Queue::File(queue) => queue.try_send((line.clone(), budget)).is_ok(),
                Queue::Http(queue) => queue.try_send((line.clone(), budget)).is_ok(),
            },
            Err(_) => false,
        };
        if !sent {
            self.figures.dropped();
        }
    }
}

/// How often a file sink's writes are synced to the disk, at most.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// A file sink's file: appended to, one whole line per write, rotated past its size.
struct FileWriter {
    folder: PathBuf,
    /// The roots the folder must still be under whenever the file is opened again.
    roots: Roots,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    kept: usize,
}

impl FileWriter {
    /// Writes what comes until the queue closes. What is written reaches the disk within
    /// [`SYNC_EVERY`] of its write, and at most once per [`SYNC_EVERY`]: a sync per event
    /// would cost the disk, and the cores the requests run on, far more than the writes.
    fn run(mut self, lines: Receiver<Queued>, figures: &SinkFigures, _alive: Alive) {
        let mut synced = Instant::now();
        let mut unsynced = false;
        loop {
            let next = if unsynced {
                match lines.recv_timeout(SYNC_EVERY.saturating_sub(synced.elapsed())) {
                    Ok(line) => Some(line),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match lines.recv() {
                    Ok(line) => Some(line),
                    Err(_) => break,
                }
            };
            if let Some((line, _budget)) = next {
                match self.write(&line.json) {
                    Ok(()) => {
                        figures.written();
                        unsynced = true;
                    }
                    Err(error) => {
                        figures.failed();
                        tracing::warn!(file = %self.path.display(), %error, "cannot write a captured event");
                        self.file = None;
                    }
                }
            }
            if unsynced && synced.elapsed() >= SYNC_EVERY {
                self.sync();
                (synced, unsynced) = (Instant::now(), false);
            }
        }
        self.sync();
    }

    fn sync(&self) {
        if let Some(file) = &self.file
            && let Err(error) = file.sync_data()
        {
            tracing::warn!(file = %self.path.display(), %error, "cannot sync the capture file");
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        // Reopened first: its size is then the file's own, whatever happened to it meanwhile.
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
        // One write per line, in append mode: a line is never split by another's.
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Opens the file to append to it: in a folder still under the roots, never through a
    /// link, and alone (a lock, so that two processes never write one file). A line a crash
    /// cut short is ended first, so that the next event starts a line of its own.
    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.roots
            .inside(&self.folder, &self.folder)
            .map_err(std::io::Error::other)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o640)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| std::io::Error::other("another process writes this file (it holds its lock)"),
        )?;
        let mut size = file.metadata()?.len();
        if size > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                size += 1;
            }
        }
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    /// Moves the file aside as `capture-<ms>.jsonl`, deletes the oldest past `kept`, and
    /// starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_data()?;
        }
        let mut ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        let target = loop {
            let target = self.folder.join(format!("capture-{ms:013}.jsonl"));
            if !target.exists() {
                break target;
            }
            ms += 1;
        };
        match std::fs::rename(&self.path, &target) {
            // Moved or removed meanwhile (a log shipper's doing): a new file starts all the same.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(&self.folder)?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("capture-") && name.ends_with(".jsonl"))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.kept);
        for old in &rotated[..excess] {
            if let Err(error) = std::fs::remove_file(old) {
                tracing::warn!(file = %old.display(), %error, "cannot delete an old capture file");
            }
        }
        self.reopen()
    }
}

fn http_client(settings: &CaptureConfig) -> Result<reqwest::Client, String> {
    let timeout = settings.http_timeout.0;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        // The sink is where its URL says: no proxy from the environment, no redirect.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(settings.http_concurrency);
    if !settings.http_ca.as_os_str().is_empty() {
        let pem = std::fs::read(&settings.http_ca).map_err(|error| {
            format!(
                "cannot read capture.http_ca {}: {error}",
                settings.http_ca.display()
            )
        })?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|error| format!("capture.http_ca is not a PEM certificate: {error}"))?;
        builder = builder.add_root_certificate(ca);
    }
    builder
        .build()
        .map_err(|error| format!("cannot build the HTTP sink's client: {error}"))
}

/// An HTTP sink's deliveries.
struct Delivery {
    url: reqwest::Url,
    client: reqwest::Client,
    figures: Arc<SinkFigures>,
    source: Arc<str>,
    breaker: Breaker,
}

/// After this many failed deliveries in a row, a sink is given up on for a while.
const FAILURES_TO_OPEN: u32 = 5;
/// The longest a sink is given up on before one delivery tries it again.
const LONGEST_OPEN: Duration = Duration::from_secs(30);

/// Keeps a sink that is down from costing a connection attempt per event: after
/// [`FAILURES_TO_OPEN`] failures in a row its events fail at once for a second, then two,
/// doubling up to [`LONGEST_OPEN`], until a delivery goes through.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    fn open(&self) -> bool {
        lock(&self.open_until).is_some_and(|until| Instant::now() < until)
    }

    fn record(&self, delivered: bool) {
        if delivered {
            self.failures.store(0, Ordering::Relaxed);
            *lock(&self.open_until) = None;
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN {
            let doublings = (failures - FAILURES_TO_OPEN).min(5);
            let open_for = (Duration::from_secs(1) * (1 << doublings)).min(LONGEST_OPEN);
            *lock(&self.open_until) = Some(Instant::now() + open_for);
        }
    }
}

/// The CloudEvent type of a captured request.
pub const EVENT_TYPE: &str = "io.switchyard.inference.capture";

impl Delivery {
    async fn run(self, mut lines: mpsc::Receiver<Queued>, concurrency: usize, _alive: Alive) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut deliveries = tokio::task::JoinSet::new();
        while let Some((line, budget)) = lines.recv().await {
            if this.breaker.open() {
                this.figures.failed();
                continue;
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            while deliveries.try_join_next().is_some() {}
            let this = this.clone();
            deliveries.spawn(async move {
                let _held = (slot, budget);
                let delivered = this.post(&line).await;
                this.breaker.record(delivered);
                if delivered {
                    this.figures.written();
                } else {
                    this.figures.failed();
                }
            });
        }
        while deliveries.join_next().await.is_some() {}
    }

    /// POSTs one event in CloudEvents' binary content mode; whether the sink took it (2xx).
    async fn post(&self, line: &Line) -> bool {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", &line.event_id)
            .header("ce-type", EVENT_TYPE)
            .header("ce-source", &*self.source)
            .header("ce-time", &line.time)
            .header("ce-subject", &line.model)
            // KServe's logger names the model in this extension; its readers look for it.
            .header("ce-inferenceservicename", &line.model);
        if let Some(version) = &line.version {
            request = request.header("ce-modelversion", &**version);
        }
        match request.body(line.json.clone()).send().await {
            Ok(answer) if answer.status().is_success() => true,
            Ok(answer) => {
                tracing::debug!(sink = %self.url, status = %answer.status(), "an HTTP sink refused a captured event");
                false
            }
            Err(error) => {
                tracing::debug!(sink = %self.url, %error, "cannot deliver a captured event");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(folder: &std::path::Path, max_bytes: u64, kept: usize) -> FileWriter {
        FileWriter {
            folder: folder.to_path_buf(),
            roots: Roots::new(&[folder.to_path_buf()]),
            path: folder.join(FILE_NAME),
            file: None,
            size: 0,
            max_bytes,
            kept,
        }
    }

    fn lines_of(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_file_is_rotated_past_its_size_and_the_oldest_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = writer(dir.path(), 100, 2);
        for n in 0..40 {
            file.write(format!("{{\"n\":{n:03}}}\n").as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // Lines of 10 bytes, 10 to a file: the last 10 here, two rotated files kept.
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[2], FILE_NAME);
        let newest = lines_of(&dir.path().join(FILE_NAME));
        assert_eq!(newest.first().map(String::as_str), Some("{\"n\":030}"));
        assert_eq!(newest.len(), 10);
        let kept: Vec<String> = names[..2]
            .iter()
            .flat_map(|name| lines_of(&dir.path().join(name)))
            .collect();
        assert_eq!(kept.first().map(String::as_str), Some("{\"n\":010}"));
        assert_eq!(kept.len(), 20, "whole lines, in order");
        for name in &names {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 100);
        }
    }

    #[test]
    fn a_line_a_crash_cut_short_is_ended_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{\"n\":1}\n{\"n\":2").unwrap();
        let mut file = writer(dir.path(), 1 << 20, 2);
        file.reopen().unwrap();
        file.write(b"{\"n\":3}\n").unwrap();
        assert_eq!(
            lines_of(&dir.path().join(FILE_NAME)),
            ["{\"n\":1}", "{\"n\":2", "{\"n\":3}"],
            "the earlier lines kept, the next on its own line"
        );
    }

    #[test]
    fn a_file_is_never_opened_through_a_link_nor_by_two_writers() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(FILE_NAME)).unwrap();
        assert!(writer(dir.path(), 1 << 20, 2).reopen().is_err(), "a link");
        assert_eq!(
            std::fs::read(outside.path()).unwrap(),
            b"",
            "nothing written there"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut first = writer(dir.path(), 1 << 20, 2);
        first.reopen().unwrap();
        let error = writer(dir.path(), 1 << 20, 2).reopen().unwrap_err();
        assert!(error.to_string().contains("another process"), "{error}");
    }

    #[test]
    fn a_sink_that_keeps_failing_is_given_up_on_for_a_while() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record(false);
        }
        assert!(
            !breaker.open(),
            "not before {FAILURES_TO_OPEN} failures in a row"
        );
        breaker.record(false);
        assert!(breaker.open());
        breaker.record(true);
        assert!(!breaker.open(), "a delivery closes it");
    }
}
