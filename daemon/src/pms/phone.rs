//! Phone numbers to E.164, the form WhatsApp addresses and our blind index
//! use. PMS data is messy ("0151 123 456-78", "(555) 123-4567", "0049…"), so
//! normalise once, at the door.

/// How to read numbers written without a country code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonePlan {
    /// Country calling code without "+", e.g. "49" or "1".
    pub country_code: String,
    /// The national trunk prefix dropped before the country code, e.g. "0"
    /// in Germany; empty where there is none (NANP).
    pub trunk_prefix: String,
}

impl Default for PhonePlan {
    fn default() -> Self {
        Self {
            country_code: "49".to_owned(),
            trunk_prefix: "0".to_owned(),
        }
    }
}

/// Returns `+<digits>` (8 to 15 digits) or None if this is not a phone number.
pub fn to_e164(raw: &str, plan: &PhonePlan) -> Option<String> {
    let raw = raw.trim();
    // Extensions ("x12", "ext. 12") are not reachable on WhatsApp.
    let raw = raw
        .split(|c: char| c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    // "+49 (0)151 …": the bracketed trunk prefix is not dialled from abroad.
    let without_trunk = raw.replace("(0)", "");
    let raw = without_trunk.as_str();
    let international = raw.starts_with('+');
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let national = if international {
        return valid(digits);
    } else if let Some(rest) = digits.strip_prefix("00") {
        return valid(rest.to_owned());
    } else if !plan.trunk_prefix.is_empty() && digits.starts_with(&plan.trunk_prefix) {
        digits
            .get(plan.trunk_prefix.len()..)
            .unwrap_or_default()
            .to_owned()
    } else {
        digits
    };
    valid(format!("{}{}", plan.country_code, national))
}

fn valid(digits: String) -> Option<String> {
    let ok = (8..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.chars().all(|c| c.is_ascii_digit());
    ok.then(|| format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn german_forms() {
        let de = PhonePlan::default();
        assert_eq!(
            to_e164("0151 555-01234", &de).as_deref(),
            Some("+4915155501234")
        );
        assert_eq!(
            to_e164("+49 (151) 55501234", &de).as_deref(),
            Some("+4915155501234")
        );
        assert_eq!(
            to_e164("0049151/55501234", &de).as_deref(),
            Some("+4915155501234")
        );
        assert_eq!(
            to_e164("+49 (0)151 55501234", &de).as_deref(),
            Some("+4915155501234")
        );
    }

    #[test]
    fn nanp_forms() {
        let us = PhonePlan {
            country_code: "1".into(),
            trunk_prefix: String::new(),
        };
        assert_eq!(
            to_e164("(555) 010-4567", &us).as_deref(),
            Some("+15550104567")
        );
        assert_eq!(
            to_e164("555.010.4567 x12", &us).as_deref(),
            Some("+15550104567")
        );
    }

    #[test]
    fn rejects_non_numbers() {
        let de = PhonePlan::default();
        assert_eq!(to_e164("", &de), None);
        assert_eq!(to_e164("unknown", &de), None);
        assert_eq!(to_e164("12", &de), None);
        assert_eq!(to_e164("+1234567890123456789", &de), None);
    }
}
