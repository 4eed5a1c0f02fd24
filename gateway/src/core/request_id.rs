//! The ids the gateway gives requests that bring none: unique, and unforgeable. Each carries a
//! keyed MAC (HMAC-SHA-256, truncated to 96 bits) of its own serial part, so that feedback can
//! tell an id this gateway (or one sharing its key through the registry) issued from one made
//! up, without remembering anything.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::digest::KeyInit;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::decode_hex;

/// A MAC key: the block size of SHA-256, the longest key HMAC uses as it is.
pub type IdKey = [u8; 64];

const PREFIX: &str = "sy-";
/// Bytes of the MAC kept in the id.
const TAG_BYTES: usize = 12;

pub struct RequestIds {
    /// Keyed once; each id clones it.
    keyed: Hmac<Sha256>,
    /// Random per process, so that two gateways sharing a key never issue the same id.
    process: u32,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new(key: &IdKey) -> RequestIds {
        RequestIds {
            keyed: <Hmac<Sha256> as KeyInit>::new(GenericArray::from_slice(key)),
            process: fastrand::u32(..),
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh id: `sy-<process>-<serial>-<mac>`, all hex. Every request without an id of its
    /// own takes one, so it is written into one buffer of its final size.
    pub fn issue(&self) -> String {
        let serial = self.counter.fetch_add(1, Ordering::Relaxed);
        // "sy-" + 8 + "-" + up to 16 + "-" + the tag's hex.
        let mut id = String::with_capacity(PREFIX.len() + 8 + 1 + 16 + 1 + TAG_BYTES * 2);
        id.push_str(PREFIX);
        // Writing into a String cannot fail.
        let _ = write!(id, "{:08x}-{serial:x}", self.process);
        let tag = self.tag(&id);
        id.push('-');
        let mut tag_hex = [0u8; TAG_BYTES * 2];
        // Cannot fail: the buffer is twice the tag's length.
        let _ = hex::encode_to_slice(tag, &mut tag_hex);
        id.extend(tag_hex.iter().copied().map(char::from));
        id
    }

    /// Whether the id looks like one the gateway issues; such an id must also carry a valid
    /// MAC, others are the client's own.
    pub fn is_gateway_id(id: &str) -> bool {
        id.starts_with(PREFIX)
    }

    /// Whether a gateway-style id carries the MAC of this key.
    pub fn verify(&self, id: &str) -> bool {
        let Some((body, tag)) = id.rsplit_once('-') else {
            return false;
        };
        if tag.len() != TAG_BYTES * 2 || !body.starts_with(PREFIX) {
            return false;
        }
        let Some(presented) = decode_hex::<TAG_BYTES>(tag) else {
            return false;
        };
        let mut mac = self.keyed.clone();
        mac.update(body.as_bytes());
        mac.verify_truncated_left(&presented).is_ok()
    }

    fn tag(&self, body: &str) -> [u8; TAG_BYTES] {
        let mut mac = self.keyed.clone();
        mac.update(body.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }
}

/// A random key, for a gateway without one configured or shared: from the system's random
/// source, or, where that cannot be read, from `fastrand` (seeded from it at start).
pub fn random_key() -> IdKey {
    crate::auth::random_bytes::<64>().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read /dev/urandom; the key comes from fastrand");
        let mut key = [0u8; 64];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_verify_and_forgeries_do_not() {
        let ids = RequestIds::new(&[7; 64]);
        let first = ids.issue();
        let second = ids.issue();
        assert_ne!(first, second);
        assert!(ids.verify(&first) && ids.verify(&second));
        assert!(RequestIds::is_gateway_id(&first));
        // Another key, a changed serial, a truncated tag: all refused.
        assert!(!RequestIds::new(&[8; 64]).verify(&first));
        let (body, tag) = first.rsplit_once('-').unwrap();
        let bumped = body.replace("-0", "-1");
        assert!(!ids.verify(&format!("{bumped}-{tag}")));
        assert!(!ids.verify(&first[..first.len() - 2]));
        assert!(!ids.verify("sy-00000000-1-zz"));
        assert!(!RequestIds::is_gateway_id("req-42"));
    }

    #[test]
    fn ids_are_written_as_format_would() {
        let ids = RequestIds::new(&[7; 64]);
        ids.counter.store(0xffff_fffe, Ordering::Relaxed);
        for serial in [0xffff_fffe_u64, 0xffff_ffff, 0x1_0000_0000] {
            let id = ids.issue();
            let body = format!("{PREFIX}{:08x}-{serial:x}", ids.process);
            let tag = hex::encode(ids.tag(&body));
            assert_eq!(id, format!("{body}-{tag}"));
        }
        ids.counter.store(0, Ordering::Relaxed);
        assert!(ids.issue().contains("-0-"), "serial 0 is one digit");
        ids.counter.store(u64::MAX, Ordering::Relaxed);
        let last = ids.issue();
        assert!(last.contains("-ffffffffffffffff-") && ids.verify(&last));
    }
}
