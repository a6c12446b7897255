//! The memory the injected container is given: its request and limit.
//!
//! Owns the default formula, in one place for the webhook: request =
//! cache capacity + overhead, limit = 1.5 x request, each in MiB rounded up.
//! The chart's `ringside.memory` helper (used by the `ringside.sidecar`
//! template for manual injection) computes the same numbers;
//! tests/inject_webhook.rs renders both for the same values and compares
//! them. Explicit values (flags `--memory-request` / `--memory-limit`,
//! annotations `ringside.io/memory-request` / `ringside.io/memory-limit`)
//! replace either number as given.

const MIB: u64 = 1 << 20;

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

/// The default request and limit in MiB for a cache of `capacity` bytes:
/// request = capacity + overhead, limit = 1.5 x request, rounded up.
pub fn default_mib(capacity: u64, overhead: u64) -> (u64, u64) {
    let request = capacity.saturating_add(overhead).div_ceil(MIB);
    let limit = request.saturating_mul(3).div_ceil(2);
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
        overhead: u64,
        request: Option<Quantity>,
        limit: Option<Quantity>,
    ) -> Result<Memory, String> {
        let (default_request, default_limit) = default_mib(capacity, overhead);
        let memory = Memory {
            request: request.unwrap_or_else(|| Quantity::mebibytes(default_request)),
            limit: limit.unwrap_or_else(|| Quantity::mebibytes(default_limit)),
        };
        if memory.request.bytes > memory.limit.bytes {
            return Err(format!(
                "memory request {} is above the memory limit {}; without an explicit value \
                 the request is the cache capacity + overhead and the limit 1.5 x the request",
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
        assert_eq!(default_mib(256 * MIB, 64 * MIB), (320, 480));
        assert_eq!(default_mib(128 * MIB, 64 * MIB), (192, 288));
        // Rounded up: a fraction of a MiB counts as one, and 1.5 x 321 = 481.5.
        assert_eq!(default_mib(256 * MIB + 1, 64 * MIB), (321, 482));
    }

    #[test]
    fn explicit_values_win_and_must_be_ordered() {
        let q = |s: &str| Quantity::parse(s);
        let texts = |m: Memory| (m.request.text, m.limit.text);
        let m = Memory::resolve(256 * MIB, 64 * MIB, q("400Mi"), None).unwrap();
        assert_eq!(texts(m), ("400Mi".into(), "480Mi".into()));
        let m = Memory::resolve(256 * MIB, 64 * MIB, None, q("1Gi")).unwrap();
        assert_eq!(texts(m), ("320Mi".into(), "1Gi".into()));
        let m = Memory::resolve(256 * MIB, 64 * MIB, q("1G"), q("1.5Gi")).unwrap();
        assert_eq!(texts(m), ("1G".into(), "1.5Gi".into()));
        let e = Memory::resolve(256 * MIB, 64 * MIB, q("900Mi"), None).unwrap_err();
        assert!(e.contains("900Mi") && e.contains("480Mi"), "{e}");
        let e = Memory::resolve(256 * MIB, 64 * MIB, None, q("256Mi")).unwrap_err();
        assert!(e.contains("320Mi") && e.contains("256Mi"), "{e}");
    }
}
