//! The protocol-neutral inference request and response, and the checks of a request against
//! the signature of the version that will serve it. Both fronts decode into these.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_runtimes::{NamedTensor, Signature, Tensor, TensorSpec};

use crate::core::table::Reshape;
use crate::error::GatewayError;
use crate::priority::Priority;
use crate::telemetry::Protocol;

/// Inputs, outputs (and raw contents) a request may name, each.
pub const MAX_TENSORS: usize = 1024;
/// Parameters of a request, and of each of its inputs and outputs.
pub const MAX_PARAMETERS: usize = 1024;
/// Dimensions of one input's shape.
pub const MAX_DIMS: usize = 64;
/// A parameter's name or string value.
pub const MAX_PARAMETER_BYTES: usize = 64 * 1024;

/// A request parameter, as the protocol allows them.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model: String,
    /// A version label; `None` lets the gateway choose.
    pub version: Option<String>,
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Outputs to return, in this order; empty means all of them, in the model's order.
    pub outputs: Vec<String>,
    /// Outputs to answer as their top k classes (Triton's classification extension): name, k.
    pub classification: Vec<(String, usize)>,
    pub parameters: BTreeMap<String, Parameter>,
    /// When the caller stops waiting; the version's timeout applies as well.
    pub deadline: Option<Instant>,
    /// When the request arrived (for its duration in the metrics).
    pub received: Option<Instant>,
    pub protocol: Protocol,
    /// The request's HTTP headers or gRPC metadata, where a sticky policy finds its key.
    pub headers: http::HeaderMap,
    /// Set when the payload capture drew it: the core writes the version it chose into it.
    pub capture: Option<crate::core::capture::Ticket>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: Arc<str>,
    /// The version that served the request.
    pub model_version: Arc<str>,
    pub id: Option<String>,
    pub outputs: Vec<NamedTensor>,
}

impl InferRequest {
    /// Its rows, as a key's rows per second count them: the first dimension of its first
    /// input (Triton's batch dimension), 1 for a scalar or no input.
    pub fn rows(&self) -> u64 {
        self.inputs
            .first()
            .and_then(|input| input.tensor.shape().first().copied())
            .map_or(1, |rows| rows.max(1) as u64)
    }

    /// Its priority: Triton's `priority` parameter as [`InferRequest::apply_priority_parameter`]
    /// left it, else the default.
    pub fn priority(&self) -> Priority {
        match self.parameters.get("priority") {
            Some(Parameter::Int(level)) => {
                Priority::from_parameter(u64::try_from(*level).unwrap_or(0)).unwrap_or_default()
            }
            _ => Priority::DEFAULT,
        }
    }

    /// Checks Triton's `priority` parameter (1 the highest; 0 or none: `default`, the caller's
    /// key's; past the lowest level, the lowest; never above `highest`, the most its key may
    /// ask for), and writes the level it comes to back, so that a request forwarded to a
    /// peer keeps it.
    pub fn apply_priority_parameter(
        &mut self,
        default: Priority,
        highest: Priority,
    ) -> Result<(), GatewayError> {
        let (given, priority) = match self.parameters.get("priority") {
            None => (None, default),
            Some(Parameter::Int(level)) if *level >= 0 => (
                Some(*level),
                Priority::from_parameter(*level as u64).unwrap_or(default),
            ),
            Some(_) => {
                return Err(GatewayError::invalid(
                    "parameter 'priority' must be a whole number: 1 is the highest, 0 the default",
                ));
            }
        };
        let priority = priority.max(highest);
        let level = i64::from(priority.level());
        // Most requests name none and take the default, which an absent parameter means:
        // nothing to write then.
        let implied = given.is_none() && priority == Priority::DEFAULT;
        if given != Some(level) && !implied {
            self.parameters
                .insert("priority".into(), Parameter::Int(level));
        }
        Ok(())
    }

    /// Applies the protocol's `timeout` request parameter (microseconds), as Triton does;
    /// 0 means no timeout of the request's own.
    pub fn apply_timeout_parameter(&mut self, received: Instant) -> Result<(), GatewayError> {
        let micros = match self.parameters.get("timeout") {
            None | Some(Parameter::Int(0)) => return Ok(()),
            Some(Parameter::Int(micros)) if *micros > 0 => *micros as u64,
            Some(_) => {
                return Err(GatewayError::invalid(
                    "parameter 'timeout' must be a non-negative number of microseconds",
                ));
            }
        };
        let Some(deadline) = received.checked_add(Duration::from_micros(micros)) else {
            return Ok(());
        };
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        Ok(())
    }
}

/// Checks inputs and requested outputs against a version's signature, so that everything the
/// runtime receives is well-formed and the caller gets a precise message otherwise.
pub fn validate(
    model: &str,
    signature: &Signature,
    max_batch_size: u32,
    optional: &[String],
    request: &InferRequest,
) -> Result<(), GatewayError> {
    for (index, input) in request.inputs.iter().enumerate() {
        if request.inputs[..index]
            .iter()
            .any(|other| other.name == input.name)
        {
            return Err(GatewayError::invalid(format!(
                "input '{}' appears more than once",
                input.name
            )));
        }
        let Some(spec) = signature.input(&input.name) else {
            return Err(GatewayError::invalid(format!(
                "model '{model}' has no input '{}' (its inputs: {})",
                input.name,
                names(&signature.inputs)
            )));
        };
        let tensor = &input.tensor;
        if tensor.dtype() != spec.dtype {
            return Err(GatewayError::invalid(format!(
                "input '{}' has datatype {}, but model '{model}' expects {}",
                input.name,
                tensor.dtype(),
                spec.dtype
            )));
        }
        let shape = tensor.shape();
        // A scalar may also come as one element of shape [1], as Triton's config (dims [1],
        // reshape []) tells clients to send it.
        let fits = (shape.len() == spec.dims.len()
            && shape
                .iter()
                .zip(&spec.dims)
                .all(|(&dim, &expected)| expected < 0 || dim as i64 == expected))
            || (spec.dims.is_empty() && shape == [1]);
        if !fits {
            return Err(GatewayError::invalid(format!(
                "input '{}' has shape {shape:?}, but model '{model}' expects {:?} (-1: any size)",
                input.name, spec.dims
            )));
        }
    }
    if let Some(missing) = signature.inputs.iter().find(|spec| {
        !optional.contains(&spec.name)
            && !request.inputs.iter().any(|input| input.name == spec.name)
    }) {
        return Err(GatewayError::invalid(format!(
            "missing input '{}' ({} {:?}) for model '{model}'",
            missing.name, missing.dtype, missing.dims
        )));
    }
    if max_batch_size > 0 {
        check_batch(model, max_batch_size, &request.inputs)?;
    }
    for (index, name) in request.outputs.iter().enumerate() {
        if request.outputs[..index].contains(name) {
            return Err(GatewayError::invalid(format!(
                "output '{name}' is requested more than once"
            )));
        }
        if signature.output(name).is_none() {
            return Err(GatewayError::invalid(format!(
                "model '{model}' has no output '{name}' (its outputs: {})",
                names(&signature.outputs)
            )));
        }
    }
    Ok(())
}

fn check_batch(
    model: &str,
    max_batch_size: u32,
    inputs: &[NamedTensor],
) -> Result<(), GatewayError> {
    let mut batch: Option<(&str, usize)> = None;
    for input in inputs {
        let size = input.tensor.shape().first().copied().unwrap_or(0);
        if size == 0 || size > max_batch_size as usize {
            return Err(GatewayError::invalid(format!(
                "input '{}' has batch size {size}; model '{model}' takes 1 to {max_batch_size}",
                input.name
            )));
        }
        match batch {
            Some((first, expected)) if expected != size => {
                return Err(GatewayError::invalid(format!(
                    "inputs disagree on the batch size: '{first}' has {expected}, '{}' has {size}",
                    input.name
                )));
            }
            _ => batch = Some((&input.name, size)),
        }
    }
    Ok(())
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|spec| spec.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives a scalar input sent as shape [1] the shape [] the model takes (Triton's reshape).
pub fn reshape_scalars(signature: &Signature, inputs: &mut [NamedTensor]) {
    for input in inputs {
        let scalar = signature
            .input(&input.name)
            .is_some_and(|spec| spec.dims.is_empty());
        if scalar && input.tensor.shape() == [1] {
            reshape(input, Vec::new());
        }
    }
}

/// Gives the tensors a configuration reshapes the shape they go on in: `to_model` for inputs
/// on their way to the model, else for outputs on their way to the client. The bytes are
/// shared, not copied.
pub fn apply_reshapes(reshapes: &[Reshape], to_model: bool, tensors: &mut [NamedTensor]) {
    for tensor in tensors {
        let Some(rule) = reshapes.iter().find(|rule| rule.name == tensor.name) else {
            continue;
        };
        let (from, to) = match to_model {
            true => (&rule.client, &rule.model),
            false => (&rule.model, &rule.client),
        };
        let shape = Reshape::convert(tensor.tensor.shape(), from, to);
        reshape(tensor, shape);
    }
}

/// The same bytes in another shape of as many elements (left as it is otherwise).
fn reshape(tensor: &mut NamedTensor, shape: Vec<usize>) {
    let current = &tensor.tensor;
    if let Ok(reshaped) = Tensor::new(current.dtype(), shape, current.data().clone()) {
        tensor.tensor = reshaped;
    }
}

/// Keeps the requested outputs, in the requested order (all of them when none were named).
pub fn select_outputs(outputs: Vec<NamedTensor>, requested: &[String]) -> Vec<NamedTensor> {
    if requested.is_empty() {
        return outputs;
    }
    let mut outputs: Vec<Option<NamedTensor>> = outputs.into_iter().map(Some).collect();
    requested
        .iter()
        .filter_map(|name| {
            outputs
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|output| &output.name == name))
                .and_then(Option::take)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::{DataType, Tensor};

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec {
                    name: "a".into(),
                    dtype: DataType::Fp32,
                    dims: vec![-1, 4],
                },
                TensorSpec {
                    name: "b".into(),
                    dtype: DataType::Int64,
                    dims: vec![-1],
                },
            ],
            outputs: vec![
                TensorSpec {
                    name: "y".into(),
                    dtype: DataType::Fp32,
                    dims: vec![-1, 2],
                },
                TensorSpec {
                    name: "z".into(),
                    dtype: DataType::Fp32,
                    dims: vec![-1],
                },
            ],
        }
    }

    fn input(name: &str, dtype: DataType, shape: Vec<usize>) -> NamedTensor {
        let count: usize = shape.iter().product();
        let size = dtype.element_size().unwrap_or(1);
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(dtype, shape, vec![0u8; count * size].into()).expect("tensor"),
        }
    }

    fn request(inputs: Vec<NamedTensor>) -> InferRequest {
        InferRequest {
            model: "m".into(),
            inputs,
            ..InferRequest::default()
        }
    }

    #[test]
    fn the_priority_parameter_is_checked_and_the_keys_default_written_in() {
        let with = |value: Option<Parameter>, default: Priority| {
            let mut request = request(Vec::new());
            if let Some(value) = value {
                request.parameters.insert("priority".into(), value);
            }
            request
                .apply_priority_parameter(default, Priority::HIGHEST)
                .map(|()| {
                    (
                        request.priority(),
                        request.parameters.get("priority").cloned(),
                    )
                })
        };
        let two = Priority::new(2).unwrap();
        assert_eq!(with(None, Priority::DEFAULT), Ok((Priority::DEFAULT, None)));
        assert_eq!(
            with(None, two),
            Ok((two, Some(Parameter::Int(2)))),
            "the key's default travels with a forwarded request"
        );
        assert_eq!(
            with(Some(Parameter::Int(0)), two),
            Ok((two, Some(Parameter::Int(2))))
        );
        assert_eq!(
            with(Some(Parameter::Int(1)), two),
            Ok((Priority::HIGHEST, Some(Parameter::Int(1))))
        );
        assert_eq!(
            with(Some(Parameter::Int(99)), two),
            Ok((Priority::LOWEST, Some(Parameter::Int(10))))
        );
        // A key's own level is the highest its requests may ask for.
        let mut request = request(Vec::new());
        request
            .parameters
            .insert("priority".into(), Parameter::Int(1));
        request
            .apply_priority_parameter(Priority::LOWEST, Priority::LOWEST)
            .unwrap();
        assert_eq!(request.priority(), Priority::LOWEST);
        for bad in [
            Parameter::Int(-1),
            Parameter::String("high".into()),
            Parameter::Double(1.5),
            Parameter::Bool(true),
        ] {
            let refused = with(Some(bad.clone()), two).expect_err("refused");
            assert_eq!(
                refused.kind,
                crate::error::ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    fn error_of(request: &InferRequest, max_batch_size: u32) -> String {
        validate("m", &signature(), max_batch_size, &[], request)
            .expect_err("request should be refused")
            .message
    }

    #[test]
    fn accepts_a_matching_request() {
        let ok = request(vec![
            input("a", DataType::Fp32, vec![2, 4]),
            input("b", DataType::Int64, vec![2]),
        ]);
        assert!(validate("m", &signature(), 8, &[], &ok).is_ok());
    }

    #[test]
    fn refuses_each_kind_of_mismatch() {
        let b = || input("b", DataType::Int64, vec![2]);
        let wrong_dtype = request(vec![input("a", DataType::Fp64, vec![2, 4]), b()]);
        assert!(error_of(&wrong_dtype, 8).contains("datatype FP64"));
        let wrong_shape = request(vec![input("a", DataType::Fp32, vec![2, 5]), b()]);
        assert!(error_of(&wrong_shape, 8).contains("shape [2, 5]"));
        let wrong_rank = request(vec![input("a", DataType::Fp32, vec![8]), b()]);
        assert!(error_of(&wrong_rank, 8).contains("shape [8]"));
        let missing = request(vec![input("a", DataType::Fp32, vec![2, 4])]);
        assert!(error_of(&missing, 8).contains("missing input 'b'"));
        let unknown = request(vec![input("c", DataType::Fp32, vec![2, 4])]);
        assert!(error_of(&unknown, 8).contains("no input 'c'"));
        let twice = request(vec![
            input("a", DataType::Fp32, vec![2, 4]),
            input("a", DataType::Fp32, vec![2, 4]),
            b(),
        ]);
        assert!(error_of(&twice, 8).contains("more than once"));
        let disagree = request(vec![
            input("a", DataType::Fp32, vec![2, 4]),
            input("b", DataType::Int64, vec![3]),
        ]);
        assert!(error_of(&disagree, 8).contains("disagree"));
        let too_big = request(vec![
            input("a", DataType::Fp32, vec![9, 4]),
            input("b", DataType::Int64, vec![9]),
        ]);
        assert!(error_of(&too_big, 8).contains("batch size 9"));
        let mut twice_out = request(vec![input("a", DataType::Fp32, vec![2, 4]), b()]);
        twice_out.outputs = vec!["y".into(), "y".into()];
        assert!(error_of(&twice_out, 8).contains("more than once"));
        let mut unknown_output = request(vec![input("a", DataType::Fp32, vec![2, 4]), b()]);
        unknown_output.outputs = vec!["w".into()];
        assert!(error_of(&unknown_output, 8).contains("no output 'w'"));
    }

    #[test]
    fn a_scalar_may_come_as_one_element_and_reaches_the_model_as_a_scalar() {
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: "sr".into(),
                dtype: DataType::Int64,
                dims: vec![],
            }],
            outputs: vec![],
        };
        for shape in [vec![], vec![1]] {
            let ok = request(vec![input("sr", DataType::Int64, shape)]);
            assert!(validate("m", &signature, 0, &[], &ok).is_ok());
        }
        let two = request(vec![input("sr", DataType::Int64, vec![2])]);
        assert!(validate("m", &signature, 0, &[], &two).is_err());
        let mut inputs = vec![input("sr", DataType::Int64, vec![1])];
        reshape_scalars(&signature, &mut inputs);
        assert_eq!(inputs[0].tensor.shape(), &[] as &[usize]);
        assert_eq!(inputs[0].tensor.data().len(), 8);
    }

    #[test]
    fn optional_inputs_may_be_left_out() {
        let only_a = request(vec![input("a", DataType::Fp32, vec![2, 4])]);
        assert!(validate("m", &signature(), 8, &[], &only_a).is_err());
        assert!(validate("m", &signature(), 8, &["b".to_owned()], &only_a).is_ok());
    }

    #[test]
    fn reshapes_keep_the_batch_axis_and_the_bytes() {
        let rules = [Reshape {
            name: "x".into(),
            client: vec![-1, 6],
            model: vec![-1, 2, 3],
        }];
        let mut tensors = vec![input("x", DataType::Fp32, vec![4, 6])];
        apply_reshapes(&rules, true, &mut tensors);
        assert_eq!(tensors[0].tensor.shape(), [4, 2, 3]);
        apply_reshapes(&rules, false, &mut tensors);
        assert_eq!(tensors[0].tensor.shape(), [4, 6]);
        let unbatched = [Reshape {
            name: "x".into(),
            client: vec![3, 2, 2],
            model: vec![1, 3, 2, 2],
        }];
        let mut tensors = vec![input("x", DataType::Fp32, vec![3, 2, 2])];
        apply_reshapes(&unbatched, true, &mut tensors);
        assert_eq!(tensors[0].tensor.shape(), [1, 3, 2, 2]);
        assert_eq!(tensors[0].tensor.data().len(), 48);
    }

    #[test]
    fn no_batch_axis_means_no_batch_bound() {
        let big = request(vec![
            input("a", DataType::Fp32, vec![100, 4]),
            input("b", DataType::Int64, vec![7]),
        ]);
        assert!(validate("m", &signature(), 0, &[], &big).is_ok());
    }

    #[test]
    fn selects_requested_outputs_in_order() {
        let outputs = vec![
            input("y", DataType::Fp32, vec![1, 2]),
            input("z", DataType::Fp32, vec![1]),
        ];
        let picked = select_outputs(outputs.clone(), &["z".into(), "y".into()]);
        let names: Vec<&str> = picked.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["z", "y"]);
        assert_eq!(select_outputs(outputs, &[]).len(), 2);
    }
}
