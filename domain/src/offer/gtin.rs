//! GTIN (EAN-8, UPC-A, EAN-13, GTIN-14), checked by its GS1 check digit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A valid GTIN, kept as the 14-digit form so that the same product written as UPC-A
/// and as EAN-13 is one GTIN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gtin(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a GTIN (8, 12, 13 or 14 digits with a valid check digit)")]
pub struct InvalidGtin(pub String);

impl Gtin {
    /// Reads a GTIN written with or without spaces and dashes.
    pub fn parse(text: &str) -> Result<Self, InvalidGtin> {
        let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        let valid = matches!(digits.len(), 8 | 12 | 13 | 14)
            && digits.bytes().all(|b| b.is_ascii_digit())
            && check_digit_holds(&digits)
            && digits.bytes().any(|b| b != b'0');
        if valid {
            Ok(Self(format!("{digits:0>14}")))
        } else {
            Err(InvalidGtin(text.to_owned()))
        }
    }

    /// The 14-digit form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// GS1: from the right, digits alternate weights 3 and 1 (the check digit itself
/// weighs 1); the sum is a multiple of 10.
fn check_digit_holds(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 1 { 3 } else { 1 })
        .sum();
    sum.is_multiple_of(10)
}

impl TryFrom<String> for Gtin {
    type Error = InvalidGtin;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Gtin> for String {
    fn from(gtin: Gtin) -> Self {
        gtin.0
    }
}

impl fmt::Display for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_product_in_any_gtin_length_is_one_gtin() {
        let upc = Gtin::parse("036000291452").expect("UPC-A");
        let ean = Gtin::parse("0036000291452").expect("EAN-13");
        assert_eq!(upc, ean);
        assert_eq!(upc.as_str(), "00036000291452");
        assert!(Gtin::parse("4006381333931").is_ok());
        assert!(Gtin::parse("96385074").is_ok());
        assert!(Gtin::parse("400-6381-333931").is_ok());
    }

    #[test]
    fn a_wrong_check_digit_or_length_is_refused() {
        for bad in [
            "4006381333932",
            "40063813339",
            "abcdefghijklm",
            "",
            "00000000",
            "123456789012345",
        ] {
            assert!(Gtin::parse(bad).is_err(), "{bad}");
        }
    }
}
