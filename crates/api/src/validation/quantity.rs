//! `resource.Quantity`: parsing upstream's syntax (`100m`, `1.5Gi`, `2e3`), exact comparison,
//! scaled integer values, and the canonical rendering the API server writes back.
//!
//! Values are held exactly as `mantissa × 10^exp`, rounded up to nano precision as upstream
//! does on parse, so binary suffixes and fractions compare without floating-point error.

use std::cmp::Ordering;
use std::fmt;

/// How a quantity was written; it decides the suffix family of the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, … (powers of 1024).
    BinarySI,
    /// `m`, `k`, `M`, … or no suffix.
    DecimalSI,
    /// `e3`, `E6`, ….
    DecimalExponent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    #[error("unable to parse quantity's suffix")]
    Suffix,
    #[error("unable to parse numeric part of quantity")]
    Numeric,
}

/// A parsed quantity. Equality and ordering are numeric: `1000m == 1`.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    /// Never has trailing decimal zeros unless it is zero (then `exp` is 0).
    mantissa: i128,
    exp: i32,
    format: Format,
}

/// The smallest precision upstream keeps: 1n.
const NANO_EXP: i32 = -9;
/// Binary quantities are capped at `i64::MAX` like upstream.
const BINARY_MAX: i128 = i64::MAX as i128;
/// Mantissas beyond this many digits could overflow when aligned for comparison.
const MAX_DIGITS: usize = 36;

const DECIMAL_SUFFIXES: &[(&str, i32)] = &[
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY_SUFFIXES: &[(&str, u32)] = &[
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// Splits `[+-]digits[.digits]suffix` the way upstream's scanner does, so the same strings
/// are accepted (including oddities like `1.G`).
fn split(s: &str) -> Result<(bool, &str, &str, &str), QuantityError> {
    let b = s.as_bytes();
    let mut pos = 0;
    let negative = match b.first() {
        Some(b'-') => {
            pos = 1;
            true
        }
        Some(b'+') => {
            pos = 1;
            false
        }
        _ => false,
    };
    let digits_from =
        |start: usize| start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    let num_end = digits_from(pos);
    let num = &s[pos..num_end];
    pos = num_end;
    let mut denom = "";
    if b.get(pos) == Some(&b'.') {
        let end = digits_from(pos + 1);
        denom = &s[pos + 1..end];
        pos = end;
    }
    let suffix = &s[pos..];
    // The suffix is letters from `eEinumkKMGTP`, then an optional sign and digits.
    let letters = suffix
        .bytes()
        .take_while(|c| b"eEinumkKMGTP".contains(c))
        .count();
    let mut rest = &suffix[letters..];
    rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    if !rest.bytes().all(|c| c.is_ascii_digit()) {
        return Err(QuantityError::Format);
    }
    Ok((negative, num, denom, suffix))
}

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        if s.is_empty() {
            return Err(QuantityError::Format);
        }
        let (negative, num, denom, suffix) = split(s)?;
        if num.is_empty() && denom.is_empty() {
            return Err(QuantityError::Numeric);
        }
        let (format, exp10, exp2) = interpret_suffix(suffix).ok_or(QuantityError::Suffix)?;

        let digits = format!("{num}{denom}");
        let trimmed = digits.trim_start_matches('0');
        let significant = trimmed.trim_end_matches('0');
        if significant.is_empty() {
            return Ok(Quantity::zero(if format == Format::BinarySI {
                Format::DecimalSI
            } else {
                format
            }));
        }
        if significant.len() > MAX_DIGITS {
            return Err(QuantityError::Numeric);
        }
        let mut mantissa: i128 = significant.parse().map_err(|_| QuantityError::Numeric)?;
        let dropped = (trimmed.len() - significant.len()) as i64;
        let mut exp = dropped - denom.len() as i64 + i64::from(exp10);
        if exp2 > 0 {
            mantissa = mantissa
                .checked_mul(1i128 << exp2)
                .ok_or(QuantityError::Numeric)?;
        }
        if negative {
            mantissa = -mantissa;
        }
        if exp < i64::from(NANO_EXP) {
            let shift =
                u32::try_from(i64::from(NANO_EXP) - exp).map_err(|_| QuantityError::Numeric)?;
            mantissa = div_away_from_zero(mantissa, shift);
            exp = i64::from(NANO_EXP);
        }
        let exp = i32::try_from(exp).map_err(|_| QuantityError::Numeric)?;
        let mut q = Quantity {
            mantissa,
            exp,
            format,
        }
        .normalized();
        if format == Format::BinarySI {
            if q > Quantity::from_int(BINARY_MAX) {
                q = Quantity::from_int(BINARY_MAX);
                q.format = Format::BinarySI;
            }
            if !q.is_negative() && q < Quantity::from_int(1) {
                q.format = Format::DecimalSI;
            }
        }
        Ok(q)
    }

    fn zero(format: Format) -> Self {
        Quantity {
            mantissa: 0,
            exp: 0,
            format,
        }
    }

    /// An integer quantity in the plain decimal format.
    pub fn from_int(v: i128) -> Self {
        Quantity {
            mantissa: v,
            exp: 0,
            format: Format::DecimalSI,
        }
        .normalized()
    }

    pub fn from_millis(v: i128) -> Self {
        Quantity {
            mantissa: v,
            exp: -3,
            format: Format::DecimalSI,
        }
        .normalized()
    }

    fn normalized(mut self) -> Self {
        if self.mantissa == 0 {
            self.exp = 0;
            return self;
        }
        while self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.exp += 1;
        }
        self
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The value scaled to `10^scale` units, rounded away from zero; saturates on overflow.
    pub fn scaled_value(&self, scale: i32) -> i128 {
        let shift = self.exp - scale;
        if shift >= 0 {
            let factor = u32::try_from(shift).ok().and_then(pow10);
            factor
                .and_then(|f| self.mantissa.checked_mul(f))
                .unwrap_or(if self.is_negative() {
                    i128::MIN
                } else {
                    i128::MAX
                })
        } else {
            div_away_from_zero(self.mantissa, shift.unsigned_abs())
        }
    }

    /// Whole units (bytes for memory), rounded up like upstream's `Value()`.
    pub fn value(&self) -> i128 {
        self.scaled_value(0)
    }

    /// Thousandths of a unit (millicores for CPU), rounded up like `MilliValue()`.
    pub fn milli_value(&self) -> i128 {
        self.scaled_value(-3)
    }

    /// Rounds away from zero to `10^scale` precision, keeping the format (`RoundUp`).
    pub fn round_up(&mut self, scale: i32) {
        if self.exp < scale {
            self.mantissa = div_away_from_zero(self.mantissa, (scale - self.exp).unsigned_abs());
            self.exp = scale;
            *self = self.normalized();
        }
    }

    /// Decimal mantissa and an exponent that is a multiple of three.
    fn decimal_parts(&self) -> (i128, i32) {
        let e = self.exp.div_euclid(3) * 3;
        let m = pow10((self.exp - e).unsigned_abs()).and_then(|f| self.mantissa.checked_mul(f));
        (
            m.unwrap_or(self.mantissa),
            if m.is_some() { e } else { self.exp },
        )
    }

    /// The whole value as a multiple of the largest power of 1024 that divides it, if integral.
    fn binary_parts(&self) -> Option<(i128, usize)> {
        if self.exp < 0 {
            return None;
        }
        let mut v = self.mantissa.checked_mul(pow10(self.exp.unsigned_abs())?)?;
        let mut power = 0;
        while power < BINARY_SUFFIXES.len() && v % 1024 == 0 {
            v /= 1024;
            power += 1;
        }
        Some((v, power))
    }
}

fn div_away_from_zero(v: i128, shift: u32) -> i128 {
    let Some(d) = pow10(shift) else {
        return v.signum();
    };
    let q = v / d;
    if v % d == 0 { q } else { q + v.signum() }
}

fn interpret_suffix(suffix: &str) -> Option<(Format, i32, u32)> {
    if let Some((_, e)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Some((Format::DecimalSI, *e, 0));
    }
    if let Some((_, p)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Some((Format::BinarySI, 0, *p));
    }
    let exp = suffix.strip_prefix(['e', 'E'])?;
    exp.parse::<i32>()
        .ok()
        .map(|e| (Format::DecimalExponent, e, 0))
}

/// Where a non-zero value's leading digit sits: `digits + exp`.
fn order(q: &Quantity) -> i64 {
    let digits = q
        .mantissa
        .unsigned_abs()
        .checked_ilog10()
        .map_or(0, |d| d + 1);
    i64::from(digits) + i64::from(q.exp)
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = self.mantissa.signum().cmp(&other.mantissa.signum());
        if sign != Ordering::Equal || self.mantissa == 0 {
            return sign;
        }
        let magnitude = match order(self).cmp(&order(other)) {
            Ordering::Equal => {
                // Equal orders keep both aligned mantissas within 38 digits.
                let low = self.exp.min(other.exp);
                let align = |q: &Quantity| {
                    pow10((q.exp - low).unsigned_abs())
                        .map_or(i128::MAX, |f| q.mantissa.unsigned_abs() as i128 * f)
                };
                align(self).cmp(&align(other))
            }
            o => o,
        };
        if self.mantissa < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Quantity {}

/// The canonical form, as upstream serializes a quantity (`0.5` → `500m`, `1.5Gi` → `1536Mi`).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let small = *self > Quantity::from_int(-1024) && *self < Quantity::from_int(1024);
        if self.format == Format::BinarySI
            && !small
            && let Some((v, power)) = self.binary_parts()
        {
            let suffix = power.checked_sub(1).map_or("", |i| BINARY_SUFFIXES[i].0);
            return write!(f, "{v}{suffix}");
        }
        let (m, e) = self.decimal_parts();
        let si = DECIMAL_SUFFIXES
            .iter()
            .find(|(_, x)| *x == e)
            .map(|(s, _)| *s);
        match (self.format, si) {
            (Format::DecimalExponent, _) | (_, None) if e != 0 => write!(f, "{m}e{e}"),
            (_, si) => write!(f, "{m}{}", si.unwrap_or("")),
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let cases = [
            ("0", "0"),
            ("0Gi", "0"),
            ("100m", "100m"),
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("2000", "2k"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1024Ki", "1Mi"),
            ("1000Ki", "1000Ki"),
            ("100Ki", "100Ki"),
            ("512", "512"),
            ("0.1Ki", "102400m"),
            ("1e3", "1e3"),
            ("12E6", "12e6"),
            ("1.5e3", "1500"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("123Mi", "123Mi"),
            ("1.G", "1G"),
            ("-1", "-1"),
            ("+5", "5"),
            ("0.0000000001", "1n"),
            ("1E", "1E"),
            ("10Ei", "9223372036854775807"),
        ];
        for (input, want) in cases {
            let q = Quantity::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.to_string(), want, "{input}");
        }
    }

    #[test]
    fn rejects() {
        let cases = [
            ("", QuantityError::Format),
            ("abc", QuantityError::Format),
            ("1Qi", QuantityError::Format),
            ("1K", QuantityError::Suffix),
            ("1e", QuantityError::Suffix),
            ("1 Gi", QuantityError::Format),
            ("1.2.3", QuantityError::Format),
            ("1i", QuantityError::Suffix),
        ];
        for (input, want) in cases {
            assert_eq!(Quantity::parse(input), Err(want), "{input}");
        }
    }

    #[test]
    fn values_and_ordering() {
        let q = |s| Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("0.0005").milli_value(), 1);
        assert_eq!(q("1.5").value(), 2);
        assert_eq!(q("1000m"), q("1"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("500m") < q("1"));
        assert!(q("-1") < q("1n"));
        assert!(q("1e30") > q("1n"));
        assert!(q("-2") < q("-1"));
        assert_eq!(Quantity::from_millis(1500).to_string(), "1500m");
        let mut r = q("0.0001");
        r.round_up(-3);
        assert_eq!(r.to_string(), "1m");
    }
}
