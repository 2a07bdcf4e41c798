//! Exact money: currencies, amounts in nano-units, and decimal text parsed without floats.
//!
//! Every amount is an integer count of **nano-units** (1e-9 of the currency) with its
//! currency beside it. Prices in the catalog are nano-units per **one million tokens**,
//! so a request's cost is `sum(tokens_i * price_i) / 1_000_000`, computed on the exact
//! numerators and rounded once, up, per request (see [`crate::pricing`]).
//!
//! Decimal text ("0.0008", "7.1268") is parsed digit by digit; more fractional digits
//! than the target precision are refused rather than rounded, so a typo cannot silently
//! change a price.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-units in one unit of a currency.
pub const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Catalog prices are quoted per this many tokens.
pub const TOKENS_PER_PRICE_UNIT: i128 = 1_000_000;

/// Fractional digits a [`Money`] amount or a catalog price can carry.
pub const NANO_DIGITS: u32 = 9;
/// Fractional digits [`Money`]'s `Display` always shows (more when the amount needs them).
pub const DISPLAY_MIN_DECIMALS: usize = 6;

/// Why decimal text or a money string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a decimal number (digits with an optional sign and one '.')")]
    NotDecimal(String),
    #[error("`{text}` has more than {max} decimal places")]
    TooPrecise { text: String, max: u32 },
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("unknown currency `{0}` (expected CNY, USD or EUR)")]
    UnknownCurrency(String),
    #[error("`{0}` is not an amount with a currency, like `0.000412 CNY`")]
    NotMoney(String),
}

/// A currency a vendor bills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Currency {
    Cny,
    Usd,
    Eur,
}

impl Currency {
    /// Every currency, in a stable order.
    pub const ALL: [Currency; 3] = [Currency::Cny, Currency::Usd, Currency::Eur];

    /// The ISO 4217 code.
    pub fn as_str(&self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    /// Case-insensitive ISO code.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CNY" | "RMB" => Ok(Currency::Cny),
            "USD" => Ok(Currency::Usd),
            "EUR" => Ok(Currency::Eur),
            _ => Err(MoneyError::UnknownCurrency(s.to_owned())),
        }
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An exact amount: nano-units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub nanos: i128,
    pub currency: Currency,
}

impl Money {
    pub fn new(nanos: i128, currency: Currency) -> Money {
        Money { nanos, currency }
    }

    pub fn zero(currency: Currency) -> Money {
        Money { nanos: 0, currency }
    }

    /// Parses decimal text in units of the currency ("0.000412") into an exact amount.
    pub fn from_decimal(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        Ok(Money {
            nanos: parse_nanos(text)?,
            currency,
        })
    }

    /// The amount as decimal text without the currency: trailing zeros trimmed, but at
    /// least six decimals shown (`"0.000412"`, `"1.500000"`, `"0.000000001"`).
    pub fn to_decimal_string(&self) -> String {
        format_nanos(self.nanos, DISPLAY_MIN_DECIMALS)
    }

    /// Sum of two amounts of the same currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money {
            nanos: self.nanos.checked_add(other.nanos)?,
            currency: self.currency,
        })
    }
}

/// `"0.000412 CNY"`: [`Money::to_decimal_string`], a space, the ISO code.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

/// Parses what `Display` writes: `"0.000412 CNY"`.
impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(amount), Some(cur), None) => Money::from_decimal(amount, cur.parse()?),
            _ => Err(MoneyError::NotMoney(s.to_owned())),
        }
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses decimal text into nano-units: `"0.0008"` -> `800_000`. Accepts an optional sign
/// and `_` between digits (TOML style); refuses exponents and more than nine decimals.
pub fn parse_nanos(text: &str) -> Result<i128, MoneyError> {
    let d = Decimal::parse_with_max_scale(text, NANO_DIGITS)?;
    d.rescale(NANO_DIGITS)
        .ok_or_else(|| MoneyError::TooLarge(text.to_owned()))
}

/// Writes nano-units as decimal text, trimming trailing zeros but keeping at least
/// `min_decimals` fractional digits (0 = an integer prints without a point).
pub fn format_nanos(nanos: i128, min_decimals: usize) -> String {
    format_scaled(nanos, NANO_DIGITS, min_decimals)
}

/// Writes `mantissa / 10^scale` as decimal text; trailing zeros trimmed down to
/// `min_decimals` fractional digits.
///
/// On the hot path (every answer's cost is written three or four times), so the digits
/// are produced by hand: `u128` formatting through `fmt` cost ~900 instructions a call.
fn format_scaled(mantissa: i128, scale: u32, min_decimals: usize) -> String {
    let abs = mantissa.unsigned_abs();
    // Digits, most significant first, with at least one before the point: a u128 has
    // at most 39, and `scale` zeros may lead the fraction.
    let width = (scale as usize + 1).max(39);
    let mut stack = [b'0'; 64];
    let mut heap = Vec::new();
    let digits: &mut [u8] = if width <= stack.len() {
        &mut stack[..width]
    } else {
        heap.resize(width, b'0');
        &mut heap
    };
    let mut rest = abs;
    let mut i = width;
    while rest > 0 {
        i -= 1;
        if let Ok(small) = u64::try_from(rest) {
            // u64 division is several times cheaper than u128's.
            let mut r = small;
            while r > 0 {
                digits[i] = b'0' + (r % 10) as u8;
                r /= 10;
                if r > 0 {
                    i -= 1;
                }
            }
            break;
        }
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let point = width - scale as usize;
    let first = digits[..point - 1]
        .iter()
        .position(|d| *d != b'0')
        .unwrap_or(point - 1);
    let int = &digits[first..point];
    let mut frac = &digits[point..];
    while frac.len() > min_decimals && frac.last() == Some(&b'0') {
        frac = &frac[..frac.len() - 1];
    }
    let mut out = String::with_capacity(int.len() + frac.len() + min_decimals + 2);
    if mantissa < 0 && abs != 0 {
        out.push('-');
    }
    // Only ASCII digits were written.
    out.extend(int.iter().map(|d| char::from(*d)));
    if !frac.is_empty() || min_decimals > 0 {
        out.push('.');
        out.extend(frac.iter().map(|d| char::from(*d)));
        for _ in frac.len()..min_decimals {
            out.push('0');
        }
    }
    out
}

/// Ceiling of `num / den` for a positive `den`.
pub(crate) fn div_ceil(num: i128, den: i128) -> i128 {
    let q = num / den;
    if num % den > 0 {
        q + 1
    } else {
        q
    }
}

/// An exact decimal `mantissa / 10^scale`, for FX rates and quality scores. No floats:
/// parsed from text, compared and multiplied exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// Most fractional digits a [`Decimal`] keeps.
pub const DECIMAL_MAX_SCALE: u32 = 12;
const DECIMAL_MAX_MANTISSA: i128 = 1_000_000_000_000_000_000_000_000; // 1e24

impl Decimal {
    pub fn from_parts(mantissa: i128, scale: u32) -> Decimal {
        Decimal { mantissa, scale }
    }

    pub fn from_int(v: i64) -> Decimal {
        Decimal {
            mantissa: i128::from(v),
            scale: 0,
        }
    }

    pub fn mantissa(&self) -> i128 {
        self.mantissa
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// Parses decimal text with at most [`DECIMAL_MAX_SCALE`] fractional digits.
    pub fn parse(text: &str) -> Result<Decimal, MoneyError> {
        Decimal::parse_with_max_scale(text, DECIMAL_MAX_SCALE)
    }

    fn parse_with_max_scale(text: &str, max_scale: u32) -> Result<Decimal, MoneyError> {
        let bad = || MoneyError::NotDecimal(text.to_owned());
        let t = text.trim();
        let (neg, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (body, None),
        };
        let digits = |s: &str| -> Result<String, MoneyError> {
            // `_` only between digits, as TOML allows.
            let bytes = s.as_bytes();
            let mut out = String::with_capacity(s.len());
            for (i, &b) in bytes.iter().enumerate() {
                match b {
                    b'0'..=b'9' => out.push(b as char),
                    b'_' if i > 0
                        && i + 1 < bytes.len()
                        && bytes[i - 1].is_ascii_digit()
                        && bytes[i + 1].is_ascii_digit() => {}
                    _ => return Err(bad()),
                }
            }
            Ok(out)
        };
        let int_digits = digits(int_part)?;
        let frac_digits = match frac_part {
            Some(f) => {
                let d = digits(f)?;
                if d.is_empty() {
                    return Err(bad());
                }
                d
            }
            None => String::new(),
        };
        if int_digits.is_empty() {
            return Err(bad());
        }
        let frac_trimmed = frac_digits.trim_end_matches('0');
        if frac_trimmed.len() > max_scale as usize {
            return Err(MoneyError::TooPrecise {
                text: text.to_owned(),
                max: max_scale,
            });
        }
        let scale = frac_trimmed.len() as u32;
        let mut mantissa: i128 = 0;
        for c in int_digits.chars().chain(frac_trimmed.chars()) {
            let d = i128::from(c as u8 - b'0');
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(d))
                .filter(|m| *m < DECIMAL_MAX_MANTISSA)
                .ok_or_else(|| MoneyError::TooLarge(text.to_owned()))?;
        }
        Ok(Decimal {
            mantissa: if neg { -mantissa } else { mantissa },
            scale,
        })
    }

    /// The mantissa at a larger scale (`None` if the scale would shrink or on overflow).
    pub fn rescale(&self, scale: u32) -> Option<i128> {
        if scale < self.scale {
            return None;
        }
        self.mantissa
            .checked_mul(10i128.checked_pow(scale - self.scale)?)
    }

    /// Exact product.
    pub fn checked_mul(&self, other: &Decimal) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(other.mantissa)?,
            scale: self.scale.checked_add(other.scale)?,
        })
        .map(|d| d.normalized())
    }

    /// The same value with trailing fractional zeros removed.
    pub fn normalized(&self) -> Decimal {
        let mut d = *self;
        while d.scale > 0 && d.mantissa % 10 == 0 {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_scaled(self.mantissa, self.scale, 0))
    }
}

impl FromStr for Decimal {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Both fit in 1e24 * 1e12 < i128::MAX after rescaling to the larger scale.
        let s = self.scale.max(other.scale);
        match (self.rescale(s), other.rescale(s)) {
            (Some(a), Some(b)) => a.cmp(&b),
            // Unreachable for parsed values; fall back to sign and integer part.
            _ => (
                self.mantissa.signum(),
                self.mantissa / 10i128.pow(self.scale.min(38)),
            )
                .cmp(&(
                    other.mantissa.signum(),
                    other.mantissa / 10i128.pow(other.scale.min(38)),
                )),
        }
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {

    /// The formatter as it was written first (through `fmt`), to check the fast one.
    fn format_scaled_reference(mantissa: i128, scale: u32, min_decimals: usize) -> String {
        let neg = mantissa < 0;
        let abs = mantissa.unsigned_abs();
        let pow = 10u128.pow(scale);
        let int = abs / pow;
        let frac = abs % pow;
        let mut frac_s = format!("{:0width$}", frac, width = scale as usize);
        while frac_s.len() > min_decimals && frac_s.ends_with('0') {
            frac_s.pop();
        }
        while frac_s.len() < min_decimals {
            frac_s.push('0');
        }
        let sign = if neg && (int != 0 || frac != 0) {
            "-"
        } else {
            ""
        };
        if frac_s.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac_s}")
        }
    }

    #[test]
    fn fast_formatting_matches_the_reference() {
        let mut values: Vec<i128> = vec![
            0,
            1,
            -1,
            9,
            10,
            99,
            100,
            123_456_789,
            1_000_000_000,
            -1_000_000_001,
            12_300_000,
            i64::MAX as i128,
            i64::MIN as i128,
            u64::MAX as i128,
            u64::MAX as i128 + 1,
            -(u64::MAX as i128) - 7,
            i128::MAX,
            i128::MIN + 1,
            i128::MIN,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> (x % 60)) as i128 * if x.is_multiple_of(3) { -1 } else { 1 };
            values.push(v);
            values.push(v * 1_000_000_007);
        }
        for v in values {
            for scale in [0u32, 1, 2, 6, 9, 12, 20, 38] {
                for min in [0usize, 1, 2, 6, 9, 40] {
                    assert_eq!(
                        format_scaled(v, scale, min),
                        format_scaled_reference(v, scale, min),
                        "{v} scale {scale} min {min}"
                    );
                }
            }
        }
    }
    use super::*;

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(parse_nanos("0.0008"), Ok(800_000));
        assert_eq!(parse_nanos("5"), Ok(5_000_000_000));
        assert_eq!(parse_nanos("0.000000001"), Ok(1));
        assert_eq!(parse_nanos("1_000.5"), Ok(1_000_500_000_000));
        assert_eq!(parse_nanos("-0.5"), Ok(-500_000_000));
        assert_eq!(parse_nanos("0.10000000000"), Ok(100_000_000)); // trailing zeros are fine
        assert!(matches!(
            parse_nanos("0.0000000001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        for bad in [
            "", ".5", "5.", "1e-3", "0x10", "1..2", "_1", "1_", "abc", "1 2",
        ] {
            assert!(parse_nanos(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_money() {
        let m = Money::new(412_000, Currency::Cny);
        assert_eq!(m.to_string(), "0.000412 CNY");
        assert_eq!(Money::new(1, Currency::Usd).to_string(), "0.000000001 USD");
        assert_eq!(
            Money::new(1_500_000_000, Currency::Eur).to_decimal_string(),
            "1.500000"
        );
        assert_eq!(
            Money::new(-412_000, Currency::Cny).to_string(),
            "-0.000412 CNY"
        );
        assert_eq!(format_nanos(800_000_000, 0), "0.8");
        assert_eq!(format_nanos(5_000_000_000, 0), "5");
        assert_eq!("0.000412 CNY".parse::<Money>(), Ok(m));
        assert_eq!(
            serde_json::to_string(&m).ok().as_deref(),
            Some("\"0.000412 CNY\"")
        );
        assert_eq!(
            serde_json::to_string(&Currency::Usd).ok().as_deref(),
            Some("\"USD\"")
        );
        assert_eq!("usd".parse::<Currency>(), Ok(Currency::Usd));
        assert!("JPY".parse::<Currency>().is_err());
    }

    #[test]
    fn decimals_compare_and_multiply_exactly() {
        let a = Decimal::parse("7.1268").unwrap();
        let b = Decimal::parse("1.0812").unwrap();
        assert_eq!(a.to_string(), "7.1268");
        assert_eq!(
            a.checked_mul(&b).map(|d| d.to_string()),
            Some("7.70549616".to_owned())
        );
        assert!(a > b);
        assert_eq!(Decimal::parse("1.50"), Decimal::parse("1.5"));
        assert!(Decimal::parse("1200").unwrap() > Decimal::parse("1199.999").unwrap());
        assert_eq!(div_ceil(7, 2), 4);
        assert_eq!(div_ceil(6, 2), 3);
        assert_eq!(div_ceil(-7, 2), -3);
    }
}
