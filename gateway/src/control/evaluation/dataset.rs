//! Labelled datasets for `switchyard eval`: NPZ (NumPy's zip of `.npy` arrays: one per model
//! input, named after it, with the example on the first axis, and `labels`) or JSON lines (one
//! example per line: `{"<input>": [...], "label": 3}`).
//!
//! A dataset for a stateful model (served as sequences) also has `sequence`: one stream id per
//! example. The examples of a stream are consecutive and in order, and each is one request,
//! sent with exactly its shape (no batch axis is added): `switchyard eval` sends each stream as
//! one Triton sequence.
//!
//! Both are read whole, with bounds: the file is the operator's, but a wrong path or a corrupt
//! file must give a clear error, never an allocation the size a header claims.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use sha2::Digest;

/// The most a dataset file may hold, read by the command line.
pub const MAX_FILE_BYTES: u64 = 2 << 30;
const MAX_EXAMPLES: usize = 10_000_000;
/// Labels are class indices.
pub const MAX_CLASSES: i64 = 100_000;
/// What a dataset may take once decoded (its values as f64, and an NPZ's arrays as they
/// decompress), as a multiple of its file's bound: a compressed archive or one-byte values
/// cannot make it grow past this.
const DECODED_PER_FILE_BYTE: u64 = 4;

/// The bytes a dataset may still take as it is decoded.
struct Budget {
    left: u64,
}

impl Budget {
    fn charge(&mut self, bytes: u64, what: &str) -> anyhow::Result<()> {
        ensure!(
            bytes <= self.left,
            "{what} decodes past the dataset's budget ({} bytes left of {DECODED_PER_FILE_BYTE} \
             times the file's bound)",
            self.left
        );
        self.left -= bytes;
        Ok(())
    }

    /// Values as f64, eight bytes each.
    fn charge_values(&mut self, count: usize, what: &str) -> anyhow::Result<()> {
        self.charge((count as u64).saturating_mul(8), what)
    }
}

/// One input's values for every example, flattened, and the shape of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub values: Vec<f64>,
    pub example_shape: Vec<usize>,
}

impl Column {
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file's name, as scores name it.
    pub name: String,
    pub sha256: String,
    pub inputs: BTreeMap<String, Column>,
    pub labels: Vec<i64>,
    /// For a dataset of streams: each stream's examples, `[start, end)`, in order.
    pub streams: Option<Vec<(usize, usize)>>,
}

/// The name of the array (or JSON key) that says which stream an example belongs to.
pub const SEQUENCE_ARRAY: &str = "sequence";

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Reads an NPZ or JSON-lines file (by its extension: `.npz`, `.jsonl` or `.json`) of at
    /// most `max_bytes`.
    pub fn read(path: &Path, max_bytes: u64) -> anyhow::Result<Dataset> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read the dataset {}", path.display()))?
            .len();
        ensure!(
            size <= max_bytes.min(MAX_FILE_BYTES),
            "the dataset {} is {size} bytes; at most {} are read",
            path.display(),
            max_bytes.min(MAX_FILE_BYTES)
        );
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the dataset {}", path.display()))?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut budget = Budget {
            left: max_bytes
                .min(MAX_FILE_BYTES)
                .saturating_mul(DECODED_PER_FILE_BYTE),
        };
        let (mut inputs, labels) = match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => read_npz(&bytes, &mut budget)?,
            Some("jsonl" | "json") => read_jsonl(&bytes, &mut budget)?,
            _ => bail!(
                "the dataset {} is neither .npz nor .jsonl (see `switchyard eval --help`)",
                path.display()
            ),
        };
        ensure!(!labels.is_empty(), "the dataset {name} has no examples");
        for (input, column) in &inputs {
            ensure!(
                column.values.len() == labels.len() * column.example_len(),
                "input '{input}' has {} values, not {} examples of shape {:?}",
                column.values.len(),
                labels.len(),
                column.example_shape
            );
        }
        let streams = inputs
            .remove(SEQUENCE_ARRAY)
            .map(|column| streams_of(&column))
            .transpose()?;
        if let Some(bad) = labels.iter().find(|l| !(0..MAX_CLASSES).contains(*l)) {
            bail!(
                "label {bad} is not a class index from 0 to {}",
                MAX_CLASSES - 1
            );
        }
        Ok(Dataset {
            name,
            sha256,
            inputs,
            labels,
            streams,
        })
    }
}

/// The streams of a `sequence` column: runs of one id, each id in one run only.
fn streams_of(column: &Column) -> anyhow::Result<Vec<(usize, usize)>> {
    ensure!(
        column.example_shape.is_empty(),
        "'{SEQUENCE_ARRAY}' must be one stream id per example, not shape {:?}",
        column.example_shape
    );
    let mut streams: Vec<(usize, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut current = None;
    for (index, id) in column.values.iter().enumerate() {
        ensure!(id.fract() == 0.0, "stream id {id} is not a whole number");
        if current == Some(*id as i64) {
            if let Some(last) = streams.last_mut() {
                last.1 = index + 1;
            }
            continue;
        }
        ensure!(
            seen.insert(*id as i64),
            "stream {id} resumes at example {index}: a stream's examples must be consecutive"
        );
        current = Some(*id as i64);
        streams.push((index, index + 1));
    }
    Ok(streams)
}

type Read_ = (BTreeMap<String, Column>, Vec<i64>);

fn read_npz(bytes: &[u8], budget: &mut Budget) -> anyhow::Result<Read_> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("not an NPZ (zip) file")?;
    let mut inputs = BTreeMap::new();
    let mut labels = None;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).context("a corrupt NPZ entry")?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_owned) else {
            continue;
        };
        let claimed = entry.size();
        ensure!(
            claimed <= MAX_FILE_BYTES && claimed <= budget.left,
            "array '{name}' claims {claimed} bytes, past the dataset's budget"
        );
        // What the entry claims is not trusted: reading stops at the budget.
        let mut data = Vec::new();
        entry
            .by_ref()
            .take(budget.left.min(MAX_FILE_BYTES).saturating_add(1))
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read array '{name}'"))?;
        budget.charge(data.len() as u64, &format!("array '{name}'"))?;
        let (shape, values) = read_npy(&data, budget).with_context(|| format!("array '{name}'"))?;
        ensure!(
            !shape.is_empty(),
            "array '{name}' is a scalar, not one value per example"
        );
        ensure!(
            shape[0] <= MAX_EXAMPLES,
            "array '{name}' has more than {MAX_EXAMPLES} examples"
        );
        if name == "labels" {
            ensure!(
                shape.len() == 1,
                "labels must be one class index per example"
            );
            labels = Some(
                values
                    .iter()
                    .map(|v| {
                        ensure!(v.fract() == 0.0, "label {v} is not a whole number");
                        Ok(*v as i64)
                    })
                    .collect::<anyhow::Result<Vec<i64>>>()?,
            );
        } else {
            inputs.insert(
                name,
                Column {
                    values,
                    example_shape: shape[1..].to_vec(),
                },
            );
        }
    }
    let labels = labels.context("the NPZ has no array named 'labels'")?;
    Ok((inputs, labels))
}

/// A `.npy` array (format 1, 2 or 3; little-endian or single-byte numbers, C order), as f64,
/// charged to `budget`.
fn read_npy(data: &[u8], budget: &mut Budget) -> anyhow::Result<(Vec<usize>, Vec<f64>)> {
    ensure!(
        data.len() >= 10 && &data[..6] == b"\x93NUMPY",
        "not a .npy array"
    );
    let (header_len, start) = match data[6] {
        1 => (usize::from(u16::from_le_bytes([data[8], data[9]])), 10),
        2 | 3 => {
            ensure!(data.len() >= 12, "a truncated .npy header");
            (
                u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize,
                12,
            )
        }
        other => bail!(".npy format {other} is not known"),
    };
    ensure!(header_len <= 65_536, "a .npy header of {header_len} bytes");
    let header = data
        .get(start..start + header_len)
        .context("a truncated .npy header")?;
    let header = std::str::from_utf8(header).context("a .npy header that is not text")?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let at = header
            .find(&format!("'{key}':"))
            .with_context(|| format!("the .npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "Fortran-ordered arrays are not read; save with C order"
    );
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .context("a .npy descr that is not a string")?;
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("a .npy shape that is not a tuple")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .context("a .npy dimension that is not a number")
        })
        .collect::<anyhow::Result<_>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .context("a .npy shape too large")?;
    let body = &data[start + header_len..];
    let kind = descr
        .get(1..)
        .context("a .npy descr too short to name a dtype")?;
    let width = match kind {
        "f8" | "i8" | "u8" => 8,
        "f4" | "i4" | "u4" => 4,
        "i2" | "u2" | "f2" => 2,
        "i1" | "u1" | "b1" => 1,
        other => bail!("dtype '{other}' is not read (numbers only)"),
    };
    ensure!(
        width == 1 || descr.starts_with('<') || descr.starts_with('|'),
        "big-endian arrays are not read"
    );
    ensure!(
        body.len() == count.checked_mul(width).context("a .npy shape too large")?,
        "the array holds {} bytes, not {count} values of {width}",
        body.len()
    );
    budget.charge_values(count, "the array")?;
    let values = body
        .chunks_exact(width)
        .map(|b| match kind {
            "f8" => f64::from_le_bytes(b.try_into().unwrap_or_default()),
            "f4" => f64::from(f32::from_le_bytes(b.try_into().unwrap_or_default())),
            "f2" => f64::from(half::f16::from_le_bytes(b.try_into().unwrap_or_default())),
            "i8" => i64::from_le_bytes(b.try_into().unwrap_or_default()) as f64,
            "u8" => u64::from_le_bytes(b.try_into().unwrap_or_default()) as f64,
            "i4" => f64::from(i32::from_le_bytes(b.try_into().unwrap_or_default())),
            "u4" => f64::from(u32::from_le_bytes(b.try_into().unwrap_or_default())),
            "i2" => f64::from(i16::from_le_bytes(b.try_into().unwrap_or_default())),
            "u2" => f64::from(u16::from_le_bytes(b.try_into().unwrap_or_default())),
            "i1" => f64::from(b[0] as i8),
            _ => f64::from(b[0]),
        })
        .collect();
    Ok((shape, values))
}

fn read_jsonl(bytes: &[u8], budget: &mut Budget) -> anyhow::Result<Read_> {
    let text = std::str::from_utf8(bytes).context("the JSON-lines dataset is not UTF-8")?;
    let mut inputs: BTreeMap<String, Column> = BTreeMap::new();
    let mut labels = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        ensure!(
            labels.len() < MAX_EXAMPLES,
            "more than {MAX_EXAMPLES} examples"
        );
        let example: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .with_context(|| format!("line {} is not a JSON object", number + 1))?;
        let label = example
            .get("label")
            .and_then(serde_json::Value::as_i64)
            .with_context(|| format!("line {} has no integer 'label'", number + 1))?;
        labels.push(label);
        for (name, value) in example.iter().filter(|(name, _)| *name != "label") {
            let mut shape = Vec::new();
            let mut values = Vec::new();
            flatten(value, 0, &mut shape, &mut values)
                .with_context(|| format!("line {}, input '{name}'", number + 1))?;
            budget.charge_values(values.len(), &format!("line {}", number + 1))?;
            let column = inputs.entry(name.clone()).or_insert_with(|| Column {
                values: Vec::new(),
                example_shape: shape.clone(),
            });
            ensure!(
                column.example_shape == shape,
                "line {}: input '{name}' has shape {shape:?}, not {:?} as before",
                number + 1,
                column.example_shape
            );
            ensure!(
                column.values.len() == (labels.len() - 1) * column.example_len(),
                "line {}: input '{name}' is missing from an earlier line",
                number + 1
            );
            column.values.extend(values);
        }
    }
    Ok((inputs, labels))
}

/// Nested JSON arrays of numbers, flattened, with their shape.
fn flatten(
    value: &serde_json::Value,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<f64>,
) -> anyhow::Result<()> {
    ensure!(depth <= 8, "nested deeper than 8");
    match value {
        serde_json::Value::Number(n) => {
            out.push(n.as_f64().context("a number out of range")?);
            Ok(())
        }
        serde_json::Value::Bool(b) => {
            out.push(f64::from(u8::from(*b)));
            Ok(())
        }
        serde_json::Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            } else {
                ensure!(shape[depth] == items.len(), "a ragged array");
            }
            items
                .iter()
                .try_for_each(|item| flatten(item, depth + 1, shape, out))
        }
        _ => bail!("values must be numbers or arrays of numbers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    fn budget() -> Budget {
        Budget { left: 1 << 20 }
    }

    fn read_npy(data: &[u8]) -> anyhow::Result<(Vec<usize>, Vec<f64>)> {
        super::read_npy(data, &mut budget())
    }

    fn read_jsonl(bytes: &[u8]) -> anyhow::Result<Read_> {
        super::read_jsonl(bytes, &mut budget())
    }

    #[test]
    fn decoding_is_bounded_and_headers_never_panic() {
        // One-byte values grow eightfold as f64: charged as they are, refused past the budget.
        let bytes = vec![1u8; 1000];
        let mut small = Budget { left: 4000 };
        let error = super::read_npy(&npy("|u1", "(1000,)", &bytes), &mut small).unwrap_err();
        assert!(error.to_string().contains("budget"), "{error}");
        let mut enough = Budget { left: 8000 };
        assert!(super::read_npy(&npy("|u1", "(1000,)", &bytes), &mut enough).is_ok());
        assert_eq!(enough.left, 0);
        for descr in ["", "<", "\u{e9}"] {
            assert!(read_npy(&npy(descr, "(1,)", &[0; 8])).is_err(), "{descr:?}");
        }
        let mut tiny = Budget { left: 16 };
        assert!(super::read_jsonl(b"{\"x\": [1, 2, 3], \"label\": 1}\n", &mut tiny).is_err());
    }

    #[test]
    fn npy_arrays_are_read_and_bad_ones_refused() {
        let floats: Vec<u8> = [1.5f32, -2.0, 3.25, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (shape, values) = read_npy(&npy("<f4", "(2, 2)", &floats)).unwrap();
        assert_eq!((shape, values), (vec![2, 2], vec![1.5, -2.0, 3.25, 4.0]));
        let (shape, values) = read_npy(&npy(
            "<i8",
            "(2,)",
            &[7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ))
        .unwrap();
        assert_eq!((shape, values), (vec![2], vec![7.0, 1.0]));
        // A header that claims more than the body holds, an unknown dtype, Fortran order.
        assert!(read_npy(&npy("<f4", "(1000000000, 64)", &floats)).is_err());
        assert!(read_npy(&npy("<c8", "(1,)", &[0; 8])).is_err());
        assert!(read_npy(&npy(">f4", "(1,)", &[0; 4])).is_err());
        assert!(read_npy(b"\x93NUMPY").is_err());
        assert!(read_npy(b"not an array at all").is_err());
    }

    #[test]
    fn json_lines_must_agree_line_to_line() {
        let good =
            b"{\"x\": [[1, 2], [3, 4]], \"label\": 1}\n{\"x\": [[5, 6], [7, 8]], \"label\": 0}\n";
        let (inputs, labels) = read_jsonl(good).unwrap();
        assert_eq!(labels, [1, 0]);
        assert_eq!(inputs["x"].example_shape, [2, 2]);
        assert_eq!(inputs["x"].values.len(), 8);
        let ragged = b"{\"x\": [1, 2], \"label\": 1}\n{\"x\": [1, 2, 3], \"label\": 0}\n";
        assert!(read_jsonl(ragged).is_err());
        let unlabelled = b"{\"x\": [1, 2]}\n";
        assert!(read_jsonl(unlabelled).is_err());
    }

    #[test]
    fn streams_are_runs_of_one_id_that_never_resume() {
        let column = |ids: &[f64], shape: Vec<usize>| Column {
            values: ids.to_vec(),
            example_shape: shape,
        };
        let streams = streams_of(&column(&[4.0, 4.0, 4.0, 9.0, 2.0, 2.0], vec![])).unwrap();
        assert_eq!(streams, [(0, 3), (3, 4), (4, 6)]);
        let resumed = streams_of(&column(&[1.0, 2.0, 1.0], vec![])).unwrap_err();
        assert!(
            resumed
                .to_string()
                .contains("stream 1 resumes at example 2"),
            "{resumed}"
        );
        assert!(
            streams_of(&column(&[1.5], vec![])).is_err(),
            "a fractional id"
        );
        assert!(
            streams_of(&column(&[1.0, 1.0], vec![2])).is_err(),
            "one id per example"
        );
    }
}
