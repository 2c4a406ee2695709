//! Reading common HL7 data types: CX identifiers, XPN names, XTN phones,
//! DTM timestamps, durations with units, and configurable field paths.

use super::{MapContext, Rejection};
use crate::model::Patient;
use crate::pms::hl7::{Message, Repetition, Segment};
use crate::pms::phone;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A `SEG-n` (or `SEG-n.c`) path into a message, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub segment: String,
    pub field: usize,
    pub component: usize,
}

impl FieldPath {
    /// Parses `ZCN-2` or `PD1-12.1`.
    pub fn parse(s: &str) -> Option<Self> {
        let (seg, rest) = s.trim().split_once('-')?;
        if seg.len() != 3
            || !seg
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return None;
        }
        let (field, component) = match rest.split_once('.') {
            Some((f, c)) => (f.parse().ok()?, c.parse().ok()?),
            None => (rest.parse().ok()?, 1),
        };
        (field >= 1 && component >= 1).then(|| FieldPath {
            segment: seg.to_owned(),
            field,
            component,
        })
    }

    pub fn read<'a>(&self, msg: &'a Message) -> Option<&'a str> {
        msg.segment(&self.segment)?
            .component(self.field, self.component)
    }
}

/// A value with surrounding white space removed; `None` when empty.
pub fn clean(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// The MRN from a CX field (PID-3, MRG-1): the repetition of the configured
/// assigning authority, else the first with identifier type `MR`, else the first.
pub fn mrn(seg: &Segment, field: usize, authority: &str) -> Option<String> {
    let reps: Vec<&Repetition> = seg.repetitions(field).collect();
    let id_of = |r: &&Repetition| clean(r.component(1)).map(str::to_owned);
    let by_authority = (!authority.is_empty())
        .then(|| {
            reps.iter()
                .find(|r| clean(r.component(4)) == Some(authority))
        })
        .flatten();
    by_authority
        .or_else(|| {
            reps.iter()
                .find(|r| clean(r.component(5)).is_some_and(|t| t.eq_ignore_ascii_case("MR")))
        })
        .or_else(|| reps.first())
        .and_then(id_of)
}

/// Reads a PID segment into a patient.
pub fn patient_from_pid(pid: &Segment, ctx: &MapContext<'_>) -> Result<Patient, Rejection> {
    let mrn =
        mrn(pid, 3, &ctx.config.assigning_authority).ok_or_else(|| Rejection::missing("PID", 3))?;
    // The legal name (XPN-7 = L) if marked, else the first.
    let name = pid
        .repetitions(5)
        .find(|r| clean(r.component(7)) == Some("L"))
        .or_else(|| pid.repetitions(5).next());
    let family = name
        .and_then(|n| clean(n.component(1)))
        .unwrap_or_default()
        .to_owned();
    let given = name
        .and_then(|n| clean(n.component(2)))
        .unwrap_or_default()
        .to_owned();
    let birth_date = match clean(pid.text(7)) {
        None => None,
        Some(v) => Some(parse_date(v).ok_or_else(|| {
            Rejection::invalid("PID", 7, "not a date (YYYYMMDD, years 1900 to 2199)")
        })?),
    };
    let language = clean(pid.component(15, 1)).map(|l| l.to_ascii_lowercase());
    Ok(Patient {
        id: ctx
            .vault
            .patient_id_for_mrn(&ctx.config.assigning_authority, &mrn),
        mrn,
        family_name: family,
        given_name: given,
        birth_date,
        phone: phone_from_pid(pid, ctx),
        language,
        deceased: clean(pid.text(30)).is_some_and(|v| v.eq_ignore_ascii_case("Y")),
        protected: false,
    })
}

/// The number of an XTN repetition: XTN-12 (unformatted), else the parts
/// XTN-5/6/7, else the old formatted XTN-1.
fn xtn_number(r: &Repetition) -> Option<String> {
    if let Some(n) = clean(r.component(12)) {
        return Some(n.to_owned());
    }
    match (
        clean(r.component(5)),
        clean(r.component(6)),
        clean(r.component(7)),
    ) {
        (cc, area, Some(local)) => {
            let national = format!("{}{}", area.unwrap_or_default(), local);
            Some(match cc {
                Some(cc) => format!("+{}{}", cc.trim_start_matches('+'), national),
                None => national,
            })
        }
        _ => clean(r.component(1)).map(str::to_owned),
    }
}

/// The phone to reach the patient on: a cell (`CP`) number from PID-13 or
/// PID-14 if there is one, else the first PID-13 number, in E.164.
fn phone_from_pid(pid: &Segment, ctx: &MapContext<'_>) -> Option<String> {
    let all: Vec<&Repetition> = pid.repetitions(13).chain(pid.repetitions(14)).collect();
    let is_email = |r: &&&Repetition| {
        clean(r.component(3)).is_some_and(|t| t.eq_ignore_ascii_case("Internet"))
    };
    let cell = all
        .iter()
        .filter(|r| !is_email(r))
        .find(|r| clean(r.component(3)) == Some("CP"));
    let first = pid
        .repetitions(13)
        .find(|r| !clean(r.component(3)).is_some_and(|t| t.eq_ignore_ascii_case("Internet")));
    cell.copied()
        .or(first)
        .and_then(xtn_number)
        .and_then(|n| phone::to_e164(&n, &ctx.config.phone_plan))
}

/// `YYYYMMDD` (longer DTM values are cut to the date), years in
/// [`bounds`](crate::bounds) only.
pub fn parse_date(v: &str) -> Option<Date> {
    let digits = v.get(..8)?;
    let (y, m, d) = (
        digits.get(..4)?.parse().ok()?,
        digits.get(4..6)?.parse().ok()?,
        digits.get(6..8)?.parse().ok()?,
    );
    Date::new(y, m, d)
        .ok()
        .filter(|d| crate::bounds::date_in_range(*d))
}

/// HL7 DTM: `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`. Without an offset the
/// time is in the clinic's time zone.
pub fn parse_dtm(v: &str, tz: &TimeZone) -> Option<Timestamp> {
    let v = v.trim();
    let (body, offset) = match v.find(['+', '-']) {
        Some(i) => (v.get(..i)?, Some(v.get(i..)?)),
        None => (v, None),
    };
    let body = body.split('.').next()?;
    if body.len() < 8 || !body.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i8> {
        body.get(r).map_or(Some(0), |s| s.parse().ok())
    };
    let date = parse_date(body)?;
    let dt = DateTime::from_parts(
        date,
        jiff::civil::Time::new(num(8..10)?, num(10..12)?, num(12..14)?, 0).ok()?,
    );
    match offset {
        Some(o) if o.len() == 5 => {
            let sign: i32 = if o.starts_with('-') { -1 } else { 1 };
            let hours: i32 = o.get(1..3)?.parse().ok()?;
            let mins: i32 = o.get(3..5)?.parse().ok()?;
            if mins >= 60 || hours * 60 + mins > crate::bounds::MAX_OFFSET_MINUTES {
                return None;
            }
            let offset = jiff::tz::Offset::from_seconds(sign * (hours * 3600 + mins * 60)).ok()?;
            offset.to_timestamp(dt).ok()
        }
        Some(_) => None,
        None => tz
            .to_ambiguous_zoned(dt)
            .compatible()
            .ok()
            .map(|z| z.timestamp()),
    }
}

/// A duration in minutes from a quantity and a unit code (MIN, min, M, S,
/// s, SEC, H, HR, h, D …). Unknown units are read as minutes.
pub fn minutes(quantity: &str, unit: Option<&str>) -> Option<u32> {
    let quantity = quantity.trim();
    // v2.3 TQ durations put the unit first: "M20", "H1", "S1800".
    let (quantity, unit) = match quantity.chars().next() {
        Some(c) if c.is_ascii_alphabetic() && unit.is_none() => {
            (quantity.get(1..)?, Some(quantity.get(..1)?))
        }
        _ => (quantity, unit),
    };
    let q: f64 = quantity.trim().parse().ok()?;
    if !q.is_finite() || q < 0.0 {
        return None;
    }
    let unit = unit
        .map(|u| u.trim().to_ascii_uppercase())
        .unwrap_or_default();
    let factor = match unit.as_str() {
        "S" | "SEC" | "SECOND" | "SECONDS" => 1.0 / 60.0,
        "M" | "MIN" | "MINUTE" | "MINUTES" => 1.0,
        "H" | "HR" | "HOUR" | "HOURS" => 60.0,
        "D" | "DAY" | "DAYS" => 1440.0,
        _ => 1.0,
    };
    let m = (q * factor).round();
    (m <= f64::from(u32::MAX)).then_some(m as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtm_forms() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let t = parse_dtm("20261201093000", &berlin).unwrap();
        assert_eq!(t.to_string(), "2026-12-01T08:30:00Z");
        let t = parse_dtm("202612010930+0000", &berlin).unwrap();
        assert_eq!(t.to_string(), "2026-12-01T09:30:00Z");
        let t = parse_dtm("20260701093000.1234-0500", &berlin).unwrap();
        assert_eq!(t.to_string(), "2026-07-01T14:30:00Z");
        assert!(parse_dtm("2026", &berlin).is_none());
        assert!(parse_dtm("20261341", &berlin).is_none());
        assert!(parse_dtm("", &berlin).is_none());
        assert!(parse_dtm("00000101", &berlin).is_none());
        assert!(parse_dtm("99991231235959", &berlin).is_none());
        assert!(parse_dtm("189912312359", &berlin).is_none());
        assert!(parse_dtm("220001010000", &berlin).is_none());
        assert!(parse_dtm("202612010930+1500", &berlin).is_none());
        assert!(parse_dtm("202612010930+0060", &berlin).is_none());
        assert!(parse_dtm("202612010930+1400", &berlin).is_some());
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(minutes("30", Some("MIN")), Some(30));
        assert_eq!(minutes("30", Some("min")), Some(30));
        assert_eq!(minutes("1800", Some("s")), Some(30));
        assert_eq!(minutes("1", Some("H")), Some(60));
        assert_eq!(minutes("20", None), Some(20));
        assert_eq!(minutes("M20", None), Some(20));
        assert_eq!(minutes("H1", None), Some(60));
        assert_eq!(minutes("x", None), None);
        assert_eq!(minutes("-5", None), None);
    }

    #[test]
    fn field_paths() {
        assert_eq!(
            FieldPath::parse("ZCN-2"),
            Some(FieldPath {
                segment: "ZCN".into(),
                field: 2,
                component: 1
            })
        );
        assert_eq!(FieldPath::parse("PD1-12.1").unwrap().field, 12);
        assert_eq!(FieldPath::parse("pid-3"), None);
        assert_eq!(FieldPath::parse("ZCN"), None);
    }
}
