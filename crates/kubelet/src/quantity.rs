//! Kubernetes resource quantities (`250m`, `1.5Gi`, `2e3`) parsed exactly, for simulated
//! capacity flags and simulated usage annotations.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid quantity {0:?} (expected e.g. 250m, 4, 1.5Gi, 2e3)")]
pub struct QuantityError(pub String);

/// A parsed quantity: `mantissa * 10^exp10 * 1024^exp1024`, kept exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    mantissa: i128,
    exp10: i32,
    exp1024: u32,
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let err = || QuantityError(s.to_string());
    let t = s.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err());
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let mut mantissa: i128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(d - b'0')))
            .ok_or_else(err)?;
    }
    let mut exp10 = -i32::try_from(frac.len()).map_err(|_| err())?;
    let mut exp1024 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp1024 = 1,
        "Mi" => exp1024 = 2,
        "Gi" => exp1024 = 3,
        "Ti" => exp1024 = 4,
        "Pi" => exp1024 = 5,
        "Ei" => exp1024 = 6,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| err())?;
            if !(-30..=30).contains(&e) {
                return Err(err());
            }
            exp10 += e;
        }
        _ => return Err(err()),
    }
    Ok(Parsed {
        mantissa: if negative { -mantissa } else { mantissa },
        exp10,
        exp1024,
    })
}

/// The value scaled by `10^scale`, rounded up (Kubernetes rounds quantities up), saturating.
fn scaled_ceil(p: Parsed, scale: i32) -> Option<i64> {
    let mut v = p.mantissa;
    for _ in 0..p.exp1024 {
        v = v.checked_mul(1024)?;
    }
    let e = p.exp10 + scale;
    if e >= 0 {
        for _ in 0..e {
            v = v.checked_mul(10)?;
        }
    } else {
        let div = 10i128.checked_pow(u32::try_from(-e).ok()?)?;
        let q = v.div_euclid(div);
        v = if v.rem_euclid(div) == 0 { q } else { q + 1 };
    }
    i64::try_from(v).ok()
}

/// A quantity in its base unit (bytes, cores, pods), rounded up.
pub fn to_units(s: &str) -> Result<i64, QuantityError> {
    scaled_ceil(parse(s)?, 0).ok_or_else(|| QuantityError(s.to_string()))
}

/// A quantity in thousandths of its unit (CPU millicores), rounded up.
pub fn to_millis(s: &str) -> Result<i64, QuantityError> {
    scaled_ceil(parse(s)?, 3).ok_or_else(|| QuantityError(s.to_string()))
}

/// Checks that `s` is a non-negative quantity; for flag parsing.
pub fn validate(s: &str) -> Result<String, QuantityError> {
    match parse(s) {
        Ok(p) if p.mantissa >= 0 => Ok(s.trim().to_string()),
        _ => Err(QuantityError(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_kubernetes() {
        let cases: &[(&str, i64, i64)] = &[
            ("250m", 250, 1),
            ("1", 1000, 1),
            ("0.1", 100, 1),
            ("1.5", 1500, 2),
            ("2e3", 2_000_000, 2000),
            ("1k", 1_000_000, 1000),
            ("1Ki", 1_024_000, 1024),
            ("256Gi", 274_877_906_944_000, 274_877_906_944),
            ("128Mi", 134_217_728_000, 134_217_728),
            ("100n", 1, 1),
            ("0", 0, 0),
        ];
        for (s, millis, units) in cases {
            assert_eq!(to_millis(s), Ok(*millis), "{s} millis");
            assert_eq!(to_units(s), Ok(*units), "{s} units");
        }
        for bad in ["", "abc", "1.2.3", "5X", "1Gb", ".", "1e99"] {
            assert!(to_units(bad).is_err(), "{bad}");
        }
        assert!(validate("-1").is_err());
        assert_eq!(validate("32").as_deref(), Ok("32"));
    }
}
