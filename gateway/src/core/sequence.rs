//! Stateful models served as sequences, with Triton's `sequence_id`, `sequence_start` and
//! `sequence_end` request parameters. A sequence's first request is routed by the policy;
//! every later one goes to the same version and, while it serves, the same replica, so that a
//! weight change never moves a live stream. The gateway keeps each sequence's implicit state
//! (`[[state]]` in model.toml) between its requests and feeds it in, so clients send only the
//! data inputs. A sequence holds its version: a removed version drains until its sequences end
//! or go idle.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use switchyard_runtimes::{DataType, NamedTensor, Tensor};

use crate::core::request::{InferRequest, Parameter};
use crate::core::route::Route;
use crate::core::table::{ControlKind, ControlSpec, ReadyVersion, SequenceSettings};
use crate::error::{ErrorKind, GatewayError};
use crate::version_key::VersionKey;

/// What the refusal of a request for a sequence not open here says: a node of a cluster that
/// gets it from a peer knows nothing ran there, and may ask the next.
pub const NOT_OPEN: &str = "is not open";

/// Longest string `sequence_id`.
pub const MAX_SEQUENCE_ID_BYTES: usize = 256;

/// Triton's correlation id: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Number(u64),
    Text(String),
}

impl fmt::Display for SequenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceId::Number(n) => write!(f, "{n}"),
            SequenceId::Text(text) => write!(f, "'{}'", crate::error::quoted(text)),
        }
    }
}

impl SequenceId {
    /// A number that picks the same peer for every request of the sequence, on every node.
    pub fn pin(&self) -> u64 {
        match self {
            SequenceId::Number(n) => *n,
            // FNV-1a: stable across processes, unlike the std hasher.
            SequenceId::Text(text) => text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            }),
        }
    }
}

/// The sequence parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceControl {
    pub id: SequenceId,
    pub start: bool,
    pub end: bool,
}

/// Reads Triton's sequence parameters. A `sequence_id` of 0 or "" means the request is not
/// part of a sequence, as in Triton; `sequence_start` or `sequence_end` without an id is an
/// error.
pub fn sequence_control(request: &InferRequest) -> Result<Option<SequenceControl>, GatewayError> {
    let flag = |name: &str| match request.parameters.get(name) {
        None => Ok(false),
        Some(Parameter::Bool(value)) => Ok(*value),
        Some(_) => Err(GatewayError::invalid(format!(
            "parameter '{name}' must be a boolean"
        ))),
    };
    let start = flag("sequence_start")?;
    let end = flag("sequence_end")?;
    let id = match request.parameters.get("sequence_id") {
        None | Some(Parameter::Int(0)) => None,
        Some(Parameter::String(text)) if text.is_empty() => None,
        Some(Parameter::Int(n)) if *n > 0 => Some(SequenceId::Number(*n as u64)),
        Some(Parameter::String(text)) if text.len() <= MAX_SEQUENCE_ID_BYTES => {
            Some(SequenceId::Text(text.clone()))
        }
        Some(Parameter::String(_)) => {
            return Err(GatewayError::invalid(format!(
                "parameter 'sequence_id' may be at most {MAX_SEQUENCE_ID_BYTES} bytes"
            )));
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "parameter 'sequence_id' must be a positive integer or a string",
            ));
        }
    };
    match id {
        Some(id) => Ok(Some(SequenceControl { id, start, end })),
        None if start || end => Err(GatewayError::invalid(
            "parameters 'sequence_start' and 'sequence_end' need a non-zero 'sequence_id'",
        )),
        None => Ok(None),
    }
}

/// One open sequence; counted in its version's `open_sequences` while it lives.
struct Open {
    route: Arc<SequenceRoute>,
    settings: Arc<SequenceSettings>,
    /// The replica it runs on; `None` until its first call.
    replica: Option<u32>,
    /// Its state; `None` while one of its requests runs (the request holds it).
    states: Option<Vec<NamedTensor>>,
    last_used: Instant,
}

/// Where a sequence's requests go: the version it began on.
pub struct SequenceRoute {
    pub key: VersionKey,
    pub ready: Arc<ReadyVersion>,
    pub stats: Arc<crate::routing::VersionStats>,
}

impl Open {
    fn new(route: Arc<SequenceRoute>, settings: Arc<SequenceSettings>, now: Instant) -> Open {
        route.ready.open_sequences.fetch_add(1, Ordering::Relaxed);
        Open {
            route,
            settings,
            replica: None,
            states: None,
            last_used: now,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.route
            .ready
            .open_sequences
            .fetch_sub(1, Ordering::Relaxed);
    }
}

type Key = (Arc<str>, SequenceId);

/// Every open sequence of the gateway.
#[derive(Default)]
pub struct Sequences {
    open: Mutex<HashMap<Key, Open>>,
}

/// Figures of one version's sequences, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceFigures {
    pub open: usize,
    pub state_bytes: usize,
}

/// A request's turn in its sequence: it holds the state while it runs and gives it back (the
/// new one, or the old one if the request failed or was dropped).
pub struct Turn<'s> {
    sequences: &'s Sequences,
    key: Key,
    pub route: Arc<SequenceRoute>,
    pub settings: Arc<SequenceSettings>,
    pub replica: Option<u32>,
    pub states: Vec<NamedTensor>,
    end: bool,
    finished: bool,
}

impl Sequences {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Open>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a sequence on the version `route` chose (or restarts it, as Triton does when a
    /// sequence starts again); 429 when that version's sequence slots are all taken.
    pub fn start(
        &self,
        control: &SequenceControl,
        route: &Route,
        settings: &Arc<SequenceSettings>,
    ) -> Result<Turn<'_>, GatewayError> {
        let now = Instant::now();
        let key: Key = (route.key.model.clone(), control.id.clone());
        let mut open = self.lock();
        sweep_locked(&mut open, now);
        if open
            .get(&key)
            .is_some_and(|sequence| sequence.states.is_none())
        {
            return Err(in_flight(&control.id));
        }
        open.remove(&key);
        let slots = settings
            .max_per_replica
            .saturating_mul(route.ready.replicas.replica_count().max(1));
        if route.ready.open_sequences.load(Ordering::Relaxed) >= slots {
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "version '{}' of model '{}' holds its limit of {slots} open sequences \
                     ([sequence] max_sequences per replica); retry when one ends",
                    route.key.version, route.key.model
                ),
            ));
        }
        let sequence_route = Arc::new(SequenceRoute {
            key: route.key.clone(),
            ready: route.ready.clone(),
            stats: route.stats.clone(),
        });
        open.insert(
            key.clone(),
            Open::new(sequence_route.clone(), settings.clone(), now),
        );
        Ok(Turn {
            sequences: self,
            key,
            route: sequence_route,
            settings: settings.clone(),
            replica: None,
            states: settings
                .states
                .iter()
                .map(|state| NamedTensor {
                    name: state.input.clone(),
                    tensor: state.initial.clone(),
                })
                .collect(),
            end: control.end,
            finished: false,
        })
    }

    /// Takes the turn of a request that continues an open sequence; 400 for a sequence that is
    /// not open (never started, ended, or released after its idle timeout) and for one whose
    /// previous request still runs.
    pub fn resume(&self, model: &str, control: &SequenceControl) -> Result<Turn<'_>, GatewayError> {
        let now = Instant::now();
        let mut open = self.lock();
        let key: Key = (Arc::from(model), control.id.clone());
        let idle = open.get(&key).and_then(|sequence| {
            (sequence.states.is_some() && expired(sequence, now))
                .then_some(sequence.settings.idle_timeout)
        });
        if let Some(idle_timeout) = idle {
            open.remove(&key);
            return Err(GatewayError::invalid(format!(
                "sequence {} of model '{}' was released after {idle_timeout:?} without a request \
                 ([sequence] idle_timeout); start it again with sequence_start",
                control.id,
                crate::error::quoted(model)
            )));
        }
        let Some(sequence) = open.get_mut(&key) else {
            return Err(GatewayError::invalid(format!(
                "sequence {} of model '{}' {NOT_OPEN}: its first request needs \
                 sequence_start = true (a sequence closes at sequence_end, and after its idle \
                 timeout)",
                control.id,
                crate::error::quoted(model)
            ))
            .with_reason(crate::error::Reason::SequenceNotOpen));
        };
        let Some(states) = sequence.states.take() else {
            return Err(in_flight(&control.id));
        };
        sequence.last_used = now;
        Ok(Turn {
            sequences: self,
            key,
            route: sequence.route.clone(),
            settings: sequence.settings.clone(),
            replica: sequence.replica,
            states,
            end: control.end,
            finished: false,
        })
    }

    /// Whether the sequence is open here (and not idle past its timeout).
    pub fn holds(&self, model: &str, id: &SequenceId) -> bool {
        let key: Key = (Arc::from(model), id.clone());
        self.lock()
            .get(&key)
            .is_some_and(|sequence| sequence.states.is_none() || !expired(sequence, Instant::now()))
    }

    /// Releases the sequences idle past their timeout; returns how many.
    pub fn sweep(&self) -> usize {
        sweep_locked(&mut self.lock(), Instant::now())
    }

    /// Open sequences and their state bytes, by (model, version).
    pub fn figures(&self) -> HashMap<(Arc<str>, Arc<str>), SequenceFigures> {
        let mut figures: HashMap<(Arc<str>, Arc<str>), SequenceFigures> = HashMap::new();
        for sequence in self.lock().values() {
            let entry = figures
                .entry((
                    sequence.route.key.model.clone(),
                    sequence.route.key.version.clone(),
                ))
                .or_default();
            entry.open += 1;
            entry.state_bytes += sequence.settings.state_bytes();
        }
        figures
    }
}

fn expired(sequence: &Open, now: Instant) -> bool {
    now.saturating_duration_since(sequence.last_used) > sequence.settings.idle_timeout
}

fn sweep_locked(open: &mut HashMap<Key, Open>, now: Instant) -> usize {
    let before = open.len();
    // A sequence whose request is running is never idle.
    open.retain(|_, sequence| sequence.states.is_none() || !expired(sequence, now));
    before - open.len()
}

fn in_flight(id: &SequenceId) -> GatewayError {
    GatewayError::invalid(format!(
        "sequence {id} has a request in flight; send a sequence's requests one after the other"
    ))
}

impl Turn<'_> {
    /// Ends the turn after its request succeeded: the sequence keeps the new state (or closes,
    /// at `sequence_end`) and stays on the replica that ran it.
    pub fn finish(mut self, states: Vec<NamedTensor>, replica: u32) {
        self.finished = true;
        self.give_back(Some((states, replica)));
    }

    fn give_back(&mut self, outcome: Option<(Vec<NamedTensor>, u32)>) {
        let mut open = self.sequences.lock();
        let Some(sequence) = open.get_mut(&self.key) else {
            return;
        };
        if !Arc::ptr_eq(&sequence.route, &self.route) {
            // Restarted meanwhile; the new sequence owns the slot.
            return;
        }
        // Only a request that succeeded ends its sequence: a failed last chunk can be sent
        // again.
        if self.end && outcome.is_some() {
            open.remove(&self.key);
            return;
        }
        sequence.last_used = Instant::now();
        match outcome {
            Some((states, replica)) => {
                sequence.states = Some(states);
                sequence.replica = Some(replica);
            }
            None => sequence.states = Some(std::mem::take(&mut self.states)),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // The request failed or its caller went away: the state it began with stays, so the
            // same chunk can be sent again.
            self.give_back(None);
        }
    }
}

/// Takes the state outputs out of a call's outputs (leaving those the caller asked for by
/// name), renamed to the inputs they feed next time; an error if the model left one out or
/// changed its shape.
pub fn next_states(
    settings: &SequenceSettings,
    outputs: &mut Vec<NamedTensor>,
    keep: &[String],
) -> Result<Vec<NamedTensor>, GatewayError> {
    settings
        .states
        .iter()
        .map(|state| {
            let index = outputs
                .iter()
                .position(|output| output.name == state.output)
                .ok_or_else(|| {
                    GatewayError::internal(format!(
                        "the model returned no state output '{}'",
                        state.output
                    ))
                })?;
            let tensor = if keep.contains(&state.output) {
                outputs[index].tensor.clone()
            } else {
                outputs.remove(index).tensor
            };
            if tensor.shape() != state.initial.shape() || tensor.dtype() != state.initial.dtype() {
                return Err(GatewayError::internal(format!(
                    "state output '{}' has shape {:?} ({}), but the state is {:?} ({})",
                    state.output,
                    tensor.shape(),
                    tensor.dtype(),
                    state.initial.shape(),
                    state.initial.dtype()
                )));
            }
            Ok(NamedTensor {
                name: state.input.clone(),
                tensor,
            })
        })
        .collect()
}

/// Adds the control inputs a sequence model takes (Triton's `control_input`) to a request of a
/// sequence: START and END as the request's flags say, READY true (every call the gateway runs
/// is a real one), and the correlation id in its datatype; one value per request, shaped `[1,
/// 1]` when the model batches (a sequence's request is one row, as Triton's sequence batcher
/// requires), else `[1]`. A client may not send them itself.
pub fn add_controls(
    model: &str,
    controls: &[ControlSpec],
    control: &SequenceControl,
    batched: bool,
    inputs: &mut Vec<NamedTensor>,
) -> Result<(), GatewayError> {
    if let Some(sent) = inputs
        .iter()
        .find(|input| controls.iter().any(|c| c.input == input.name))
    {
        return Err(GatewayError::invalid(format!(
            "input '{}' is a control input of model '{}', which the gateway feeds from the \
             sequence parameters; leave it out",
            crate::error::quoted(&sent.name),
            crate::error::quoted(model)
        )));
    }
    if batched
        && inputs
            .first()
            .is_some_and(|input| input.tensor.shape().first().is_some_and(|&rows| rows != 1))
    {
        return Err(GatewayError::invalid(format!(
            "inference request to model '{}' must specify batch-size 1 due to requirements of \
             sequence batcher",
            crate::error::quoted(model)
        )));
    }
    let shape = if batched { vec![1, 1] } else { vec![1] };
    for spec in controls {
        let flag = |on: bool| spec.false_true[usize::from(on)];
        let tensor = match spec.kind {
            ControlKind::Start => Tensor::filled(spec.dtype, shape.clone(), flag(control.start)),
            ControlKind::End => Tensor::filled(spec.dtype, shape.clone(), flag(control.end)),
            ControlKind::Ready => Tensor::filled(spec.dtype, shape.clone(), flag(true)),
            ControlKind::CorrelationId => {
                correlation_tensor(model, spec, &control.id, shape.clone())?
            }
        }
        .map_err(|e| GatewayError::internal(format!("control '{}': {e}", spec.input)))?;
        inputs.push(NamedTensor {
            name: spec.input.clone(),
            tensor,
        });
    }
    Ok(())
}

/// The correlation id in the control's datatype: a number in an integer type it fits (or as
/// text in BYTES), a string in BYTES only, as Triton takes them.
fn correlation_tensor(
    model: &str,
    spec: &ControlSpec,
    id: &SequenceId,
    shape: Vec<usize>,
) -> Result<Result<Tensor, switchyard_runtimes::TensorError>, GatewayError> {
    let mismatch = |sent: &str| {
        GatewayError::invalid(format!(
            "sequence batching control '{}' data-type is '{sent}', but model '{}' expects '{}'",
            spec.input,
            crate::error::quoted(model),
            spec.dtype
        ))
    };
    let out_of_range = || {
        GatewayError::invalid(format!(
            "sequence_id {id} does not fit control '{}' of model '{}' ({})",
            spec.input,
            crate::error::quoted(model),
            spec.dtype
        ))
    };
    Ok(match (id, spec.dtype) {
        (SequenceId::Text(text), DataType::Bytes) => {
            Tensor::from_byte_strings(shape, &[text.as_bytes()])
        }
        (SequenceId::Text(_), _) => return Err(mismatch("BYTES")),
        (SequenceId::Number(n), DataType::Bytes) => {
            Tensor::from_byte_strings(shape, &[n.to_string()])
        }
        (SequenceId::Number(n), DataType::Uint64) => {
            Tensor::new(DataType::Uint64, shape, n.to_le_bytes().to_vec().into())
        }
        (SequenceId::Number(n), DataType::Int64) => {
            let value = i64::try_from(*n).map_err(|_| out_of_range())?;
            Tensor::new(DataType::Int64, shape, value.to_le_bytes().to_vec().into())
        }
        (SequenceId::Number(n), DataType::Uint32) => {
            let value = u32::try_from(*n).map_err(|_| out_of_range())?;
            Tensor::new(DataType::Uint32, shape, value.to_le_bytes().to_vec().into())
        }
        (SequenceId::Number(n), DataType::Int32) => {
            let value = i32::try_from(*n).map_err(|_| out_of_range())?;
            Tensor::new(DataType::Int32, shape, value.to_le_bytes().to_vec().into())
        }
        (SequenceId::Number(_), _) => return Err(mismatch("UINT64")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(input: &str, kind: ControlKind, dtype: DataType) -> ControlSpec {
        ControlSpec {
            input: input.into(),
            kind,
            dtype,
            false_true: [0.0, 1.0],
        }
    }

    fn controls() -> Vec<ControlSpec> {
        vec![
            spec("START", ControlKind::Start, DataType::Int32),
            spec("END", ControlKind::End, DataType::Fp32),
            spec("READY", ControlKind::Ready, DataType::Bool),
            spec("CORRID", ControlKind::CorrelationId, DataType::Uint64),
        ]
    }

    fn data() -> NamedTensor {
        NamedTensor {
            name: "INPUT".into(),
            tensor: Tensor::filled(DataType::Int32, vec![1, 1], 5.0).expect("tensor"),
        }
    }

    #[test]
    fn controls_say_what_the_sequence_parameters_say() {
        let control = SequenceControl {
            id: SequenceId::Number(1001),
            start: true,
            end: false,
        };
        let mut inputs = vec![data()];
        add_controls("m", &controls(), &control, true, &mut inputs).expect("fed");
        let by_name = |name: &str| {
            inputs
                .iter()
                .find(|input| input.name == name)
                .map(|input| (input.tensor.shape().to_vec(), input.tensor.data().to_vec()))
                .expect(name)
        };
        assert_eq!(by_name("START"), (vec![1, 1], 1i32.to_le_bytes().to_vec()));
        assert_eq!(by_name("END"), (vec![1, 1], 0f32.to_le_bytes().to_vec()));
        assert_eq!(by_name("READY"), (vec![1, 1], vec![1]));
        assert_eq!(
            by_name("CORRID"),
            (vec![1, 1], 1001u64.to_le_bytes().to_vec())
        );
    }

    #[test]
    fn control_refusals_are_clear() {
        let text = SequenceControl {
            id: SequenceId::Text("abc".into()),
            start: true,
            end: false,
        };
        let error = add_controls("m", &controls(), &text, true, &mut vec![data()])
            .expect_err("a string id for an integer CORRID");
        assert!(error.message.contains("expects 'UINT64'"), "{error:?}");
        let number = SequenceControl {
            id: SequenceId::Number(7),
            start: false,
            end: false,
        };
        let mut sent = vec![
            data(),
            NamedTensor {
                name: "START".into(),
                ..data()
            },
        ];
        let error = add_controls("m", &controls(), &number, true, &mut sent).expect_err("sent");
        assert!(error.message.contains("control input"), "{error:?}");
        let mut two_rows = vec![NamedTensor {
            name: "INPUT".into(),
            tensor: Tensor::filled(DataType::Int32, vec![2, 1], 5.0).expect("tensor"),
        }];
        let error = add_controls("m", &controls(), &number, true, &mut two_rows).expect_err("rows");
        assert!(error.message.contains("batch-size 1"), "{error:?}");
        let huge = SequenceControl {
            id: SequenceId::Number(u64::MAX),
            start: false,
            end: false,
        };
        let int32 = [spec("CORRID", ControlKind::CorrelationId, DataType::Int32)];
        let error = add_controls("m", &int32, &huge, false, &mut vec![data()]).expect_err("range");
        assert!(error.message.contains("does not fit"), "{error:?}");
        let strings = [spec("CORRID", ControlKind::CorrelationId, DataType::Bytes)];
        let mut inputs = vec![data()];
        add_controls("m", &strings, &text, false, &mut inputs).expect("a string id as BYTES");
        assert_eq!(inputs[1].tensor.shape(), [1]);
    }
}
