//! Reading a patient's proof of identity from free text: a date of birth
//! in the forms people type (`03.02.1901`, `3/2/1901`, `1901-02-03`,
//! `03021901`), or a one-time code.
//!
//! Day or month first: a date whose first part is the year (`1901-02-03`,
//! `19010203`) is unambiguous. Otherwise the clinic's locale decides
//! (`results.date_order`): day first everywhere except the United States
//! (`mdy` by default when `service.time_zone` is a US zone). A part that
//! cannot be a month under that order (`13/2/1901` month first) does not
//! flip the order: it is not a date, so a guess is never taken as right.

use jiff::civil::Date;

/// The date `text` gives, if it gives exactly one.
pub fn parse_dob(text: &str, month_first: bool) -> Option<Date> {
    // A date is short; a long text is a sentence, not an answer.
    if text.len() > 64 {
        return None;
    }
    let groups: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    match groups.as_slice() {
        [one] if one.len() == 8 => {
            let (a, rest) = one.split_at(4);
            let (b, c) = rest.split_at(2);
            // Year first when that reads as a date (19010203), else the
            // locale's order (03021901).
            date(a, b, c).or_else(|| {
                let (x, rest) = one.split_at(2);
                let (y, year) = rest.split_at(2);
                ordered(x, y, year, month_first)
            })
        }
        [a, b, c] if a.len() == 4 => date(a, b, c),
        [a, b, c] if c.len() == 4 && a.len() <= 2 && b.len() <= 2 => ordered(a, b, c, month_first),
        _ => None,
    }
}

/// `x`/`y` are day and month in the locale's order.
fn ordered(x: &str, y: &str, year: &str, month_first: bool) -> Option<Date> {
    if month_first {
        date(year, x, y)
    } else {
        date(year, y, x)
    }
}

fn date(year: &str, month: &str, day: &str) -> Option<Date> {
    if year.len() != 4 || month.len() > 2 || day.len() > 2 {
        return None;
    }
    let y: i16 = year.parse().ok()?;
    let m: i8 = month.parse().ok()?;
    let d: i8 = day.parse().ok()?;
    if !(1850..=2199).contains(&y) {
        return None;
    }
    Date::new(y, m, d).ok()
}

/// A one-time code as compared: letters and digits only, upper case (the
/// patient may type it with spaces, dashes or in lower case).
pub fn normalise_code(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Whether `answer` is `code`, compared in constant time over the
/// normalised forms (an empty code never matches).
pub fn code_matches(answer: &str, code: &str) -> bool {
    let (a, c) = (normalise_code(answer), normalise_code(code));
    if c.is_empty() || a.len() != c.len() {
        return false;
    }
    // Every byte is looked at whatever differs (no early exit).
    a.bytes()
        .zip(c.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i16, m: i8, day: i8) -> Option<Date> {
        Some(Date::new(y, m, day).unwrap())
    }

    #[test]
    fn common_forms_day_first() {
        for text in [
            "03.02.1901",
            "3.2.1901",
            "3/2/1901",
            "03-02-1901",
            "1901-02-03",
            "1901/2/3",
            "03021901",
            "19010203",
            " 03.02.1901 ",
            "born 3.2.1901!",
            "03 02 1901",
        ] {
            assert_eq!(parse_dob(text, false), d(1901, 2, 3), "{text}");
        }
    }

    #[test]
    fn month_first_in_the_us_only_where_ambiguous() {
        assert_eq!(parse_dob("2/3/1901", true), d(1901, 2, 3));
        assert_eq!(parse_dob("02031901", true), d(1901, 2, 3));
        // Year first is never ambiguous.
        assert_eq!(parse_dob("1901-02-03", true), d(1901, 2, 3));
        // 13 cannot be a month: not a date, never a guess.
        assert_eq!(parse_dob("13/2/1901", true), None);
        assert_eq!(parse_dob("13/2/1901", false), d(1901, 2, 13));
    }

    #[test]
    fn not_dates() {
        for text in [
            "",
            "hello",
            "31.02.1901",
            "3.2.01",
            "1901",
            "3.2.1901 or 4.2.1901",
            "00.00.0000",
            "03.02.0901",
            &"1".repeat(100),
            "1234567",
        ] {
            assert_eq!(parse_dob(text, false), None, "{text}");
        }
    }

    #[test]
    fn codes_compare_normalised() {
        assert!(code_matches("ab-12 cd", "AB12CD"));
        assert!(!code_matches("AB12CE", "AB12CD"));
        assert!(!code_matches("AB12C", "AB12CD"));
        assert!(!code_matches("", ""));
    }
}
