//! Lenient unsigned integers for request fields. JSON Schema's `integer` is any number
//! with a zero fraction, `8.0` and `1e3` included, while serde's integers refuse them;
//! request fields deserialize through these so that every integer the document allows
//! is accepted (found by the document-driven fuzzer, ORCH-9018). Query strings reach
//! them as text, which is parsed the same way.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// An unsigned integer type these helpers produce.
pub trait Unsigned: TryFrom<u64> + Copy {
    const MAX: u64;
    /// For messages: `u32`, `u64`.
    const NAME: &'static str;
}

impl Unsigned for u32 {
    const MAX: u64 = u32::MAX as u64;
    const NAME: &'static str = "u32";
}

impl Unsigned for u64 {
    const MAX: u64 = u64::MAX;
    const NAME: &'static str = "u64";
}

fn expected<T: Unsigned>() -> String {
    format!("expected a {} (an integer from 0 to {})", T::NAME, T::MAX)
}

struct Lenient<T>(PhantomData<T>);

impl<T: Unsigned> Lenient<T> {
    fn from_u64<E: de::Error>(v: u64) -> Result<T, E> {
        T::try_from(v)
            .map_err(|_| E::custom(format!("{v} is over the maximum; {}", expected::<T>())))
    }
}

impl<'de, T: Unsigned> Visitor<'de> for Lenient<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} (an integer from 0 to {})", T::NAME, T::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::from_u64(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is negative; {}", expected::<T>())))
            .and_then(Self::from_u64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // 2^64 is the first f64 above u64::MAX.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            Self::from_u64(v as u64)
        } else {
            Err(E::custom(format!(
                "{v} is not an integer from 0 to {}",
                T::MAX
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match v.parse::<u64>() {
            Ok(n) => Self::from_u64(n),
            Err(_) => match v.parse::<f64>() {
                Ok(f) if f.is_finite() => self.visit_f64(f),
                _ => Err(E::custom(format!(
                    "{v:?} is not an integer; {}",
                    expected::<T>()
                ))),
            },
        }
    }
}

struct LenientOption<T>(PhantomData<T>);

impl<'de, T: Unsigned> Visitor<'de> for LenientOption<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "null or a {} (an integer from 0 to {})", T::NAME, T::MAX)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(Lenient(PhantomData)).map(Some)
    }
}

/// `#[serde(deserialize_with = "contracts::json_int::unsigned")]`
pub fn unsigned<'de, D: Deserializer<'de>, T: Unsigned>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Lenient(PhantomData))
}

/// `#[serde(default, deserialize_with = "contracts::json_int::optional")]`
pub fn optional<'de, D: Deserializer<'de>, T: Unsigned>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(LenientOption(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "super::unsigned")]
        n: u32,
        #[serde(default, deserialize_with = "super::optional")]
        m: Option<u64>,
    }

    fn parse(s: &str) -> Result<Body, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    // covers: ORCH-9018
    #[test]
    fn integers_with_a_zero_fraction_are_integers() {
        assert_eq!(
            parse(r#"{"n": 8.0, "m": 1e3}"#),
            Ok(Body {
                n: 8,
                m: Some(1000)
            })
        );
        assert_eq!(parse(r#"{"n": 8}"#), Ok(Body { n: 8, m: None }));
        assert_eq!(parse(r#"{"n": 8, "m": null}"#), Ok(Body { n: 8, m: None }));
        assert!(
            parse(r#"{"n": 8.5}"#)
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(parse(r#"{"n": -1}"#).unwrap_err().contains("negative"));
        assert!(
            parse(r#"{"n": 4294967296}"#)
                .unwrap_err()
                .contains("maximum")
        );
        assert!(
            parse(r#"{"n": "8"}"#).is_ok(),
            "query strings arrive as text"
        );
    }
}
