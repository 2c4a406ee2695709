//! The local API over the real Unix socket: FHIR-shaped resources, the
//! durable event feed, erasure, idempotency, size limits, problem+json.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::audit::AuditDraft;
use clinic_relay::model::{Event, EventKind};
use clinic_relay::vault::{Owner, Tree, Txn};
use serde_json::json;

fn patient_body(mrn: &str) -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:clinic-relay:mrn", "value": mrn}],
        "name": [{"family": "ZZAPI", "given": ["ZZGIVEN"]}],
        "birthDate": "1901-02-03",
        "telecom": [{"system": "phone", "value": "0151 5550 4242"}],
        "communication": [{"language": {"coding": [{"code": "de"}]}}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_are_created_read_searched_and_erased() {
    let d = Daemon::start("").await;
    let (status, created) = d
        .api("POST", "/v1/patients", Some(patient_body("A-100")))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["telecom"][0]["value"], "+4915155504242");

    let (status, got) = d.api("GET", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["name"][0]["family"], "ZZAPI");
    assert_eq!(got["birthDate"], "1901-02-03");
    assert_eq!(got["identifier"][0]["value"], "A-100");

    let (status, found) = d
        .api(
            "GET",
            "/v1/patients?identifier=urn%3Aclinic-relay%3Amrn%7CA-100",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1);
    assert_eq!(found["entry"][0]["resource"]["id"], id.as_str());

    let (status, _) = d.api("DELETE", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, problem) = d.api("GET", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(problem["status"], 404);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:clinic-relay:problem:"));
    let (status, _) = d.api("DELETE", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_slots_and_results() {
    let d = Daemon::start("").await;
    let (_, p) = d
        .api("POST", "/v1/patients", Some(patient_body("A-200")))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let appt = json!({
        "resourceType": "Appointment", "status": "booked",
        "start": "2026-12-01T09:00:00Z", "minutesDuration": 20,
        "participant": [{"actor": {"reference": format!("Patient/{pid}")}}, {"actor": {"display": "Dr. ZZDOC"}}]
    });
    let (status, a) = d
        .api("PUT", "/v1/appointments/APPT-API-1", Some(appt))
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["status"], "booked");
    assert_eq!(a["end"], "2026-12-01T09:20:00Z");
    let (_, list) = d
        .api("GET", &format!("/v1/patients/{pid}/appointments"), None)
        .await;
    assert_eq!(list["total"], 1);

    let unknown = json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
        "participant": [{"actor": {"reference": format!("Patient/{}", "ab".repeat(16))}}]});
    let (status, _) = d
        .api("PUT", "/v1/appointments/APPT-API-2", Some(unknown))
        .await;
    assert_eq!(status, 422);

    let slots = json!([
        {"id": "S-1", "start": "2026-12-02T08:00:00Z", "end": "2026-12-02T08:15:00Z", "provider": "Dr. ZZDOC"},
        {"id": "S-2", "start": "2026-12-02T08:15:00Z", "end": "2026-12-02T08:30:00Z"}
    ]);
    let (status, got) = d.api("PUT", "/v1/slots", Some(slots)).await;
    assert_eq!(status, 200);
    assert_eq!(got["total"], 2);
    let (_, got) = d.api("PUT", "/v1/slots", Some(json!([{"id": "S-3", "start": "2026-12-03T08:00:00Z", "end": "2026-12-03T08:30:00Z"}]))).await;
    assert_eq!(got["total"], 1, "PUT replaces the whole set");
    assert_eq!(got["entry"][0]["resource"]["id"], "S-3");

    let (status, _) = d.api("GET", "/v1/results/NOPE", None).await;
    assert_eq!(status, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_and_malformed_bodies_are_rejected_clearly() {
    let d = Daemon::start("").await;
    // Declared too large: refused before the body is read.
    let raw = raw_request(
        &d.running.api_socket,
        b"POST /v1/patients HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n{",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(
        raw.contains("application/problem+json") && raw.contains("too-large"),
        "{raw}"
    );
    // Streamed (chunked, no length): cut off at the limit.
    let mut chunked =
        b"POST /v1/patients HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 100_000));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_request(&d.running.api_socket, &chunked).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let (status, problem) = api_call(
        &d.running.api_socket,
        "POST",
        "/v1/patients",
        Some(b"{\"identifier\": ZZMARK".to_vec()),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        !problem["detail"].as_str().unwrap().contains("ZZMARK"),
        "errors never echo input"
    );
    let (status, _) = d.api("PATCH", "/v1/patients", None).await;
    assert_eq!(status, 405);
    let (status, _) = d.api("GET", "/v2/nothing", None).await;
    assert_eq!(status, 404);
    // The daemon is still fine.
    let (status, s) = d.api("GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(s["whatsapp_mode"], "dry-run");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_apply_a_request_once() {
    let d = Daemon::start("").await;
    let headers = [
        ("idempotency-key", "req-42"),
        ("content-type", "application/json"),
    ];
    let body = || Some(patient_body("A-300").to_string().into_bytes());
    let (s1, _) = api_call(
        &d.running.api_socket,
        "POST",
        "/v1/patients",
        body(),
        &headers,
    )
    .await;
    let seq = d.running.vault.audit_seq();
    let (s2, _) = api_call(
        &d.running.api_socket,
        "POST",
        "/v1/patients",
        body(),
        &headers,
    )
    .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        d.running.vault.audit_seq(),
        seq,
        "the repeat was not applied"
    );
    d.stop().await;
}

fn event(kind: EventKind, n: u64) -> Event {
    Event {
        kind,
        time: t0(),
        patient: None,
        appointment: Some(format!("APPT-{n}")),
        slot: None,
        details: Default::default(),
    }
}

fn append_event(vault: &clinic_relay::vault::Vault, kind: EventKind, n: u64) -> u64 {
    let mut txn = Txn::new(t0());
    txn.append_json(Tree::Events, Owner::System, &event(kind, n))
        .unwrap();
    txn.audit(AuditDraft::new("test", "event"));
    vault.commit(txn).unwrap().last_in(Tree::Events).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_pages_long_polls_and_survives_a_restart() {
    let d = Daemon::start("").await;
    let vault = d.running.vault.clone();
    let c1 = tokio::task::spawn_blocking({
        let v = vault.clone();
        move || {
            (1..=3)
                .map(|n| append_event(&v, EventKind::AppointmentConfirmed, n))
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert_eq!(c1, vec![1, 2, 3]);
    let (_, page) = d.api("GET", "/v1/events?after=0&limit=2", None).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["cursor"], 2);
    assert_eq!(page["events"][0]["kind"], "appointment-confirmed");
    let (_, page) = d.api("GET", "/v1/events?after=2", None).await;
    assert_eq!(page["cursor"], 3);

    // A long-poll waiting at the end gets the next event as soon as it is durable.
    let socket = d.running.api_socket.clone();
    let waiter = tokio::spawn(async move {
        api_call(&socket, "GET", "/v1/events?after=3&wait=30", None, &[]).await
    });
    tokio::task::yield_now().await;
    let v = vault.clone();
    tokio::task::spawn_blocking(move || append_event(&v, EventKind::OptedOut, 4))
        .await
        .unwrap();
    let (_, got) = waiter.await.unwrap();
    assert_eq!(got["cursor"], 4);
    assert_eq!(got["events"][0]["kind"], "opted-out");

    // Nothing new: a short wait returns empty, with the same cursor.
    let (_, empty) = d.api("GET", "/v1/events?after=4&wait=1", None).await;
    assert_eq!(empty["events"].as_array().unwrap().len(), 0);
    assert_eq!(empty["cursor"], 4);

    // Restart: the feed is still there, and new events continue the sequence.
    drop(vault);
    let install = d.stop().await;
    let d = Daemon::start_in(install).await;
    let (_, all) = d.api("GET", "/v1/events?after=0", None).await;
    let cursors: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors, vec![1, 2, 3, 4]);
    let v = d.running.vault.clone();
    let next = tokio::task::spawn_blocking(move || append_event(&v, EventKind::StaffRequested, 5))
        .await
        .unwrap();
    assert_eq!(next, 5);
    d.stop().await;
}

/// Writes raw bytes to the API socket and returns what comes back (as much
/// as arrives before the server closes or 64 KiB).
async fn raw_request(socket: &std::path::Path, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    // The server may answer and close before taking the whole body.
    let _ = s.write_all(bytes).await;
    let mut out = vec![0u8; 65536];
    let mut n = 0;
    while n < out.len() {
        match s.read(&mut out[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if String::from_utf8_lossy(&out[..n]).contains("}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_and_result_documents() {
    use base64::Engine as _;
    let d = Daemon::start("").await;
    let (_, p) = d
        .api("POST", "/v1/patients", Some(patient_body("A-400")))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (status, consent) = d
        .api(
            "PUT",
            &format!("/v1/patients/{pid}/consent"),
            Some(json!({"state": "opted-in"})),
        )
        .await;
    assert_eq!(status, 200, "{consent}");
    assert_eq!(consent["state"], "opted-in");
    assert_eq!(consent["source"], "staff");
    let (status, _) = d
        .api(
            "PUT",
            &format!("/v1/patients/{pid}/consent"),
            Some(json!({"state": "maybe"})),
        )
        .await;
    assert_eq!(status, 400);

    // A result arrives over HL7 and is read back as a DiagnosticReport.
    let pdf = b"%PDF-1.4\n% ZZTEST synthetic\n%%EOF\n".to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pdf);
    let msg = [
        msh("ORU^R01", "R1", "2.5.1"),
        "PID|1||A-400^^^^MR||ZZAPI^ZZGIVEN||19010203".to_owned(),
        "OBR|1||ORDER-400".to_owned(),
        format!("OBX|1|ED|PDF||^AP^PDF^Base64^{b64}||||||F"),
    ]
    .join("\r");
    let mut c = d.mllp().await;
    assert_eq!(msa(&c.send(&msg).await).0, "AA");
    let (status, report) = d.api("GET", "/v1/results/ORDER-400", None).await;
    assert_eq!(status, 200);
    assert_eq!(report["resourceType"], "DiagnosticReport");
    assert_eq!(report["status"], "final");
    assert_eq!(report["subject"]["reference"], format!("Patient/{pid}"));
    let data = report["presentedForm"][0]["data"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
        pdf
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_phi_are_audited_with_the_caller() {
    let d = Daemon::start("").await;
    let (_, p) = d
        .api("POST", "/v1/patients", Some(patient_body("A-500")))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let (status, _) = d.api("GET", &format!("/v1/patients/{pid}"), None).await;
    assert_eq!(status, 200);
    // Read audits are written in batches off the request path; a stop
    // drains them, so after it the entry must be on disk.
    let install = d.stop().await;
    let vault = install.open();
    let reads: Vec<_> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action == "patient.read")
        .collect();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].actor.starts_with("api:uid="), "{}", reads[0].actor);
    assert_eq!(
        reads[0].subject.as_deref(),
        Some(format!("p-{pid}").as_str())
    );
    vault.verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_paths_are_percent_decoded_and_405_says_what_is_allowed() {
    let d = Daemon::start("").await;
    let (_, p) = d
        .api("POST", "/v1/patients", Some(patient_body("A-600")))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let appt = json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
        "participant": [{"actor": {"reference": format!("Patient/{pid}")}}]});
    let (status, a) = d.api("PUT", "/v1/appointments/A%2F1+2", Some(appt)).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["id"], "A/1+2");
    assert_eq!(
        d.running
            .vault
            .get_appointment("A/1+2")
            .unwrap()
            .unwrap()
            .patient
            .to_hex(),
        pid
    );

    let raw = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&d.running.api_socket)
            .await
            .unwrap();
        s.write_all(b"DELETE /v1/slots HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    };
    assert!(raw.starts_with("http/1.1 405"), "{raw}");
    assert!(raw.contains("allow: get, put"), "{raw}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_scoped_to_its_request() {
    let d = Daemon::start("").await;
    let headers = [("idempotency-key", "same-key")];
    let (s1, _) = api_call(
        &d.running.api_socket,
        "POST",
        "/v1/patients",
        Some(patient_body("A-700").to_string().into_bytes()),
        &headers,
    )
    .await;
    let slots =
        json!([{"id": "S-9", "start": "2026-12-02T08:00:00Z", "end": "2026-12-02T08:15:00Z"}]);
    let (s2, got) = api_call(
        &d.running.api_socket,
        "PUT",
        "/v1/slots",
        Some(slots.to_string().into_bytes()),
        &headers,
    )
    .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        got["total"], 1,
        "a different request with the same key is applied"
    );
    d.stop().await;
}
