//! Money: `rust_decimal::Decimal` at one fixed precision and scale, shared by Avro
//! (`bytes` + `decimal(38, 18)`), Arrow/Parquet (`Decimal128(38, 18)`) and the JSON APIs
//! (a decimal string, never a float).
//!
//! Why scale 18: list prices go down to 1e-9 USD per unit and costs are quantity × price, so
//! 18 decimals keep every realistic cost exact. The range is Decimal(38, 18)'s: |v| < 10^20.
//! In process, rust_decimal keeps 28–29 significant digits, so amounts above ~7.9e10 carry
//! fewer than 18 decimals; their unscaled form is computed in i128 and stays exact. A value
//! outside the range, or one that cannot be held exactly, is an error — never a truncation.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Decimal precision of every money column and field.
pub const MONEY_PRECISION: u8 = 38;
/// Decimal scale of every money column and field.
pub const MONEY_SCALE: u32 = 18;

/// An exact amount of money (or a unit price) at scale [`MONEY_SCALE`].
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Exact conversion: fails when `d` has more than [`MONEY_SCALE`] significant decimals.
    pub fn new(d: Decimal) -> Result<Self, Error> {
        let n = d.normalize();
        if n.scale() > MONEY_SCALE {
            return Err(Error::MoneyScale(d.to_string()));
        }
        if n.abs() >= Self::LIMIT {
            return Err(Error::MoneyRange(d.to_string()));
        }
        Ok(Money(n))
    }

    /// 10^20: the first magnitude Decimal(38, 18) cannot hold.
    const LIMIT: Decimal = Decimal::from_parts(1_661_992_960, 1_808_227_885, 5, false, 0);

    /// Rounds half-to-even to [`MONEY_SCALE`] decimals (for float-polluted catalog values);
    /// fails like [`Money::new`] when the amount is beyond Decimal(38, 18).
    pub fn rounded(d: Decimal) -> Result<Self, Error> {
        Money::new(d.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointNearestEven))
    }

    pub fn decimal(&self) -> Decimal {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Unscaled integer at [`MONEY_SCALE`]: the Arrow `Decimal128` representation.
    /// In i128 (not by rescaling the Decimal, which silently drops digits past 96 bits).
    /// Panics only for a value outside Decimal(38, 18), which `new` and `checked_add` refuse.
    pub fn to_unscaled(&self) -> i128 {
        let scale = self.0.scale().min(MONEY_SCALE);
        self.0
            .mantissa()
            .checked_mul(10i128.pow(MONEY_SCALE - scale))
            .expect("Money is within Decimal(38, 18)")
    }

    /// Inverse of [`Money::to_unscaled`]. Trailing zeros are dropped first, so large round
    /// amounts fit rust_decimal's 96-bit mantissa; a value that still does not fit, or is
    /// outside Decimal(38, 18), is an error.
    pub fn from_unscaled(v: i128) -> Result<Self, Error> {
        let (mut m, mut scale) = (v, MONEY_SCALE);
        while scale > 0 && m % 10 == 0 && m.unsigned_abs() >> 96 != 0 {
            m /= 10;
            scale -= 1;
        }
        Decimal::try_from_i128_with_scale(m, scale)
            .map_err(|_| Error::MoneyRange(v.to_string()))
            .and_then(Money::new)
    }

    /// Avro `decimal` bytes: big-endian two's complement of the unscaled value, minimal length.
    pub fn to_avro_bytes(&self) -> Vec<u8> {
        let v = self.to_unscaled();
        let bytes = v.to_be_bytes();
        // Drop redundant sign-extension bytes, keeping the sign bit of the first kept byte.
        let mut start = 0;
        while start < 15 {
            let (b, next) = (bytes[start], bytes[start + 1]);
            let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0);
            if !redundant {
                break;
            }
            start += 1;
        }
        bytes[start..].to_vec()
    }

    pub fn from_avro_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.is_empty() || b.len() > 16 {
            return Err(Error::MoneyBytes(b.len()));
        }
        let fill = if b[0] & 0x80 != 0 { 0xFF } else { 0x00 };
        let mut buf = [fill; 16];
        buf[16 - b.len()..].copy_from_slice(b);
        Self::from_unscaled(i128::from_be_bytes(buf))
    }

    /// None beyond Decimal(38, 18).
    pub fn checked_add(self, o: Money) -> Option<Money> {
        self.0.checked_add(o.0).and_then(|d| Money::new(d).ok())
    }
}

impl From<i64> for Money {
    fn from(v: i64) -> Self {
        Money(Decimal::from(v))
    }
}

impl TryFrom<Decimal> for Money {
    type Error = Error;
    fn try_from(d: Decimal) -> Result<Self, Error> {
        Money::new(d)
    }
}

impl FromStr for Money {
    type Err = Error;
    /// Parses decimal text exactly, including exponent notation (`2.5e-06` is 0.0000025).
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim();
        let d = if t.contains(['e', 'E']) {
            Decimal::from_scientific(t)
        } else {
            Decimal::from_str_exact(t)
        }
        .map_err(|_| Error::MoneyParse(s.to_string()))?;
        Money::new(d)
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0 + o.0)
    }
}
impl AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        self.0 += o.0;
    }
}
impl Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0 - o.0)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({})", self.0)
    }
}

/// Human-readable formats (JSON) get a decimal string; binary formats (Avro) get the
/// `decimal` bytes. apache-avro's serializers report `is_human_readable() == false`.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_bytes(&self.to_avro_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string, an integer, or Avro decimal bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Money, E> {
                Money::from_avro_bytes(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Money, E> {
                self.visit_bytes(&v)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                Ok(Money::from(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v).map(Money::from).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Money, A::Error> {
                // apache-avro hands `bytes` to some visitors as a sequence of u8.
                let mut b = Vec::new();
                while let Some(x) = seq.next_element::<u8>()? {
                    b.push(x);
                }
                self.visit_bytes(&b)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exponent_text_exactly() {
        assert_eq!("2.5e-06".parse::<Money>().unwrap().to_string(), "0.0000025");
        assert_eq!("1E-9".parse::<Money>().unwrap().to_string(), "0.000000001");
        // A float artefact beyond 18 decimals is refused exactly, and rounds to what was meant.
        assert!("0.00022500000000000002".parse::<Money>().is_err());
        assert_eq!(
            Money::rounded("0.00022500000000000002".parse().unwrap())
                .unwrap()
                .to_string(),
            "0.000225"
        );
    }

    #[test]
    fn refuses_excess_scale_and_garbage() {
        assert!("5.0000000000000004e-08".parse::<Money>().is_err());
        assert_eq!(
            Money::rounded("0.000000050000000000000004".parse().unwrap())
                .unwrap()
                .to_string(),
            "0.00000005"
        );
        assert!("abc".parse::<Money>().is_err());
        assert!("".parse::<Money>().is_err());
    }

    #[test]
    fn large_amounts_are_exact_or_refused_never_truncated() {
        // 10^11 cannot keep 18 decimals in rust_decimal's 96 bits; its unscaled form is exact.
        let big: Money = "100000000000".parse().unwrap();
        assert_eq!(big.to_unscaled(), 10i128.pow(29));
        assert_eq!(Money::from_avro_bytes(&big.to_avro_bytes()).unwrap(), big);
        let edge: Money = "99999999999999999999".parse().unwrap();
        assert_eq!(Money::from_unscaled(edge.to_unscaled()).unwrap(), edge);
        // 10^20 is outside Decimal(38, 18)
        assert!("100000000000000000000".parse::<Money>().is_err());
        assert_eq!(edge.checked_add("1".parse().unwrap()), None);
        // digits rust_decimal cannot hold at that magnitude are refused, not rounded
        assert!(Money::from_unscaled(10i128.pow(29) + 1).is_err());
    }

    #[test]
    fn avro_bytes_known_values() {
        assert_eq!(Money::ZERO.to_avro_bytes(), vec![0]);
        // 1e-18 is unscaled 1
        assert_eq!(
            "0.000000000000000001"
                .parse::<Money>()
                .unwrap()
                .to_avro_bytes(),
            vec![1]
        );
        assert_eq!(
            "-0.000000000000000001"
                .parse::<Money>()
                .unwrap()
                .to_avro_bytes(),
            vec![0xFF]
        );
        // unscaled 128 needs a leading zero byte to stay positive
        assert_eq!(
            "0.000000000000000128"
                .parse::<Money>()
                .unwrap()
                .to_avro_bytes(),
            vec![0, 128]
        );
    }

    proptest! {
        #[test]
        fn avro_and_unscaled_round_trip(m in -79_228_162_514i64..79_228_162_514i64, frac in 0u64..1_000_000_000_000_000_000u64) {
            let d = Decimal::from(m) + Decimal::from_i128_with_scale(frac as i128, 18) * if m < 0 { Decimal::NEGATIVE_ONE } else { Decimal::ONE };
            if let Ok(money) = Money::new(d) {
                prop_assert_eq!(Money::from_avro_bytes(&money.to_avro_bytes()).unwrap(), money);
                prop_assert_eq!(Money::from_unscaled(money.to_unscaled()).unwrap(), money);
                let s = serde_json::to_string(&money).unwrap();
                prop_assert_eq!(serde_json::from_str::<Money>(&s).unwrap(), money);
            }
        }
    }
}
