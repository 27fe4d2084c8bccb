//! Quantities people type: sizes like `64MiB` and rates like `20MB/s`.

/// A size like `64MiB`, `4GiB`, `500KB`, `1.5GB` or `4096`, in bytes (KB,
/// MB, GB: powers of 1000; KiB, MiB, GiB: of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s.trim(), "size", "64MiB", "")
}

/// A rate like `20MB/s`, `500KB/s`, `1.5GB/s`, `64MiB/s` or `0`, in bytes
/// per second (units as [`parse_size`]).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    parse_bytes(
        t.strip_suffix("/s").unwrap_or(t),
        "rate",
        "20MB/s",
        " per second",
    )
}

/// `s` as a number and a unit; `what` names the quantity in errors.
fn parse_bytes(s: &str, what: &str, example: &str, per: &str) -> Result<u64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{what} {s:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB{per})"
            ))
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{what} {s:?}: not a number and a unit, like {example}"))?;
    let bytes = n * scale as f64;
    if !(0.0..=1e15).contains(&bytes) {
        return Err(format!("{what} {s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_read_their_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_rate("20MB/s"), Ok(20_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        let e = parse_size("12 parsecs").unwrap_err();
        assert!(
            e.starts_with("size \"12 parsecs\"") && !e.contains("per second"),
            "{e}"
        );
        assert!(parse_rate("MB/s").unwrap_err().contains("like 20MB/s"));
    }
}
