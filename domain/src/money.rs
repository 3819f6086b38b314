//! Money: integer minor units of one ISO-4217 currency. Never floats; arithmetic never
//! mixes currencies and never overflows silently.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not an ISO-4217 code of a circulating currency")]
    UnknownCurrency(String),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// An ISO-4217 currency in circulation (it has minor units and is not superseded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        iso_currency::Currency::from_code(code)
            .filter(|c| c.exponent().is_some() && c.is_superseded().is_none() && !c.is_fund())
            .map(Self)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.chars().take(16).collect()))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Every currency [`Currency::parse`] accepts, in code order. Found once by trying
    /// every three-letter code, so that the list is the parser's own rule and cannot
    /// drift from it (`iso_currency` lists its currencies only behind a feature that
    /// needs another crate).
    pub fn circulating() -> &'static [Self] {
        static CIRCULATING: std::sync::LazyLock<Vec<Currency>> = std::sync::LazyLock::new(|| {
            let letters = || b'A'..=b'Z';
            letters()
                .flat_map(|a| letters().flat_map(move |b| letters().map(move |c| [a, b, c])))
                .filter_map(|code| Currency::parse(std::str::from_utf8(&code).ok()?).ok())
                .collect()
        });
        &CIRCULATING
    }

    /// Digits after the decimal point: 2 for USD, 0 for JPY, 3 for KWD.
    pub fn minor_unit_digits(self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.code().to_owned()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount in minor units (cents for USD) of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub const fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    pub fn is_positive(self) -> bool {
        self.minor > 0
    }

    pub fn is_negative(self) -> bool {
        self.minor < 0
    }

    fn same_currency(self, other: Self) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    pub fn checked_mul(self, factor: u32) -> Result<Self, MoneyError> {
        let minor = self
            .minor
            .checked_mul(i64::from(factor))
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    /// `self` scaled by `basis_points / 10 000`, rounded toward zero.
    pub fn checked_basis_points(self, basis_points: u32) -> Result<Self, MoneyError> {
        let scaled = i128::from(self.minor) * i128::from(basis_points) / 10_000;
        let minor = i64::try_from(scaled).map_err(|_| MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    /// Compares two amounts of the same currency.
    pub fn try_cmp(self, other: Self) -> Result<Ordering, MoneyError> {
        self.same_currency(other)?;
        Ok(self.minor.cmp(&other.minor))
    }

    /// Sums amounts of one currency; `currency` is the result's currency when empty.
    pub fn checked_sum(
        currency: Currency,
        amounts: impl IntoIterator<Item = Money>,
    ) -> Result<Self, MoneyError> {
        amounts
            .into_iter()
            .try_fold(Self::zero(currency), Self::checked_add)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = u32::from(self.currency.minor_unit_digits());
        let sign = if self.minor < 0 { "-" } else { "" };
        let magnitude = self.minor.unsigned_abs();
        if digits == 0 {
            return write!(f, "{sign}{magnitude} {}", self.currency);
        }
        let scale = 10u64.pow(digits);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            magnitude / scale,
            magnitude % scale,
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::parse("USD").expect("USD"))
    }

    #[test]
    fn currencies_are_iso_4217_codes_in_circulation() {
        assert_eq!(Currency::parse("EUR").map(Currency::code), Ok("EUR"));
        assert_eq!(
            Currency::parse("JPY").map(Currency::minor_unit_digits),
            Ok(0)
        );
        assert_eq!(
            Currency::parse("KWD").map(Currency::minor_unit_digits),
            Ok(3)
        );
        for bad in ["usd", "XXX", "ABC", "", "EURO", "XAU"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_circulating_list_is_what_parse_accepts() {
        let codes: Vec<&str> = Currency::circulating()
            .iter()
            .map(|currency| currency.code())
            .collect();
        for code in ["EUR", "JPY", "KWD", "USD"] {
            assert!(codes.contains(&code), "{code}");
        }
        for code in ["XXX", "XAU", "ABC"] {
            assert!(!codes.contains(&code), "{code}");
        }
        assert!(codes.is_sorted());
        assert!(codes.iter().all(|code| Currency::parse(code).is_ok()));
    }

    #[test]
    fn arithmetic_never_mixes_currencies() {
        let eur = Money::new(100, Currency::parse("EUR").expect("EUR"));
        assert!(matches!(
            usd(1).checked_add(eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert!(matches!(
            usd(1).checked_sub(eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert!(usd(1).try_cmp(eur).is_err());
    }

    #[test]
    fn arithmetic_never_overflows_silently() {
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MIN).checked_sub(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(
            usd(i64::MAX / 2 + 1).checked_mul(2),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            usd(i64::MAX).checked_basis_points(20_000),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn basis_points_scale_and_round_toward_zero() {
        assert_eq!(usd(10_000).checked_basis_points(250), Ok(usd(250)));
        assert_eq!(usd(999).checked_basis_points(100), Ok(usd(9)));
    }

    #[test]
    fn money_serializes_as_minor_units_and_code() {
        let json = serde_json::to_value(usd(1299)).expect("serialize");
        assert_eq!(json, serde_json::json!({"minor": 1299, "currency": "USD"}));
        let bad: Result<Money, _> =
            serde_json::from_value(serde_json::json!({"minor": 1, "currency": "ZZZ"}));
        assert!(bad.is_err());
    }

    #[test]
    fn money_displays_with_the_currency_s_minor_digits() {
        assert_eq!(usd(-1205).to_string(), "-12.05 USD");
        assert_eq!(
            Money::new(500, Currency::parse("JPY").expect("JPY")).to_string(),
            "500 JPY"
        );
    }
}
