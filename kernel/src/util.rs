//! Small helpers shared by the pure modules.

/// Parses a number in decimal or `0x` hex, with an optional `K`/`M`/`G`
/// suffix (powers of 1024), as the scenario language defines.
pub fn parse_number(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        if hex.is_empty() {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok()?
    };
    v.checked_mul(mult)
}

/// Human-readable byte size, e.g. `512 MiB`.
pub struct Bytes(pub u64);

impl core::fmt::Display for Bytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let v = self.0;
        if v >= 1 << 30 && v.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", v >> 30)
        } else if v >= 1 << 20 && v.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", v >> 20)
        } else if v >= 1 << 10 && v.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", v >> 10)
        } else {
            write!(f, "{v} B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("42"), Some(42));
        assert_eq!(parse_number("0x1000"), Some(4096));
        assert_eq!(parse_number("4K"), Some(4096));
        assert_eq!(parse_number("2M"), Some(2 << 20));
        assert_eq!(parse_number("1G"), Some(1 << 30));
        assert_eq!(parse_number("0x10K"), Some(16 << 10));
        for bad in ["", "K", "0x", "12q", "-1", "99999999999999999999", "0xffffffffffffffffK", "1.5"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(Bytes(1 << 30).to_string(), "1 GiB");
        assert_eq!(Bytes(3 << 20).to_string(), "3 MiB");
        assert_eq!(Bytes(100).to_string(), "100 B");
    }
}
