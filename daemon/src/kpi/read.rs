//! Summing the KPI entries of a range of days (`/v1/kpis`, `/metrics`,
//! `clinic-relay status`).

use super::{parse_count_key, Kpi, K_COUNT};
use crate::vault::{Tree, Vault, VaultResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The upper bounds (seconds) of the answer-delay histogram's buckets:
/// 1 min, 5 min, 15 min, 1 h, 4 h, 12 h, 1 day, 3 days (then +Inf).
pub const DELAY_BUCKETS: [u32; 8] = [60, 300, 900, 3_600, 14_400, 43_200, 86_400, 259_200];

/// The KPIs of a range of days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub counts: BTreeMap<Kpi, u64>,
    /// Seconds from a reminder to its answer, one per answer that followed
    /// a reminder, sorted.
    pub delays: Vec<u32>,
    /// Seconds from a hand-off to the first staff reply, one per reply,
    /// sorted.
    pub staff_response: Vec<u32>,
}

/// The median of sorted seconds (the mean of the middle two for an even
/// count).
fn median(sorted: &[u32]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let at = |i: usize| f64::from(sorted.get(i).copied().unwrap_or(0));
    Some(if n % 2 == 1 {
        at(mid)
    } else {
        (at(mid - 1) + at(mid)) / 2.0
    })
}

impl Summary {
    pub fn get(&self, kpi: Kpi) -> u64 {
        self.counts.get(&kpi).copied().unwrap_or(0)
    }

    /// The median answer delay in seconds (the mean of the middle two for
    /// an even count).
    pub fn median_delay(&self) -> Option<f64> {
        median(&self.delays)
    }

    /// The median time from a hand-off to the first staff reply, seconds.
    pub fn median_staff_response(&self) -> Option<f64> {
        median(&self.staff_response)
    }

    /// No-shows / (no-shows + fulfilled), of visits with or without a
    /// confirmed reminder; None when there were none.
    pub fn no_show_rate(&self, confirmed: bool) -> Option<f64> {
        let (ns, ful) = if confirmed {
            (Kpi::NoShowConfirmed, Kpi::FulfilledConfirmed)
        } else {
            (Kpi::NoShowUnconfirmed, Kpi::FulfilledUnconfirmed)
        };
        let (ns, ful) = (self.get(ns), self.get(ful));
        let total = ns.saturating_add(ful);
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        (total > 0).then(|| ns as f64 / total as f64)
    }

    /// Cumulative bucket counts for [`DELAY_BUCKETS`] (without +Inf).
    pub fn delay_buckets(&self) -> [u64; DELAY_BUCKETS.len()] {
        let mut out = [0u64; DELAY_BUCKETS.len()];
        for (slot, le) in out.iter_mut().zip(DELAY_BUCKETS) {
            *slot = self.delays.partition_point(|d| *d <= le) as u64;
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let visits = |confirmed: bool| {
            let (ns, ful) = if confirmed {
                (Kpi::NoShowConfirmed, Kpi::FulfilledConfirmed)
            } else {
                (Kpi::NoShowUnconfirmed, Kpi::FulfilledUnconfirmed)
            };
            json!({
                "no_shows": self.get(ns),
                "fulfilled": self.get(ful),
                "no_show_rate": self.no_show_rate(confirmed),
            })
        };
        json!({
            "reminders": {
                "sent": self.get(Kpi::Sent),
                "delivered": self.get(Kpi::Delivered),
                "read": self.get(Kpi::Read),
                "confirmed": self.get(Kpi::Confirmed),
                "cancelled": self.get(Kpi::Cancelled),
                "rescheduled": self.get(Kpi::Rescheduled),
            },
            "opt_outs": self.get(Kpi::OptOut),
            "visits": {
                "with_confirmed_reminder": visits(true),
                "without_confirmed_reminder": visits(false),
            },
            "answer_delay_seconds": {
                "count": self.delays.len(),
                "median": self.median_delay(),
            },
            "staff_response_seconds": {
                "count": self.staff_response.len(),
                "median": self.median_staff_response(),
            },
        })
    }
}

/// Sums the entries of the days `from..=to` (YYYYMMDD).
pub fn summary(vault: &Vault, from: u32, to: u32) -> VaultResult<Summary> {
    let mut out = Summary::default();
    scan(vault, from, to, |_, kpi, secs| out.add(kpi, secs))?;
    out.finish();
    Ok(out)
}

/// The entries of the days `from..=to`, summed per day (days without an
/// entry are absent), in one scan: the dashboard's charts.
pub fn daily(vault: &Vault, from: u32, to: u32) -> VaultResult<BTreeMap<u32, Summary>> {
    let mut out: BTreeMap<u32, Summary> = BTreeMap::new();
    scan(vault, from, to, |day, kpi, secs| {
        out.entry(day).or_default().add(kpi, secs);
    })?;
    out.values_mut().for_each(Summary::finish);
    Ok(out)
}

impl Summary {
    /// Adds `other`'s entries (the days of a range summed from
    /// [`daily`] without a second scan).
    pub fn merge(&mut self, other: &Summary) {
        for (k, n) in &other.counts {
            *self.counts.entry(*k).or_default() += n;
        }
        self.delays.extend_from_slice(&other.delays);
        self.staff_response.extend_from_slice(&other.staff_response);
        self.finish();
    }

    fn add(&mut self, kpi: Kpi, secs: Option<u32>) {
        *self.counts.entry(kpi).or_default() += 1;
        match (kpi, secs) {
            (Kpi::StaffResponse, Some(s)) => self.staff_response.push(s),
            (_, Some(s)) => self.delays.push(s),
            (_, None) => {}
        }
    }

    fn finish(&mut self) {
        self.delays.sort_unstable();
        self.staff_response.sort_unstable();
    }
}

/// Calls `each(day, kpi, seconds)` for every count entry of the days
/// `from..=to`; `seconds` for the kinds that carry a duration.
fn scan<F>(vault: &Vault, from: u32, to: u32, mut each: F) -> VaultResult<()>
where
    F: FnMut(u32, Kpi, Option<u32>),
{
    let mut start = vec![K_COUNT];
    start.extend_from_slice(&from.to_be_bytes());
    // Keys only: opening 10⁵ sealed empty values is most of the cost; only
    // answers and staff replies carry a value (a duration), read one by one.
    for r in vault.scan_keys_from(Tree::Kpi, &start) {
        let k = r?;
        if k.first() != Some(&K_COUNT) {
            break; // past the count entries
        }
        let Some((day, kpi)) = parse_count_key(&k) else {
            continue; // a kind this version does not know
        };
        if day > to {
            break;
        }
        let timed = matches!(
            kpi,
            Kpi::Confirmed | Kpi::Cancelled | Kpi::Rescheduled | Kpi::StaffResponse
        );
        let secs = if timed {
            let v = vault.get(Tree::Kpi, &k)?.unwrap_or_default();
            <[u8; 4]>::try_from(v.as_slice())
                .ok()
                .map(u32::from_be_bytes)
        } else {
            None
        };
        each(day, kpi, secs);
    }
    Ok(())
}

/// Every day's entries.
pub fn total(vault: &Vault) -> VaultResult<Summary> {
    summary(vault, 0, u32::MAX)
}
