//! Triton's system shared-memory extension: a client registers a region of a POSIX
//! shared-memory object (by its key, an offset and a size), then names it in requests, whose
//! inputs are read from it and whose outputs are written into it instead of travelling in the
//! body. A region is a registered, bounded, checked source and sink of tensor bytes: the fronts
//! read it as they read a body.
//!
//! The object is read and written with `pread` and `pwrite` on its descriptor, never mapped:
//! a region that its owner truncates under the gateway then gives a short read (a clear error
//! for that request), where a mapping would kill the process with SIGBUS. Offset plus size is
//! checked against the object's real size every time a region is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::error::{ErrorKind, GatewayError, quoted};

/// The longest region name and key.
const MAX_NAME_BYTES: usize = 255;

/// The bounds of the registrations (`shared_memory` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_regions: usize,
    /// The sum of the registered regions' sizes.
    pub max_total_bytes: u64,
}

/// One registered region.
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
    file: File,
    /// Requests holding it now.
    users: AtomicUsize,
}

/// What a status call reports of a region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// The registered regions of the process.
pub struct SharedMemory {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
    limits: Limits,
}

/// A region held by a request: it cannot be unregistered while held.
pub struct RegionUse(Arc<Region>);

impl std::fmt::Debug for RegionUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegionUse").field(&self.0.name).finish()
    }
}

impl Drop for RegionUse {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::Relaxed);
    }
}

fn not_found(name: &str) -> GatewayError {
    GatewayError::not_found(format!(
        "Unable to find system shared memory region: '{}'",
        quoted(name)
    ))
}

impl SharedMemory {
    pub fn new(limits: Limits) -> SharedMemory {
        SharedMemory {
            regions: Mutex::new(BTreeMap::new()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `byte_size` bytes at `offset` of the shared-memory object `key` as `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), GatewayError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(GatewayError::invalid(format!(
                "a region's name has 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        // A POSIX shared-memory name: one leading slash, no other, no NUL.
        let bare = key.strip_prefix('/').unwrap_or(key);
        if bare.is_empty()
            || key.len() > MAX_NAME_BYTES
            || bare.contains(['/', '\0'])
            || bare == "."
            || bare == ".."
        {
            return Err(GatewayError::invalid(format!(
                "'{}' is not the key of a POSIX shared-memory object (/name, without other '/')",
                quoted(key)
            )));
        }
        if byte_size == 0 {
            return Err(GatewayError::invalid(format!(
                "region '{}': byte_size must be more than 0",
                quoted(name)
            )));
        }
        let end = offset.checked_add(byte_size).ok_or_else(|| {
            GatewayError::invalid(format!(
                "region '{}': offset + byte_size overflow",
                quoted(name)
            ))
        })?;
        let file = open_object(key)?;
        let size = object_size(&file, key)?;
        if end > size {
            return Err(GatewayError::invalid(format!(
                "region '{}': offset {offset} + byte_size {byte_size} runs past the end of the \
                 shared-memory object '{}' ({size} bytes)",
                quoted(name),
                quoted(key)
            )));
        }
        let mut regions = self.lock();
        if regions.contains_key(name) {
            return Err(GatewayError::new(
                ErrorKind::Conflict,
                format!(
                    "shared memory region '{}' already in manager; unregister it first",
                    quoted(name)
                ),
            ));
        }
        if regions.len() >= self.limits.max_regions {
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "{} regions are registered, the limit (shared_memory.max_regions); \
                     unregister one first",
                    regions.len()
                ),
            ));
        }
        let total: u64 = regions.values().map(|region| region.byte_size).sum();
        if total.saturating_add(byte_size) > self.limits.max_total_bytes {
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "registering {byte_size} more bytes would pass the {} registered in all \
                     (shared_memory.max_total_size; {total} are)",
                    self.limits.max_total_bytes
                ),
            ));
        }
        regions.insert(
            name.to_owned(),
            Arc::new(Region {
                name: name.to_owned(),
                key: key.to_owned(),
                offset,
                byte_size,
                file,
                users: AtomicUsize::new(0),
            }),
        );
        Ok(())
    }

    /// Every region, or the one named.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, GatewayError> {
        let regions = self.lock();
        let status = |region: &Region| RegionStatus {
            name: region.name.clone(),
            key: region.key.clone(),
            offset: region.offset,
            byte_size: region.byte_size,
        };
        match name {
            None => Ok(regions.values().map(|region| status(region)).collect()),
            Some(name) => regions
                .get(name)
                .map(|region| vec![status(region)])
                .ok_or_else(|| not_found(name)),
        }
    }

    /// Unregisters the region named (one that is not registered is no error, as in Triton), or
    /// every one; refused for a region a request holds.
    pub fn unregister(&self, name: Option<&str>) -> Result<(), GatewayError> {
        let mut regions = self.lock();
        let chosen: Vec<String> = match name {
            Some(name) => regions
                .contains_key(name)
                .then(|| name.to_owned())
                .into_iter()
                .collect(),
            None => regions.keys().cloned().collect(),
        };
        if let Some(busy) = chosen
            .iter()
            .filter_map(|name| regions.get(name))
            .find(|region| region.users.load(Ordering::Relaxed) > 0)
        {
            return Err(GatewayError::new(
                ErrorKind::Conflict,
                format!(
                    "shared memory region '{}' is in use by {} request(s); unregister it once \
                     they are answered",
                    quoted(&busy.name),
                    busy.users.load(Ordering::Relaxed)
                ),
            ));
        }
        for name in chosen {
            regions.remove(&name);
        }
        Ok(())
    }

    /// Takes a region for a request, until the returned use is dropped.
    pub fn take(&self, name: &str) -> Result<RegionUse, GatewayError> {
        let regions = self.lock();
        let region = regions.get(name).ok_or_else(|| not_found(name))?;
        region.users.fetch_add(1, Ordering::Relaxed);
        Ok(RegionUse(region.clone()))
    }
}

impl RegionUse {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Where `byte_size` bytes at `offset` of the region lie in its object, checked against the
    /// registered region and the object's size now.
    fn span(&self, offset: u64, byte_size: u64) -> Result<u64, GatewayError> {
        let region = &self.0;
        let end = offset.checked_add(byte_size);
        if end.is_none_or(|end| end > region.byte_size) {
            return Err(GatewayError::invalid(format!(
                "offset {offset} + byte_size {byte_size} runs past shared memory region '{}' \
                 ({} bytes)",
                quoted(&region.name),
                region.byte_size
            )));
        }
        let at = region.offset + offset;
        let size = object_size(&region.file, &region.key)?;
        if at + byte_size > size {
            return Err(GatewayError::invalid(format!(
                "the shared-memory object '{}' of region '{}' holds {size} bytes now, fewer than \
                 the region's: it was truncated",
                quoted(&region.key),
                quoted(&region.name)
            )));
        }
        Ok(at)
    }

    /// Reads `byte_size` bytes at `offset` of the region.
    pub fn read(&self, offset: u64, byte_size: u64) -> Result<Bytes, GatewayError> {
        let at = self.span(offset, byte_size)?;
        let length = usize::try_from(byte_size)
            .map_err(|_| GatewayError::invalid("shared_memory_byte_size is too large"))?;
        let mut buffer = vec![0u8; length];
        self.0.file.read_exact_at(&mut buffer, at).map_err(|e| {
            GatewayError::invalid(format!(
                "cannot read shared memory region '{}' ({e}): its object was truncated or removed",
                quoted(&self.0.name)
            ))
        })?;
        Ok(Bytes::from(buffer))
    }

    /// Writes `data` at `offset` of the region, which must have room for it within
    /// `byte_size`.
    pub fn write(&self, offset: u64, byte_size: u64, data: &[u8]) -> Result<(), GatewayError> {
        let length = data.len() as u64;
        if length > byte_size {
            return Err(GatewayError::invalid(format!(
                "the output takes {length} bytes, more than the {byte_size} of its place in \
                 shared memory region '{}'",
                quoted(&self.0.name)
            )));
        }
        let at = self.span(offset, length)?;
        self.0.file.write_all_at(data, at).map_err(|e| {
            GatewayError::internal(format!(
                "cannot write shared memory region '{}': {e}",
                quoted(&self.0.name)
            ))
        })
    }
}

/// An input's or output's shared-memory parameters, as either front reads them:
/// `shared_memory_region`, `shared_memory_offset` (default 0) and `shared_memory_byte_size`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    pub region: Option<String>,
    pub offset: Option<i64>,
    pub byte_size: Option<i64>,
}

impl Reference {
    /// Whether the tensor names a region at all; offsets or sizes alone are an error.
    pub fn names_a_region(&self, tensor: &str) -> Result<bool, GatewayError> {
        match (
            &self.region,
            self.offset.is_some() || self.byte_size.is_some(),
        ) {
            (Some(_), _) => Ok(true),
            (None, false) => Ok(false),
            (None, true) => Err(GatewayError::invalid(format!(
                "'{}': shared_memory_offset or shared_memory_byte_size without                  shared_memory_region",
                quoted(tensor)
            ))),
        }
    }

    fn resolve(&self, tensor: &str) -> Result<(&str, u64, u64), GatewayError> {
        let region = self.region.as_deref().unwrap_or_default();
        let number = |value: Option<i64>, what: &str, default: Option<u64>| match value {
            None => default.ok_or_else(|| {
                GatewayError::invalid(format!("'{}': {what} is required", quoted(tensor)))
            }),
            Some(n) => u64::try_from(n).map_err(|_| {
                GatewayError::invalid(format!("'{}': {what} is negative", quoted(tensor)))
            }),
        };
        let offset = number(self.offset, "shared_memory_offset", Some(0))?;
        let byte_size = number(self.byte_size, "shared_memory_byte_size", None)?;
        Ok((region, offset, byte_size))
    }
}

/// Where one output goes: a region held until the answer is written, and its place there.
#[derive(Debug)]
pub struct Placement {
    pub region: RegionUse,
    pub offset: u64,
    pub byte_size: u64,
}

impl Placement {
    /// Writes an output's bytes (BYTES in the protocol's serialized form, as clients read
    /// them) into its place.
    pub fn write(&self, data: &[u8]) -> Result<(), GatewayError> {
        self.region.write(self.offset, self.byte_size, data)
    }
}

/// A front's way to the regions: the registry, and how many bytes one request may read from
/// them (what its body could carry).
pub struct Access<'a> {
    pub memory: &'a SharedMemory,
    pub max_input_bytes: usize,
}

/// The bytes of an input that names a region, read now.
pub fn read_input(
    access: Option<&Access<'_>>,
    input: &str,
    reference: &Reference,
) -> Result<Bytes, GatewayError> {
    let access = access.ok_or_else(unavailable)?;
    let (memory, max_bytes) = (access.memory, access.max_input_bytes);
    let (region, offset, byte_size) = reference.resolve(input)?;
    if byte_size > max_bytes as u64 {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "input '{}': {byte_size} bytes of shared memory, more than a request may carry                  ({max_bytes})",
                quoted(input)
            ),
        ));
    }
    memory.take(region)?.read(offset, byte_size)
}

/// The place an output that names a region goes to, held from now on.
pub fn place_output(
    access: Option<&Access<'_>>,
    output: &str,
    reference: &Reference,
) -> Result<Placement, GatewayError> {
    let memory = access.ok_or_else(unavailable)?.memory;
    let (region, offset, byte_size) = reference.resolve(output)?;
    let region = memory.take(region)?;
    // The room is checked now, so that a request that cannot be answered is refused before it
    // runs; the size of what the model returns is checked when it is written.
    region.span(offset, byte_size)?;
    Ok(Placement {
        region,
        offset,
        byte_size,
    })
}

fn unavailable() -> GatewayError {
    GatewayError::invalid("shared memory is not available on this path")
}

fn open_object(key: &str) -> Result<File, GatewayError> {
    let fd = rustix::shm::open(key, rustix::shm::OFlags::RDWR, rustix::fs::Mode::empty()).map_err(
        |e| {
            GatewayError::invalid(format!(
                "Unable to open shared memory region: '{}' ({e})",
                quoted(key)
            ))
        },
    )?;
    let file = File::from(fd);
    let metadata = file
        .metadata()
        .map_err(|e| GatewayError::invalid(format!("cannot inspect '{}': {e}", quoted(key))))?;
    if !metadata.is_file() {
        return Err(GatewayError::invalid(format!(
            "'{}' is not a shared-memory object",
            quoted(key)
        )));
    }
    Ok(file)
}

fn object_size(file: &File, key: &str) -> Result<u64, GatewayError> {
    file.metadata().map(|m| m.len()).map_err(|e| {
        GatewayError::invalid(format!(
            "cannot read the size of shared-memory object '{}': {e}",
            quoted(key)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A POSIX shared-memory object of `size` bytes, removed when dropped.
    struct Object(String);

    impl Object {
        fn new(tag: &str, size: u64) -> Object {
            let key = format!("/sy-test-{tag}-{}", std::process::id());
            let fd = rustix::shm::open(
                key.as_str(),
                rustix::shm::OFlags::CREATE
                    | rustix::shm::OFlags::RDWR
                    | rustix::shm::OFlags::TRUNC,
                rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            )
            .expect("shm_open");
            File::from(fd).set_len(size).expect("ftruncate");
            Object(key)
        }

        fn truncate(&self, size: u64) {
            let fd = rustix::shm::open(
                self.0.as_str(),
                rustix::shm::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            )
            .expect("shm_open");
            File::from(fd).set_len(size).expect("ftruncate");
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = rustix::shm::unlink(self.0.as_str());
        }
    }

    fn limits() -> Limits {
        Limits {
            max_regions: 2,
            max_total_bytes: 1024,
        }
    }

    #[test]
    fn regions_are_read_and_written_within_their_bounds() {
        let object = Object::new("rw", 64);
        let memory = SharedMemory::new(limits());
        memory.register("r", &object.0, 16, 32).expect("registers");
        let region = memory.take("r").expect("takes");
        region.write(4, 8, &[1, 2, 3, 4]).expect("writes");
        assert_eq!(&region.read(4, 4).expect("reads")[..], [1, 2, 3, 4]);
        for (offset, size) in [(30, 4), (0, 33), (u64::MAX, 2)] {
            let error = region.read(offset, size).expect_err("past the region");
            assert!(error.message.contains("runs past"), "{error:?}");
        }
        let error = region.write(0, 2, &[1, 2, 3]).expect_err("no room");
        assert!(error.message.contains("more than the 2"), "{error:?}");
        // Truncated under the gateway: a clear error, no SIGBUS.
        object.truncate(20);
        let error = region.read(0, 8).expect_err("truncated");
        assert!(error.message.contains("truncated"), "{error:?}");
    }

    #[test]
    fn registrations_are_bounded_and_checked() {
        let object = Object::new("bounds", 2048);
        let memory = SharedMemory::new(limits());
        let refusals = [
            ("a", "/no-such-object-here", 0, 8, "Unable to open"),
            ("a", "../etc/passwd", 0, 8, "not the key"),
            ("a", object.0.as_str(), 2000, 100, "runs past the end"),
            ("", object.0.as_str(), 0, 8, "name"),
            ("a", object.0.as_str(), 0, 0, "more than 0"),
        ];
        for (name, key, offset, size, words) in refusals {
            let error = memory.register(name, key, offset, size).expect_err(words);
            assert!(error.message.contains(words), "{words}: {error:?}");
        }
        memory.register("a", &object.0, 0, 500).expect("a");
        let error = memory.register("a", &object.0, 0, 8).expect_err("twice");
        assert_eq!(error.kind, ErrorKind::Conflict);
        let error = memory.register("b", &object.0, 0, 600).expect_err("total");
        assert!(error.message.contains("max_total_size"), "{error:?}");
        memory.register("b", &object.0, 0, 8).expect("b");
        let error = memory.register("c", &object.0, 0, 8).expect_err("count");
        assert!(error.message.contains("max_regions"), "{error:?}");
        assert_eq!(memory.status(None).expect("all").len(), 2);
        assert_eq!(
            memory.status(Some("z")).expect_err("unknown").kind,
            ErrorKind::NotFound
        );
        // In use: refused until the request lets go.
        let held = memory.take("a").expect("takes");
        assert_eq!(
            memory.unregister(Some("a")).expect_err("busy").kind,
            ErrorKind::Conflict
        );
        assert_eq!(
            memory.unregister(None).expect_err("busy").kind,
            ErrorKind::Conflict
        );
        drop(held);
        memory.unregister(Some("a")).expect("unregisters");
        memory.unregister(Some("a")).expect("again: no error");
        memory.unregister(None).expect("all");
        assert!(memory.status(None).expect("none").is_empty());
    }
}
