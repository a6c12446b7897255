//! The memory the injected container is given: its request and limit.
//!
//! Owns the default formula, in one place for the webhook, derived from the
//! footprint README's Memory section states (measured by `benches/memory.sh`
//! and checked by tests/memory.rs): a node holds about 1.15 x its cache
//! capacity, 40 MiB for the process itself, and 40 KiB per connection the
//! app keeps open. So, each in MiB rounded up:
//!
//! * request = 1.15 x capacity + 40 MiB + 40 KiB x connections (what the node
//!   holds once its cache is full and the app's connections are open);
//! * limit = request + headroom (responses being written to slow clients and
//!   fills in flight: up to `max_object_size` each, which no formula bounds).
//!
//! `connections` and `headroom` are the flags `--memory-connections` and
//! `--memory-headroom` (chart: `sidecar.memoryConnections`,
//! `sidecar.memoryHeadroom`). The chart's `ringside.memory` helper (used by
//! the `ringside.sidecar` template for manual injection) computes the same
//! numbers; tests/inject_webhook.rs renders both for the same values and
//! checks them against this formula. Explicit values (flags
//! `--memory-request` / `--memory-limit`, annotations
//! `ringside.io/memory-request` / `ringside.io/memory-limit`) replace either
//! number as given.

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// A cache capacity, the formula's input: a ringside size (`512MiB`) or a
/// Kubernetes quantity (`512Mi`, `1Gi`), in bytes.
pub fn parse_capacity(v: &str) -> Option<u64> {
    let v = v.trim();
    for (k8s, ours) in [("Ki", "KiB"), ("Mi", "MiB"), ("Gi", "GiB")] {
        if let Some(num) = v.strip_suffix(k8s) {
            return crate::config::parse_size(&format!("{num}{ours}"));
        }
    }
    crate::config::parse_size(v)
}

/// Resident memory per byte of cache capacity, as a percentage (1.15 x).
pub const FOOTPRINT_PERCENT: u64 = 115;
/// The process itself: runtime, threads, allocator, metrics, pools.
pub const PROCESS_BYTES: u64 = 40 * MIB;
/// One connection the app keeps open (an idle keep-alive one).
pub const CONNECTION_BYTES: u64 = 40 * KIB;

/// A Kubernetes memory quantity as written (`900Mi`, `1.5Gi`, `2G`) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    pub text: String,
    pub bytes: u64,
}

impl Quantity {
    /// `text` as a memory quantity; None when it is not one.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        Some(Quantity {
            bytes: parse_quantity(text)?,
            text: text.to_string(),
        })
    }

    fn mebibytes(mi: u64) -> Quantity {
        Quantity {
            text: format!("{mi}Mi"),
            bytes: mi.saturating_mul(MIB),
        }
    }
}

/// What a quantity must look like, for error messages.
pub const QUANTITY_HINT: &str =
    "a Kubernetes memory quantity such as \"512Mi\", \"1.5Gi\", \"2G\" or a byte count";

/// A Kubernetes memory quantity in bytes: a decimal number with an optional
/// suffix, binary (Ki, Mi, Gi, Ti) or decimal (k, M, G, T).
pub fn parse_quantity(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => MIB as f64,
        "Gi" => (MIB << 10) as f64,
        "Ti" => (MIB << 20) as f64,
        _ => return None,
    };
    let bytes = number * mult;
    (bytes.is_finite() && (0.0..1.8e19).contains(&bytes)).then_some(bytes as u64)
}

/// What the default formula depends on besides the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Connections the app keeps open to the sidecar.
    pub connections: u64,
    /// Bytes between the request and the limit.
    pub headroom: u64,
}

impl Default for Sizing {
    fn default() -> Self {
        Sizing {
            connections: 256,
            headroom: 128 * MIB,
        }
    }
}

/// The default request and limit in MiB for a cache of `capacity` bytes:
/// request = 1.15 x capacity + 40 MiB + 40 KiB x connections, limit =
/// request + headroom, each rounded up to a whole MiB.
pub fn default_mib(capacity: u64, sizing: Sizing) -> (u64, u64) {
    let cache = capacity.saturating_mul(FOOTPRINT_PERCENT).div_ceil(100);
    let request = cache
        .saturating_add(PROCESS_BYTES)
        .saturating_add(sizing.connections.saturating_mul(CONNECTION_BYTES))
        .div_ceil(MIB);
    let limit = request.saturating_add(sizing.headroom.div_ceil(MIB));
    (request, limit)
}

/// The container's memory request and limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    pub request: Quantity,
    pub limit: Quantity,
}

impl Memory {
    /// Explicit values where given, the default formula for the rest; an
    /// error when the request ends up above the limit.
    pub fn resolve(
        capacity: u64,
        sizing: Sizing,
        request: Option<Quantity>,
        limit: Option<Quantity>,
    ) -> Result<Memory, String> {
        let (default_request, default_limit) = default_mib(capacity, sizing);
        let memory = Memory {
            request: request.unwrap_or_else(|| Quantity::mebibytes(default_request)),
            limit: limit.unwrap_or_else(|| Quantity::mebibytes(default_limit)),
        };
        if memory.request.bytes > memory.limit.bytes {
            return Err(format!(
                "memory request {} is above the memory limit {}; without an explicit value \
                 the request is 1.15 x the cache capacity + 40 MiB + 40 KiB per connection and \
                 the limit the request + headroom",
                memory.request.text, memory.limit.text
            ));
        }
        Ok(memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities() {
        assert_eq!(parse_capacity("512Mi"), Some(512 * MIB));
        assert_eq!(parse_capacity("512MiB"), Some(512 * MIB));
        assert_eq!(parse_capacity("1Gi"), Some(1024 * MIB));
        assert_eq!(parse_capacity("lots"), None);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi"), Some(512 * MIB));
        assert_eq!(parse_quantity("1.5Gi"), Some(1536 * MIB));
        assert_eq!(parse_quantity("2G"), Some(2_000_000_000));
        assert_eq!(parse_quantity("64M"), Some(64_000_000));
        assert_eq!(parse_quantity("1000"), Some(1000));
        for bad in ["", "lots", "5MiB", "-1Mi", "1e3"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_default_formula() {
        let d = Sizing::default();
        // 1.15 x 256 MiB = 294.4 MiB, + 40 MiB + 256 x 40 KiB (10 MiB) = 344.4.
        assert_eq!(default_mib(256 * MIB, d), (345, 473));
        assert_eq!(default_mib(1024 * MIB, d), (1228, 1356));
        let none = Sizing {
            connections: 0,
            headroom: 0,
        };
        // 1.15 x 100 MiB is exactly 115 MiB; one byte more is one MiB more.
        assert_eq!(default_mib(100 * MIB, none), (155, 155));
        assert_eq!(default_mib(100 * MIB + 1, none), (156, 156));
        let more = Sizing {
            connections: 1000,
            headroom: MIB + 1,
        };
        // 1000 x 40 KiB = 39.06 MiB: 115 + 40 + 39.06 -> 195; headroom 2 MiB.
        assert_eq!(default_mib(100 * MIB, more), (195, 197));
    }

    #[test]
    fn explicit_values_win_and_must_be_ordered() {
        let q = |s: &str| Quantity::parse(s);
        let texts = |m: Memory| (m.request.text, m.limit.text);
        let d = Sizing::default();
        let m = Memory::resolve(256 * MIB, d, q("400Mi"), None).unwrap();
        assert_eq!(texts(m), ("400Mi".into(), "473Mi".into()));
        let m = Memory::resolve(256 * MIB, d, None, q("1Gi")).unwrap();
        assert_eq!(texts(m), ("345Mi".into(), "1Gi".into()));
        let m = Memory::resolve(256 * MIB, d, q("1G"), q("1.5Gi")).unwrap();
        assert_eq!(texts(m), ("1G".into(), "1.5Gi".into()));
        let e = Memory::resolve(256 * MIB, d, q("900Mi"), None).unwrap_err();
        assert!(e.contains("900Mi") && e.contains("473Mi"), "{e}");
        let e = Memory::resolve(256 * MIB, d, None, q("256Mi")).unwrap_err();
        assert!(e.contains("345Mi") && e.contains("256Mi"), "{e}");
    }
}
