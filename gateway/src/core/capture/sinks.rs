//! Where captured events go, off the request path: the encoder thread turns each event into
//! its JSON line once and offers it to each of its model's sinks; a file sink's thread appends
//! the lines to `capture.jsonl`, rotated by size; an HTTP sink's task POSTs each as a
//! CloudEvent. Every queue is bounded, and a full one drops the event and counts it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::event::Event;
use super::lock;
use crate::config::CaptureConfig;
use crate::tasks::{self, TaskKind};
use crate::telemetry::capture::SinkFigures;

static CAPTURE_HTTP: TaskKind = TaskKind::new("capture_http");

/// The file a file sink appends to, in its folder; rotated ones are `capture-<ms>.jsonl`.
pub const FILE_NAME: &str = "capture.jsonl";

/// An event on its way to the encoder, holding its share of the byte budget.
pub(super) struct Job {
    pub event: Event,
    pub sinks: Vec<Arc<Sink>>,
    pub bytes: Arc<Semaphore>,
    pub raw: OwnedSemaphorePermit,
}

/// An encoded event, shared by its sinks; its bytes are held in the budget until the last
/// sink is done with it.
pub(super) struct Line {
    json: Bytes,
    event_id: String,
    time: String,
    model: String,
    version: Option<Arc<str>>,
    _budget: OwnedSemaphorePermit,
}

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
        let permits = u32::try_from(json.len()).unwrap_or(u32::MAX);
        let Ok(budget) = job.bytes.clone().try_acquire_many_owned(permits) else {
            job.sinks.iter().for_each(|sink| sink.figures.dropped());
            continue;
        };
        let line = Arc::new(Line {
            json: Bytes::from(json),
            time: job.event.time_text(),
            event_id: job.event.event_id,
            model: job.event.model,
            version: job.event.version,
            _budget: budget,
        });
        for sink in &job.sinks {
            sink.offer(&line);
        }
    }
}

/// A running sink: its queue, and what became of its events.
pub(super) struct Sink {
    /// How `/metrics` names it: `file:<folder>` or its URL.
    pub label: String,
    queue: Queue,
    pub figures: Arc<SinkFigures>,
}

enum Queue {
    File(SyncSender<Arc<Line>>),
    Http(mpsc::Sender<Arc<Line>>),
}

impl Sink {
    /// A file sink appending to `folder`/`capture.jsonl` (made and checked by the caller),
    /// opened here so that a folder it cannot write is an error now.
    pub fn file(
        folder: PathBuf,
        settings: &CaptureConfig,
        encoder: &Encoder,
    ) -> Result<Sink, String> {
        let mut writer = FileWriter {
            path: folder.join(FILE_NAME),
            folder: folder.clone(),
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
        };
        let alive = encoder.alive()?;
        tasks::spawn(
            &CAPTURE_HTTP,
            delivery.run(lines, settings.http_concurrency, alive),
        );
        Ok(Sink {
            label: url.to_string(),
            queue: Queue::Http(queue),
            figures,
        })
    }

    fn offer(&self, line: &Arc<Line>) {
        let sent = match &self.queue {
            Queue::File(queue) => queue.try_send(line.clone()).is_ok(),
            Queue::Http(queue) => queue.try_send(line.clone()).is_ok(),
        };
        if !sent {
            self.figures.dropped();
        }
    }
}

/// A file sink's file: appended to, one whole line per write, rotated past its size.
struct FileWriter {
    folder: PathBuf,
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    kept: usize,
}

impl FileWriter {
    fn run(mut self, lines: Receiver<Arc<Line>>, figures: &SinkFigures, _alive: Alive) {
        let mut unsynced = false;
        loop {
            let line = match lines.try_recv() {
                Ok(line) => line,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    // Caught up: what was written goes to the disk before the thread sleeps.
                    if unsynced && let Some(file) = &self.file {
                        let _ = file.sync_data();
                    }
                    unsynced = false;
                    match lines.recv() {
                        Ok(line) => line,
                        Err(_) => return,
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            };
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
        if let Some(file) = &self.file {
            let _ = file.sync_data();
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let file = self.file.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
        // One write per line, in append mode: a line is never split by another's.
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Opens the file to append to it. A line a crash cut short is ended first, so that the
    /// next event starts a line of its own.
    fn reopen(&mut self) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)?;
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
        std::fs::rename(&self.path, &target)?;
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
}

/// The CloudEvent type of a captured request.
pub const EVENT_TYPE: &str = "io.switchyard.inference.capture";

impl Delivery {
    async fn run(self, mut lines: mpsc::Receiver<Arc<Line>>, concurrency: usize, _alive: Alive) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut deliveries = tokio::task::JoinSet::new();
        while let Some(line) = lines.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            while deliveries.try_join_next().is_some() {}
            let this = this.clone();
            deliveries.spawn(async move {
                let _slot = slot;
                if this.post(&line).await {
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
}
