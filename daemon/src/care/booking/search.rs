//! Which open slots the Book menu entry offers: pure, over the slot table
//! in start order (`Vault::slots_by_start`), the holds of other patients
//! and the time. A page is found by a binary search for `now` and a walk
//! forward, so a list costs the slots it skips, not the whole table.

use crate::model::Slot;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// Slot rows per list: Meta allows ten rows, one is kept for "Later".
pub const PAGE: usize = 9;

/// What the patient chose first when the open slots name several
/// services (or else several providers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "by", content = "code", rename_all = "kebab-case")]
pub enum Group {
    Service(String),
    Provider(String),
}

impl Group {
    /// The code the config's labels are keyed by.
    pub fn code(&self) -> &str {
        match self {
            Group::Service(c) | Group::Provider(c) => c,
        }
    }

    fn admits(&self, s: &Slot) -> bool {
        match self {
            Group::Service(c) => s.service.as_deref() == Some(c),
            Group::Provider(c) => s.provider.as_deref() == Some(c),
        }
    }
}

/// The window and what is not on offer.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub now: Timestamp,
    pub days: u32,
    /// Slot ids held for other patients.
    pub held: &'a HashSet<String>,
}

impl<'a> Window<'a> {
    fn until(&self) -> Timestamp {
        let horizon = SignedDuration::from_hours(i64::from(self.days) * 24);
        self.now.saturating_add(horizon).unwrap_or(self.now)
    }

    /// The open slots in the window, soonest first (`sorted` is in start
    /// order).
    fn open<'s>(self, sorted: &'s [Slot]) -> impl Iterator<Item = &'s Slot> + 's
    where
        'a: 's,
    {
        let from = sorted.partition_point(|s| s.start <= self.now);
        let until = self.until();
        sorted
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(move |s| s.start <= until)
            .filter(move |s| !self.held.contains(&s.id))
    }
}

/// The choices before the times: the services of the open slots when
/// there are several, else their providers when there are several, else
/// none (straight to the times). Sorted by code.
pub fn groups(sorted: &[Slot], w: &Window<'_>) -> Vec<Group> {
    let mut services = BTreeSet::new();
    let mut providers = BTreeSet::new();
    for s in w.open(sorted) {
        if let Some(c) = &s.service {
            services.insert(c.as_str());
        }
        if let Some(p) = &s.provider {
            providers.insert(p.as_str());
        }
    }
    if services.len() > 1 {
        services
            .into_iter()
            .map(|c| Group::Service(c.to_owned()))
            .collect()
    } else if providers.len() > 1 {
        providers
            .into_iter()
            .map(|p| Group::Provider(p.to_owned()))
            .collect()
    } else {
        Vec::new()
    }
}

/// Page `page` (from 0) of the open slots of `group`: at most [`PAGE`]
/// slots, and whether more follow.
pub fn page<'s>(
    sorted: &'s [Slot],
    w: &Window<'s>,
    group: Option<&Group>,
    page: u32,
) -> (Vec<&'s Slot>, bool) {
    let skip = usize::try_from(page)
        .unwrap_or(usize::MAX)
        .saturating_mul(PAGE);
    let mut it = w
        .open(sorted)
        .filter(|s| group.is_none_or(|g| g.admits(s)))
        .skip(skip);
    let rows: Vec<&Slot> = it.by_ref().take(PAGE).collect();
    let more = it.next().is_some();
    (rows, more)
}

/// The open slots that start at `start` (a row's id names the start, so
/// that a tap is resolved without hashing the whole table).
pub fn at<'s>(sorted: &'s [Slot], w: &Window<'_>, start: Timestamp) -> Vec<&'s Slot> {
    let from = sorted.partition_point(|s| s.start < start);
    if start <= w.now || start > w.until() {
        return Vec::new();
    }
    sorted
        .get(from..)
        .unwrap_or_default()
        .iter()
        .take_while(|s| s.start == start)
        .filter(|s| !w.held.contains(&s.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn slot(id: &str, start: Timestamp, service: &str, provider: &str) -> Slot {
        Slot {
            id: id.to_owned(),
            start,
            duration_minutes: 15,
            provider: Some(provider.to_owned()),
            location: None,
            service: Some(service.to_owned()),
        }
    }

    fn sorted(mut v: Vec<Slot>) -> Vec<Slot> {
        v.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
        v
    }

    #[test]
    fn pages_skip_the_past_the_far_future_and_held_slots() {
        let now = ts("2027-01-10T08:00:00Z");
        let mut v: Vec<Slot> = (0..25)
            .map(|i| {
                let t = now + SignedDuration::from_hours(i);
                slot(&format!("S{i:02}"), t, "A", "D1")
            })
            .collect();
        v.push(slot(
            "FAR",
            now + SignedDuration::from_hours(24 * 20),
            "A",
            "D1",
        ));
        let v = sorted(v);
        let held: HashSet<String> = ["S03".to_owned()].into();
        let w = Window {
            now,
            days: 14,
            held: &held,
        };
        // S00 starts now: not in the future any more.
        let (p0, more) = page(&v, &w, None, 0);
        let ids: Vec<&str> = p0.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["S01", "S02", "S04", "S05", "S06", "S07", "S08", "S09", "S10"]
        );
        assert!(more);
        let (p2, more) = page(&v, &w, None, 2);
        assert_eq!(p2.len(), 5);
        assert!(!more);
        assert!(page(&v, &w, None, 3).0.is_empty());
        assert!(page(&v, &w, None, u32::MAX).0.is_empty());
        assert!(groups(&v, &w).is_empty());
        let t3 = now + SignedDuration::from_hours(3);
        assert!(at(&v, &w, t3).is_empty(), "held");
        let t4 = now + SignedDuration::from_hours(4);
        assert_eq!(at(&v, &w, t4)[0].id, "S04");
        assert!(at(&v, &w, now).is_empty());
    }

    #[test]
    fn several_services_come_first_else_several_providers() {
        let now = ts("2027-01-10T08:00:00Z");
        let h = |n| now + SignedDuration::from_hours(n);
        let held = HashSet::new();
        let w = Window {
            now,
            days: 14,
            held: &held,
        };
        let v = sorted(vec![
            slot("1", h(1), "B", "D1"),
            slot("2", h(2), "A", "D2"),
            slot("3", h(3), "A", "D1"),
        ]);
        assert_eq!(
            groups(&v, &w),
            [Group::Service("A".into()), Group::Service("B".into())]
        );
        let a = Group::Service("A".into());
        let ids: Vec<&str> = page(&v, &w, Some(&a), 0)
            .0
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["2", "3"]);
        let v = sorted(vec![slot("1", h(1), "A", "D2"), slot("2", h(2), "A", "D1")]);
        assert_eq!(
            groups(&v, &w),
            [Group::Provider("D1".into()), Group::Provider("D2".into())]
        );
    }
}
