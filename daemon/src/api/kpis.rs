//! `GET /v1/kpis?from=&to=` and `GET /metrics` (see `crate::kpi`). Neither
//! shows PHI, so neither audits a read.

use super::problem::Problem;
use crate::kpi::{self, prom, read};
use crate::vault::{Tree, Vault};
use jiff::civil::Date;
use jiff::Timestamp;
use serde_json::{json, Value};

/// The longest range `/v1/kpis` sums (a year, leap day included).
pub const MAX_DAYS: i32 = 366;

/// The default range: the 30 days up to today.
const DEFAULT_DAYS: i32 = 30;

pub(crate) fn today(vault: &Vault, now: Timestamp) -> Date {
    let tz = vault
        .care()
        .map_or(jiff::tz::TimeZone::UTC, |s| s.time_zone.clone());
    now.to_zoned(tz).date()
}

fn parse_date(name: &str, value: &str) -> Result<Date, Problem> {
    let ok = value.len() == 10 && value.as_bytes().get(4) == Some(&b'-');
    value
        .parse::<Date>()
        .ok()
        .filter(|_| ok)
        .ok_or_else(|| Problem::unprocessable(format!("{name}: expected a date YYYY-MM-DD")))
}

/// The range `from..=to` of a request: both default (the last 30 days up to
/// today, clinic time); `from` after `to` or more than [`MAX_DAYS`] days are
/// refused.
pub fn range(
    vault: &Vault,
    now: Timestamp,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Date, Date), Problem> {
    let to = match to {
        Some(t) => parse_date("to", t)?,
        None => today(vault, now),
    };
    let from = match from {
        Some(f) => parse_date("from", f)?,
        None => to
            .checked_sub(jiff::Span::new().days(DEFAULT_DAYS - 1))
            .unwrap_or(to),
    };
    if from > to {
        return Err(Problem::unprocessable("from: must not be after to"));
    }
    // Civil days are 24 hours each here (no time zone in between).
    let days = from.duration_until(to).as_hours() / 24 + 1;
    if days > i64::from(MAX_DAYS) {
        return Err(Problem::unprocessable(format!(
            "from, to: at most {MAX_DAYS} days at once"
        )));
    }
    Ok((from, to))
}

/// The body of `GET /v1/kpis`.
pub fn kpis(
    vault: &Vault,
    now: Timestamp,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Value, Problem> {
    let (from, to) = range(vault, now, from, to)?;
    let s = read::summary(vault, kpi::day_number(from), kpi::day_number(to))
        .map_err(|e| Problem::internal(format!("the KPIs could not be read: {e}")))?;
    let mut body = s.to_json();
    if let Some(o) = body.as_object_mut() {
        o.insert("from".to_owned(), json!(from.to_string()));
        o.insert("to".to_owned(), json!(to.to_string()));
    }
    Ok(body)
}

/// The body of `GET /metrics`.
pub fn metrics(vault: &Vault) -> Result<String, Problem> {
    let s = read::total(vault)
        .map_err(|e| Problem::internal(format!("the KPIs could not be read: {e}")))?;
    let g = prom::Gauges {
        wa_outbox_depth: vault.count(Tree::WaOutbox),
        pms_outbox_depth: vault.count(Tree::PmsOutbox),
        wa_dead_letters: vault.count(Tree::WaDeadLetters),
    };
    Ok(prom::encode(&s, g))
}
