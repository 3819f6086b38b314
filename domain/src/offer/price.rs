//! Prices as pages and feeds write them, read into [`Money`] — or refused, never guessed.
//!
//! A price is digits with optional grouping and one decimal separator: `1,299.99`,
//! `1.299,99`, `1 299,99`, `1'299.99`, `129,800` (yen), `12.5`. The rules:
//!
//! * with both `,` and `.`, the last one is the decimal separator;
//! * a lone separator followed by exactly three digits groups thousands (`1,299` is
//!   1299) unless the currency has three minor digits; any other lone separator is the
//!   decimal one (`12,50`);
//! * a separator repeated, or a space or apostrophe, groups thousands, and groups after
//!   the first must have three digits;
//! * more decimals than the currency has minor units is an error (`12.345 USD`), so is
//!   a decimal part on a currency without minor units (`100.5 JPY`).
//!
//! The currency comes from the structured field next to the price when there is one.
//! A symbol in the text is checked against it; alone, only a symbol that names one
//! currency (`€`, `£`, `₹`, …) is taken — `$`, `¥` and `kr` name several and are refused.

use crate::money::{Currency, Money};

/// Why a price could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("no price in {0:?}")]
    NoAmount(String),
    #[error("{0:?} is not a price")]
    Malformed(String),
    #[error("{text:?} has more decimals than {currency} allows")]
    TooManyDecimals { text: String, currency: Currency },
    #[error("the currency of {0:?} is not stated")]
    NoCurrency(String),
    #[error("{text:?} names {named}, but the price is stated in {stated}")]
    CurrencyConflict {
        text: String,
        named: Currency,
        stated: Currency,
    },
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("a price cannot be negative: {0:?}")]
    Negative(String),
}

/// Symbols and codes that name exactly one currency.
const UNAMBIGUOUS_SYMBOLS: &[(&str, &str)] = &[
    ("€", "EUR"),
    ("£", "GBP"),
    ("₹", "INR"),
    ("₩", "KRW"),
    ("₽", "RUB"),
    ("₺", "TRY"),
    ("₪", "ILS"),
    ("₫", "VND"),
    ("₱", "PHP"),
    ("₴", "UAH"),
    ("zł", "PLN"),
    ("US$", "USD"),
    ("CA$", "CAD"),
    ("C$", "CAD"),
    ("A$", "AUD"),
    ("AU$", "AUD"),
    ("NZ$", "NZD"),
    ("HK$", "HKD"),
    ("S$", "SGD"),
    ("R$", "BRL"),
    ("CHF", "CHF"),
];

/// Symbols shared by several currencies: a price written with one needs its currency
/// stated.
const AMBIGUOUS_SYMBOLS: &[&str] = &["$", "¥", "kr", "￥"];

/// Reads `text` (e.g. `"$1,299.99"`, `"1.299,99 €"`, `"129800"`) as an amount of
/// `stated` — the currency its source gives next to it — or of the one currency its
/// own symbol names.
pub fn parse_price(text: &str, stated: Option<Currency>) -> Result<Money, PriceError> {
    let named = named_currency(text)?;
    let currency = match (named, stated) {
        (Some(named), Some(stated)) if named != stated => {
            return Err(PriceError::CurrencyConflict {
                text: text.to_owned(),
                named,
                stated,
            });
        }
        (_, Some(stated)) => stated,
        (Some(named), None) => named,
        (None, None) => return Err(PriceError::NoCurrency(text.to_owned())),
    };
    let minor = parse_amount(text, currency)?;
    Ok(Money::new(minor, currency))
}

/// The currency a price's own text names (an ISO code or an unambiguous symbol).
fn named_currency(text: &str) -> Result<Option<Currency>, PriceError> {
    let letters: String = text
        .chars()
        .filter(|c| !c.is_ascii_digit() && !matches!(c, '.' | ',' | ' ' | '\'' | '-' | '+'))
        .filter(|c| !c.is_whitespace())
        .collect();
    if letters.is_empty() {
        return Ok(None);
    }
    if let Some((_, code)) = UNAMBIGUOUS_SYMBOLS
        .iter()
        .find(|(symbol, _)| letters.eq_ignore_ascii_case(symbol))
    {
        return Ok(Currency::parse(code).ok());
    }
    if letters.len() == 3 && letters.chars().all(|c| c.is_ascii_alphabetic()) {
        return Currency::parse(&letters.to_ascii_uppercase())
            .map(Some)
            .map_err(|_| PriceError::Malformed(text.to_owned()));
    }
    if AMBIGUOUS_SYMBOLS.iter().any(|symbol| letters == *symbol) {
        return Ok(None);
    }
    Err(PriceError::Malformed(text.to_owned()))
}

/// The amount in minor units of `currency`.
fn parse_amount(text: &str, currency: Currency) -> Result<i64, PriceError> {
    let malformed = || PriceError::Malformed(text.to_owned());
    if text.contains('-') {
        return Err(PriceError::Negative(text.to_owned()));
    }
    // The number: from the first digit to the last, symbols and codes around it.
    let start = text.find(|c: char| c.is_ascii_digit());
    let end = text.rfind(|c: char| c.is_ascii_digit());
    let (Some(start), Some(end)) = (start, end) else {
        return Err(PriceError::NoAmount(text.to_owned()));
    };
    let number = text[start..=end].replace('\u{a0}', " ");
    if number
        .chars()
        .any(|c| !c.is_ascii_digit() && !matches!(c, '.' | ',' | ' ' | '\''))
    {
        return Err(malformed());
    }
    let digits = u32::from(currency.minor_unit_digits());
    let (whole, fraction) = split_decimal(&number, digits).ok_or_else(malformed)?;
    if fraction.len() > digits as usize {
        return Err(PriceError::TooManyDecimals {
            text: text.to_owned(),
            currency,
        });
    }
    let overflow = || PriceError::Overflow(text.to_owned());
    let whole: i64 = whole.parse().map_err(|_| overflow())?;
    let padded = format!("{fraction:0<width$}", width = digits as usize);
    let fraction: i64 = if padded.is_empty() {
        0
    } else {
        padded.parse().map_err(|_| malformed())?
    };
    whole
        .checked_mul(10i64.pow(digits))
        .and_then(|minor| minor.checked_add(fraction))
        .ok_or_else(overflow)
}

/// Splits a number into its whole digits (grouping removed) and its decimal digits.
fn split_decimal(number: &str, minor_digits: u32) -> Option<(String, String)> {
    let commas = number.matches(',').count();
    let dots = number.matches('.').count();
    let decimal = match (commas, dots) {
        (0, 0) => None,
        (_, 0) | (0, _) => {
            let separator = if commas > 0 { ',' } else { '.' };
            let after = number.rsplit(separator).next().unwrap_or_default();
            let lone = commas + dots == 1;
            let grouping = !lone || (after.len() == 3 && minor_digits != 3) || minor_digits == 0;
            (!grouping).then_some(separator)
        }
        _ => {
            let last = number.rfind([',', '.'])?;
            Some(number[last..].chars().next()?)
        }
    };
    let (whole, fraction) = match decimal {
        Some(separator) => {
            let at = number.rfind(separator)?;
            (&number[..at], &number[at + 1..])
        }
        None => (number, ""),
    };
    if fraction.chars().any(|c| !c.is_ascii_digit()) {
        return None;
    }
    let groups: Vec<&str> = whole.split([',', '.', ' ', '\'']).collect();
    let well_grouped = groups.len() == 1
        || (groups[0].len() <= 3
            && !groups[0].is_empty()
            && groups[1..].iter().all(|group| group.len() == 3));
    if !well_grouped
        || groups
            .iter()
            .any(|group| group.chars().any(|c| !c.is_ascii_digit()))
    {
        return None;
    }
    Some((groups.concat(), fraction.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).expect("currency")
    }

    fn read(text: &str, stated: Option<&str>) -> Result<(i64, String), PriceError> {
        parse_price(text, stated.map(currency)).map(|m| (m.minor, m.currency.code().to_owned()))
    }

    #[test]
    fn prices_are_read_in_the_notations_shops_use() {
        for (text, stated, minor, code) in [
            ("1,299.99", Some("USD"), 129_999, "USD"),
            ("$1,299.99", Some("USD"), 129_999, "USD"),
            ("1.299,99 €", None, 129_999, "EUR"),
            ("€1.299,99", Some("EUR"), 129_999, "EUR"),
            ("1 299,99 EUR", None, 129_999, "EUR"),
            ("1\u{a0}299,99", Some("EUR"), 129_999, "EUR"),
            ("1'299.95 CHF", None, 129_995, "CHF"),
            ("12,50", Some("EUR"), 1250, "EUR"),
            ("12.5", Some("USD"), 1250, "USD"),
            ("1,299", Some("USD"), 129_900, "USD"),
            ("129,800", Some("JPY"), 129_800, "JPY"),
            ("¥129,800", Some("JPY"), 129_800, "JPY"),
            ("£49", None, 4900, "GBP"),
            ("1.234.567,89", Some("EUR"), 123_456_789, "EUR"),
            ("1,234,567", Some("USD"), 123_456_700, "USD"),
            ("KWD 1.250", None, 1250, "KWD"),
            ("usd 19.99", None, 1999, "USD"),
            ("0", Some("USD"), 0, "USD"),
        ] {
            assert_eq!(read(text, stated), Ok((minor, code.to_owned())), "{text}");
        }
    }

    #[test]
    fn what_cannot_be_read_for_certain_is_refused() {
        assert!(matches!(
            read("$19.99", None),
            Err(PriceError::NoCurrency(_))
        ));
        assert!(matches!(
            read("¥1000", None),
            Err(PriceError::NoCurrency(_))
        ));
        assert!(matches!(
            read("12.345", Some("USD")).map(|(m, _)| m),
            Ok(1_234_500)
        ));
        assert!(matches!(
            read("12.3456", Some("USD")),
            Err(PriceError::Malformed(_) | PriceError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            read("100.50", Some("JPY")),
            Err(PriceError::Malformed(_) | PriceError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            read("€10", Some("USD")),
            Err(PriceError::CurrencyConflict { .. })
        ));
        assert!(read("call us", Some("USD")).is_err());
        assert!(matches!(
            read("", Some("USD")),
            Err(PriceError::NoAmount(_))
        ));
        assert!(matches!(
            read("-5.00", Some("USD")),
            Err(PriceError::Negative(_))
        ));
        assert!(matches!(
            read("1,29,9.00", Some("USD")),
            Err(PriceError::Malformed(_))
        ));
        assert!(matches!(
            read("12 apples", Some("USD")),
            Err(PriceError::Malformed(_))
        ));
        assert!(matches!(
            read("99999999999999999999", Some("USD")),
            Err(PriceError::Overflow(_))
        ));
    }
}
