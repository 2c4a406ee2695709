//! Regression tests for the findings of issue 8's hostile testing: each
//! test fails on the code before its fix.

use crate::pms_support::*;
use serde_json::json;

fn siu(control_id: &str, appt: &str, sch11: &str, tq1: Option<&str>) -> String {
    let mut segs = vec![
        msh("SIU^S12^SIU_S12", control_id, "2.5.1"),
        format!("SCH|{appt}^ZZPMS|{appt}^ZZPMS|||||CHECKUP||||{sch11}||||||||||||||Booked"),
    ];
    if let Some(tq1) = tq1 {
        segs.push(tq1.to_owned());
    }
    segs.push("PID|1||ZZH-1^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203|F".to_owned());
    segs.push("RGS|1|A".to_owned());
    segs.join("\r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_values_out_of_range_are_refused_and_never_crash_a_read() {
    let d = Daemon::start("").await;
    let mut m = d.mllp().await;
    let poisoned = [
        // SCH-11.3, a v2.3 duration of u32::MAX minutes.
        (
            "P1",
            siu("P1", "HX-1", "^^4294967295^20261201100000", None),
            "SCH-11",
        ),
        // TQ1-6, the service duration.
        (
            "P2",
            siu(
                "P2",
                "HX-2",
                "",
                Some("TQ1|1|||||4294967295^min|20261201100000"),
            ),
            "TQ1-6",
        ),
        // TQ1-8 − TQ1-7: a year long.
        (
            "P3",
            siu(
                "P3",
                "HX-3",
                "",
                Some("TQ1|1||||||20261201100000|20271201100000"),
            ),
            "TQ1-8",
        ),
        // Years 9999 and 0000.
        (
            "P4",
            siu("P4", "HX-4", "^^30^99991231235900", None),
            "SCH-11",
        ),
        (
            "P5",
            siu("P5", "HX-5", "^^30^00000101000000", None),
            "SCH-11",
        ),
        // An offset no zone has.
        (
            "P6",
            siu("P6", "HX-6", "^^30^202612011000+9900", None),
            "SCH-11",
        ),
    ];
    for (ctl, msg, at) in &poisoned {
        let ack = m.send(msg).await;
        assert_eq!(msa(&ack), ("AE".to_owned(), (*ctl).to_owned()), "{at}");
        assert_eq!(err(&ack), Some(("102".to_owned(), (*at).to_owned())));
    }
    // MSH-7 in year 0000.
    let msg =
        siu("P7", "HX-7", "^^30^20261201100000", None).replace("20261125093000", "00001125093000");
    let ack = m.send(&msg).await;
    assert_eq!(msa(&ack).0, "AE");
    assert_eq!(err(&ack), Some(("102".to_owned(), "MSH-7".to_owned())));

    // The longest accepted: one week, stored and read back.
    let ok = siu("OK1", "HX-OK", "^^10080^20261201100000", None);
    assert_eq!(msa(&m.send(&ok).await).0, "AA");
    let (status, a) = d.api("GET", "/v1/appointments/HX-OK", None).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["end"], "2026-12-08T09:00:00Z");
    let patient = a["participant"][0]["actor"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    for id in ["HX-1", "HX-2", "HX-3", "HX-4", "HX-5", "HX-6", "HX-7"] {
        let (status, _) = d.api("GET", &format!("/v1/appointments/{id}"), None).await;
        assert_eq!(status, 404, "{id}");
    }

    // The API: the same values get 422 and nothing is stored.
    let reference = json!([{"actor": {"reference": format!("Patient/{patient}")}}]);
    for body in [
        json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
               "minutesDuration": 4_294_967_295u32, "participant": reference}),
        json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
               "end": "2027-12-01T09:00:00Z", "participant": reference}),
        json!({"status": "booked", "start": "9999-01-01T00:00:00Z",
               "participant": reference}),
        json!({"status": "booked", "start": "0001-01-01T00:00:00Z",
               "participant": reference}),
    ] {
        let (status, problem) = d.api("PUT", "/v1/appointments/HX-API", Some(body)).await;
        assert_eq!(status, 422, "{problem}");
    }
    let (status, _) = d.api("GET", "/v1/appointments/HX-API", None).await;
    assert_eq!(status, 404);
    let slots =
        json!([{"id": "S-X", "start": "9999-01-01T00:00:00Z", "end": "9999-01-01T01:00:00Z"}]);
    assert_eq!(d.api("PUT", "/v1/slots", Some(slots)).await.0, 422);
    let slots =
        json!([{"id": "S-Y", "start": "2026-12-01T00:00:00Z", "end": "2027-12-31T23:00:00Z"}]);
    assert_eq!(d.api("PUT", "/v1/slots", Some(slots)).await.0, 422);

    let (status, list) = d
        .api("GET", &format!("/v1/patients/{patient}/appointments"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    d.stop().await;
}
