//! String tensors through ONNX Runtime's C API with explicit lengths, so that an element may
//! hold any bytes, an embedded NUL among them, as Triton passes them. The `ort` crate's own
//! string constructor goes through `FillStringTensor`, which takes NUL-terminated C strings,
//! and its extractor insists on UTF-8; both would refuse what the protocol allows.
//!
//! This is the only FFI code of the crate: each call is one C API function on a value this
//! module owns or borrows for the call, and each `unsafe` block says why it holds.
#![allow(unsafe_code)]

use ort::AsPointer;
use ort::value::{DynValue, Tensor as OrtTensor};

use crate::{RuntimeError, Tensor, bytes_elements};

/// A string tensor of `shape` holding the elements of `data` (the protocol's BYTES layout: each
/// element a 4-byte little-endian length and its bytes), copied once into ONNX Runtime's
/// strings.
pub(super) fn string_tensor(
    name: &str,
    shape: &[usize],
    data: &[u8],
) -> Result<OrtTensor<String>, RuntimeError> {
    let invalid =
        |message: String| RuntimeError::InvalidInput(format!("input '{name}': {message}"));
    let elements = bytes_elements(data)
        .collect::<Result<Vec<&[u8]>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    // A tensor of empty strings, made by ort so that it owns the value and its allocator; each
    // element is then resized to its length and filled.
    let mut tensor = OrtTensor::from_string_array((shape.to_vec(), &vec![""; elements.len()][..]))
        .map_err(|e| invalid(e.to_string()))?;
    let api = ort::api();
    let value = tensor.ptr_mut();
    for (index, element) in elements.iter().enumerate() {
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `value` is a live string tensor of `elements.len()` elements (made above and
        // owned by `tensor` for the whole loop) and `index` is below that count; the call
        // resizes that one element to `element.len()` bytes and points `buffer` at them.
        let status = unsafe {
            (api.GetResizedStringTensorElementBuffer)(value, index, element.len(), &mut buffer)
        };
        // SAFETY: the status comes from the C API call just made.
        unsafe { ort::Error::result_from_status(status) }.map_err(|e| invalid(e.to_string()))?;
        if element.is_empty() {
            continue;
        }
        if buffer.is_null() {
            return Err(invalid(
                "ONNX Runtime gave no buffer for a string element".into(),
            ));
        }
        // SAFETY: `buffer` points at the element's `element.len()` bytes inside the tensor,
        // which no one else references; the source is a separate Rust slice of that length.
        unsafe {
            std::ptr::copy_nonoverlapping(element.as_ptr(), buffer.cast::<u8>(), element.len());
        }
    }
    Ok(tensor)
}

/// The elements of an output string tensor of `count` elements, whatever bytes they hold.
pub(super) fn string_elements(
    value: &DynValue,
    shape: Vec<usize>,
    count: usize,
) -> Result<Tensor, String> {
    let api = ort::api();
    let pointer = value.ptr();
    let mut total = 0usize;
    // SAFETY: `pointer` is the live output value borrowed for this call, a string tensor (the
    // caller checked its element type); the call writes one usize.
    let status = unsafe { (api.GetStringTensorDataLength)(pointer, &mut total) };
    // SAFETY: the status comes from the C API call just made.
    unsafe { ort::Error::result_from_status(status) }.map_err(|e| e.to_string())?;
    let mut content = vec![0u8; total];
    let mut offsets = vec![0usize; count];
    if count > 0 {
        // SAFETY: `content` has room for the `total` bytes the tensor holds and `offsets` for
        // its `count` elements, as the two lengths passed say; ONNX Runtime writes within them.
        let status = unsafe {
            (api.GetStringTensorContent)(
                pointer,
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            )
        };
        // SAFETY: the status comes from the C API call just made.
        unsafe { ort::Error::result_from_status(status) }.map_err(|e| e.to_string())?;
    }
    let mut elements = Vec::with_capacity(count);
    for (index, &start) in offsets.iter().enumerate() {
        let end = offsets.get(index + 1).copied().unwrap_or(total);
        let element = content
            .get(start..end)
            .ok_or("ONNX Runtime gave string offsets out of order")?;
        elements.push(element);
    }
    Tensor::from_byte_strings(shape, &elements).map_err(|e| e.to_string())
}
