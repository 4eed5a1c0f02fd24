//! What a device has in use, so that the memory a model takes can be measured: the difference
//! before and after it loads and runs once.
//!
//! On the CPU the figure is this process's resident set; on a CUDA device it is this process's
//! usage as NVML reports it (NVML is loaded at run time, so a machine without an NVIDIA driver
//! simply has no figure).

use crate::Device;

/// Bytes this process holds on `device`, if it can be known here.
pub fn in_use(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => resident_set_bytes(),
        Device::Cuda(index) => gpu_process_bytes(index),
    }
}

/// The resident set of this process, from `/proc/self/status` (Linux).
pub fn resident_set_bytes() -> Option<u64> {
    proc_field_bytes(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// The host's physical memory, from `/proc/meminfo` (Linux).
pub fn host_memory_bytes() -> Option<u64> {
    proc_field_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// A "Field:   123 kB" line of a /proc file, in bytes.
fn proc_field_bytes(text: &str, field: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(feature = "nvml")]
mod nvml {
    use std::sync::OnceLock;

    use nvml_wrapper::Nvml;
    use nvml_wrapper::enums::device::UsedGpuMemory;

    pub(super) fn library() -> Option<&'static Nvml> {
        static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
        NVML.get_or_init(|| match Nvml::init() {
            Ok(nvml) => Some(nvml),
            Err(error) => {
                tracing::debug!(%error, "NVML not available: no GPU memory figures");
                None
            }
        })
        .as_ref()
    }

    pub(super) fn process_bytes(index: u32) -> Option<u64> {
        let device = library()?.device_by_index(index).ok()?;
        let pid = std::process::id();
        let processes = device.running_compute_processes().ok()?;
        // Not listed: no context on the device yet, or a PID namespace (a container) that NVML
        // does not see through; either way, no figure.
        processes
            .iter()
            .filter(|process| process.pid == pid)
            .map(|process| match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            })
            .reduce(|a, b| Some(a? + b?))
            .flatten()
    }

    pub(super) fn totals(index: u32) -> Option<(u64, u64)> {
        let info = library()?.device_by_index(index).ok()?.memory_info().ok()?;
        Some((info.total, info.used))
    }
}

/// This process's memory on a CUDA device, from NVML.
pub fn gpu_process_bytes(index: u32) -> Option<u64> {
    #[cfg(feature = "nvml")]
    {
        nvml::process_bytes(index)
    }
    #[cfg(not(feature = "nvml"))]
    {
        let _ = index;
        None
    }
}

/// A CUDA device's total and used memory (all processes), from NVML.
pub fn gpu_totals(index: u32) -> Option<(u64, u64)> {
    #[cfg(feature = "nvml")]
    {
        nvml::totals(index)
    }
    #[cfg(not(feature = "nvml"))]
    {
        let _ = index;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resident_set() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(proc_field_bytes(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(proc_field_bytes("Name:\tx\n", "VmRSS:"), None);
        assert!(host_memory_bytes().expect("Linux has /proc/meminfo") > 0);
        let before = resident_set_bytes().expect("Linux has /proc/self/status");
        // Touch 64 MiB so that it is resident.
        let block = vec![1u8; 64 << 20];
        let after = resident_set_bytes().expect("rss");
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        assert_eq!(
            block.iter().map(|&b| usize::from(b)).sum::<usize>(),
            64 << 20
        );
    }
}
