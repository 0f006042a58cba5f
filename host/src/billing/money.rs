//! Money: integer minor units (cents) of a currency, never floating point.
//!
//! The rounding rule: an amount is computed exactly (as a fraction) and rounded
//! once, to the nearest minor unit, halves away from zero, per invoice line.
//! Nothing is rounded before that, and line amounts are then only added.

/// `a × b / c`, rounded to the nearest integer, halves away from zero.
/// `c` must be positive.
pub fn mul_div_round(a: i128, b: i128, c: i128) -> i64 {
    assert!(c > 0, "a divisor is positive");
    let product = a * b;
    let (quotient, remainder) = (product / c, product % c);
    let rounded = if remainder.abs() * 2 >= c { quotient + product.signum() } else { quotient };
    rounded.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// An exact non-negative amount: `num / den` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact {
    num: i128,
    den: i128,
}

impl Default for Exact {
    fn default() -> Self {
        Self { num: 0, den: 1 }
    }
}

impl Exact {
    /// `a × b / c` exactly.
    pub fn of(a: i64, b: i64, c: i64) -> Self {
        let mut value = Self { num: a as i128 * b as i128, den: c.max(1) as i128 };
        value.reduce();
        value
    }

    pub fn add(&mut self, other: Exact) {
        let g = gcd(self.den, other.den);
        self.num = self.num * (other.den / g) + other.num * (self.den / g);
        self.den = self.den / g * other.den;
        self.reduce();
    }

    /// `self × parts / whole`, rounded once.
    pub fn share_rounded(&self, parts: i64, whole: i64) -> i64 {
        // num × parts / (den × whole); values stay far inside i128.
        mul_div_round(self.num, parts as i128, self.den * whole.max(1) as i128)
    }

    pub fn is_zero(&self) -> bool {
        self.num == 0
    }

    fn reduce(&mut self) {
        let g = gcd(self.num.abs(), self.den).max(1);
        self.num /= g;
        self.den /= g;
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217; the
/// common zero-decimal currencies, else two).
pub fn minor_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "HUF" | "XOF" | "XAF" | "UGX" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    }
}

/// `1234` USD → `12.34 USD`; `-500` → `-5.00 USD`.
pub fn format(amount: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let scale = 10u64.pow(digits);
    format!("{sign}{}.{:0width$} {currency}", abs / scale, abs % scale, width = digits as usize)
}

/// An amount written in major units (`31`, `31.5`, `31.00`) as minor units of
/// `currency`, exactly; `None` if it has more decimals than the currency.
pub fn parse(text: &str, currency: &str) -> Option<i64> {
    let digits = minor_digits(currency) as usize;
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > digits {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = if digits == 0 { 0 } else { format!("{fraction:0<digits$}").parse().ok()? };
    whole.checked_mul(10i64.pow(digits as u32))?.checked_add(fraction)
}

/// Whether `text` is an ISO 4217-shaped currency code (three capital letters).
pub fn is_currency(text: &str) -> bool {
    text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase())
}

/// Basis points from a percentage written in decimal (`"12.5"` → 1250), exactly.
pub fn percent_to_basis_points(text: &str) -> Option<i64> {
    let text = text.trim().trim_end_matches('%');
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok().filter(|w| (0..=100).contains(w))?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    let bp = whole * 100 + fraction;
    (1..=10_000).contains(&bp).then_some(bp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_once_half_away_from_zero() {
        assert_eq!(mul_div_round(1000, 1, 3), 333);
        assert_eq!(mul_div_round(1000, 2, 3), 667);
        assert_eq!(mul_div_round(5, 1, 2), 3);
        assert_eq!(mul_div_round(-5, 1, 2), -3);
        assert_eq!(mul_div_round(3100, 9 * 86_400, 31 * 86_400), 900);
        // 1.5 billion fuel at 7 per billion: 10.5 → 11.
        assert_eq!(mul_div_round(1_500_000_000, 7, 1_000_000_000), 11);
        let mut sum = Exact::of(1000, 1, 3);
        sum.add(Exact::of(1000, 2, 3));
        assert_eq!(sum.share_rounded(1, 1), 1000, "thirds add up exactly before rounding");
        assert_eq!(sum.share_rounded(1250, 10_000), 125);
    }

    #[test]
    fn amounts_print_in_their_currency() {
        assert_eq!(format(1234, "USD"), "12.34 USD");
        assert_eq!(format(-5, "EUR"), "-0.05 EUR");
        assert_eq!(format(1234, "JPY"), "1234 JPY");
        assert_eq!(parse("31", "USD"), Some(3100));
        assert_eq!(parse("31.5", "USD"), Some(3150));
        assert_eq!(parse("0.07", "EUR"), Some(7));
        assert_eq!(parse("0.075", "EUR"), None);
        assert_eq!(parse("-1", "EUR"), None);
        assert_eq!(parse("500", "JPY"), Some(500));
        assert_eq!(percent_to_basis_points("12.5"), Some(1250));
        assert_eq!(percent_to_basis_points("100"), Some(10_000));
        assert_eq!(percent_to_basis_points("0"), None);
        assert_eq!(percent_to_basis_points("101"), None);
        assert_eq!(percent_to_basis_points("1.234"), None);
        assert!(is_currency("USD") && !is_currency("usd") && !is_currency("US"));
    }
}
