//! The KPI lines of `clinic-relay status`: the last 30 days, from
//! `GET /v1/kpis` (its default range).

use serde_json::Value;

fn n(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn rate(v: &Value, which: &str) -> String {
    let base = format!("/visits/{which}_confirmed_reminder");
    let no_shows = n(v, &format!("{base}/no_shows"));
    let ended = no_shows.saturating_add(n(v, &format!("{base}/fulfilled")));
    match v
        .pointer(&format!("{base}/no_show_rate"))
        .and_then(Value::as_f64)
    {
        Some(r) => format!("{:.1}% ({no_shows} of {ended})", r * 100.0),
        None => "none ended".to_owned(),
    }
}

/// The lines for a `/v1/kpis` document.
pub fn lines(v: &Value) -> Vec<String> {
    let median = v
        .pointer("/answer_delay_seconds/median")
        .and_then(Value::as_f64)
        .map_or_else(
            || "no answers".to_owned(),
            |s| format!("median answer after {} min", (s / 60.0).round()),
        );
    vec![
        format!(
            "reminders (last 30 days): {} sent, {} delivered, {} read, {} confirmed, {} cancelled, {} rescheduled; {} opt-out(s); {median}",
            n(v, "/reminders/sent"),
            n(v, "/reminders/delivered"),
            n(v, "/reminders/read"),
            n(v, "/reminders/confirmed"),
            n(v, "/reminders/cancelled"),
            n(v, "/reminders/rescheduled"),
            n(v, "/opt_outs"),
        ),
        format!(
            "no-shows (last 30 days): {} with a confirmed reminder, {} without",
            rate(v, "with"),
            rate(v, "without")
        ),
    ]
}

/// Asks the daemon; a failure is one line saying so (the KPIs are not part
/// of the daemon's health).
pub fn fetch(socket: &std::path::Path) -> Vec<String> {
    match crate::api::client::request_blocking(socket, "GET", "/v1/kpis") {
        Ok((200, body)) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => lines(&v),
            Err(_) => vec!["KPIs: unreadable answer".to_owned()],
        },
        Ok((code, _)) => vec![format!("KPIs: the daemon answered {code}")],
        Err(e) => vec![format!("KPIs: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_the_kpis_document() {
        let mut s = crate::kpi::read::Summary::default();
        s.counts.insert(crate::kpi::Kpi::Sent, 12);
        s.counts.insert(crate::kpi::Kpi::NoShowConfirmed, 1);
        s.counts.insert(crate::kpi::Kpi::FulfilledConfirmed, 3);
        s.delays = vec![120, 600];
        let l = lines(&s.to_json());
        assert!(
            l[0].starts_with("reminders (last 30 days): 12 sent, 0 delivered"),
            "{l:?}"
        );
        assert!(l[0].ends_with("median answer after 6 min"), "{l:?}");
        assert_eq!(
            l[1],
            "no-shows (last 30 days): 25.0% (1 of 4) with a confirmed reminder, none ended without"
        );
    }
}
