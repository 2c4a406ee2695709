//! The WhatsApp webhook receiver (issue 9): config, signatures over raw
//! bytes, limits, parsing, durable dedupe and the state a status ends in.

use crate::support::*;
use clinic_relay::config::Config;

fn config_error(webhook: &str) -> String {
    let install = TestInstall::new(&format!("[webhook]\n{webhook}"));
    Config::load(&install.config).unwrap_err().to_string()
}

#[test]
fn webhook_config_errors_name_the_key_and_the_fix() {
    let e = config_error("listen = \"nowhere\"\n");
    assert!(e.contains("webhook.listen") && e.contains("Fix:"), "{e}");
    let e = config_error("listen = \"127.0.0.1:0\"\nverify_token_file = \"v\"\n");
    assert!(
        e.contains("webhook.app_secret_file") && e.contains("Fix:"),
        "{e}"
    );
    let e = config_error(
        "listen = \"127.0.0.1:0\"\napp_secret_file = \"a\"\nverify_token_file = \"v\"\nmax_body_bytes = 1\n",
    );
    assert!(e.contains("webhook.max_body_bytes"), "{e}");
    let e = config_error(
        "listen = \"127.0.0.1:0\"\napp_secret_file = \"a\"\nverify_token_file = \"v\"\ntls_cert = \"c\"\n",
    );
    assert!(
        e.contains("webhook.tls_cert") && e.contains("tls_key"),
        "{e}"
    );
    let e = config_error("listen = \"127.0.0.1:0\"\nsecret = \"inline\"\n");
    assert!(e.contains("webhook.secret"), "{e}");
}

#[test]
fn webhook_config_defaults() {
    let install = TestInstall::new(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"a\"\nverify_token_file = \"v\"\n",
    );
    let c = Config::load(&install.config).unwrap().webhook.unwrap();
    assert_eq!(c.path, "/webhook");
    assert_eq!(c.max_body_bytes, 3 * 1024 * 1024);
    assert_eq!(c.app_secret_file, install.tmp.path().join("a"));
    assert!(!c.generate_dev_secrets && c.tls.is_none());
    let off = TestInstall::new("");
    assert!(Config::load(&off.config).unwrap().webhook.is_none());
}

// ---- the receiver over real sockets ---------------------------------------

use crate::pms_support::Daemon;
use clinic_relay::model::{EventKind, Patient};
use clinic_relay::vault::Tree;
use clinic_relay::webhook::payload::StatusKind;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;

const SECRET: &str = "test-app-secret-0123456789abcdef";
const OLD_SECRET: &str = "previous-app-secret-fedcba987654";
const TOKEN: &str = "verify me+/=";

pub async fn start_receiver(extra: &str) -> Daemon {
    let install = TestInstall::new(&format!(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         previous_app_secret_file = \"old-secret\"\nverify_token_file = \"verify-token\"\n{extra}"
    ));
    write_secret(install.tmp.path(), "app-secret", SECRET);
    write_secret(install.tmp.path(), "old-secret", OLD_SECRET);
    write_secret(install.tmp.path(), "verify-token", TOKEN);
    Daemon::start_in(install).await
}

pub use graph_sim::webhooks::sign;

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn post(d: &Daemon, body: &[u8], signature: Option<String>) -> u16 {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(s) = signature {
        headers.push(("x-hub-signature-256", s));
    }
    http(
        d.running.webhook_addr.unwrap(),
        "POST",
        "/webhook",
        body.to_vec(),
        &headers,
    )
    .await
    .0
}

pub async fn post_signed(d: &Daemon, body: &[u8]) -> u16 {
    post(d, body, Some(sign(SECRET, body))).await
}

/// JSON the way Meta serialises it (the simulator's serialiser).
pub use graph_sim::webhooks::meta_json;

fn envelope(value: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]
    })
}

fn status(wamid: &str, state: &str, recipient: &str) -> serde_json::Value {
    let mut s = serde_json::json!({
        "id": wamid, "status": state, "timestamp": "1800000100", "recipient_id": recipient
    });
    if state == "failed" {
        s["errors"] = serde_json::json!([{"code": 131026, "title": "Message undeliverable"}]);
    }
    s
}

/// A body with one status for `wamid`.
pub fn statuses_body(wamid: &str, state: &str) -> Vec<u8> {
    statuses(vec![status(wamid, state, "4915550100001")])
}

fn statuses(list: Vec<serde_json::Value>) -> Vec<u8> {
    meta_json(&envelope(serde_json::json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": list
    })))
}

pub fn text_message(wamid: &str, from: &str, name: &str, text: &str) -> Vec<u8> {
    meta_json(&envelope(serde_json::json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": name}, "wa_id": from, "user_id": format!("US.{from}")}],
        "messages": [{"from": from, "id": wamid, "timestamp": "1800000050", "type": "text",
                      "text": {"body": text}}]
    })))
}

async fn add_patient(d: &Daemon, tag: &str) -> Patient {
    let vault = d.running.vault.clone();
    let tag = tag.to_owned();
    tokio::task::spawn_blocking(move || {
        let p = marker_patient(&vault, &tag);
        vault.put_patient(&p, "test", t0()).unwrap();
        p
    })
    .await
    .unwrap()
}

fn wa_id(p: &Patient) -> String {
    p.phone
        .as_deref()
        .unwrap()
        .trim_start_matches('+')
        .to_owned()
}

pub fn events(d: &Daemon, kind: EventKind) -> Vec<clinic_relay::model::Event> {
    d.running
        .vault
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.kind == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_echoes_the_challenge_only_for_the_verify_token() {
    let d = start_receiver("").await;
    let addr = d.running.webhook_addr.unwrap();
    let ok =
        "/webhook?hub.mode=subscribe&hub.verify_token=verify+me%2B%2F%3D&hub.challenge=1158201444";
    assert_eq!(
        http(addr, "GET", ok, vec![], &[]).await,
        (200, b"1158201444".to_vec())
    );
    let wrong = "/webhook?hub.mode=subscribe&hub.verify_token=verify+mf%2B%2F%3D&hub.challenge=1";
    assert_eq!(http(addr, "GET", wrong, vec![], &[]).await.0, 403);
    let mode = "/webhook?hub.mode=unsubscribe&hub.verify_token=verify+me%2B%2F%3D&hub.challenge=1";
    assert_eq!(http(addr, "GET", mode, vec![], &[]).await.0, 403);
    assert_eq!(http(addr, "GET", "/other", vec![], &[]).await.0, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_over_the_raw_bytes_before_anything_is_stored() {
    let d = start_receiver("").await;
    let body = statuses(vec![status("wamid.SIG1", "delivered", "4915550100001")]);
    // Missing, malformed, wrong secret, and a body changed after signing.
    assert_eq!(post(&d, &body, None).await, 401);
    assert_eq!(post(&d, &body, Some("sha256=zz".to_owned())).await, 401);
    assert_eq!(
        post(&d, &body, Some(sign("another-secret", &body))).await,
        401
    );
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'd').unwrap();
    tampered[at] = b'r';
    assert_eq!(post(&d, &tampered, Some(sign(SECRET, &body))).await, 401);
    assert_eq!(d.running.vault.count(Tree::Webhook), 0, "nothing stored");
    assert!(events(&d, EventKind::MessageStatus).is_empty());
    // Valid, and the previous secret during a rotation.
    assert_eq!(post_signed(&d, &body).await, 200);
    let body2 = statuses(vec![status("wamid.SIG2", "sent", "4915550100001")]);
    assert_eq!(post(&d, &body2, Some(sign(OLD_SECRET, &body2))).await, 200);
    let v = &d.running.vault;
    assert_eq!(
        v.wa_status("wamid.SIG1").unwrap().unwrap().state,
        StatusKind::Delivered
    );
    assert_eq!(
        v.wa_status("wamid.SIG2").unwrap().unwrap().state,
        StatusKind::Sent
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_are_refused() {
    let d = start_receiver("max_body_bytes = 65536\n").await;
    let big = vec![b' '; 70_000];
    assert_eq!(post_signed(&d, &big).await, 413);
    let bad = b"{\"object\":\"whatsapp_business_account\",\"entry\":[".to_vec();
    assert_eq!(post_signed(&d, &bad).await, 400);
    let wrong_shape = br#"{"entry":{"changes":7}}"#.to_vec();
    assert_eq!(post_signed(&d, &wrong_shape).await, 400);
    assert_eq!(d.running.vault.count(Tree::Webhook), 0);
    let addr = d.running.webhook_addr.unwrap();
    assert_eq!(http(addr, "PUT", "/webhook", vec![], &[]).await.0, 405);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_posted_three_times_is_applied_once_and_non_ascii_verifies() {
    let d = start_receiver("").await;
    let p = add_patient(&d, "00007").await;
    let text = "Grüße aus Köln 👋 – naïve café / ok";
    let body = text_message("wamid.IN1", &wa_id(&p), "Zoë Ångström 😀", text);
    assert!(body.windows(2).any(|w| w == b"\\u") && body.windows(2).any(|w| w == b"\\/"));
    assert!(body.is_ascii());
    for _ in 0..3 {
        assert_eq!(post_signed(&d, &body).await, 200);
    }
    let received = events(&d, EventKind::MessageReceived);
    assert_eq!(received.len(), 1, "applied once");
    assert_eq!(received[0].patient, Some(p.id));
    assert_eq!(received[0].details["type"], "text");
    let v = &d.running.vault;
    let record = v.wa_inbound("wamid.IN1").unwrap().unwrap();
    assert_eq!(
        record.content,
        Some(clinic_relay::webhook::payload::Content::Text {
            body: text.to_owned()
        })
    );
    assert_eq!(
        v.wa_last_inbound(p.id).unwrap(),
        Some(jiff::Timestamp::from_second(1_800_000_050).unwrap())
    );
    // A message with only the business-scoped id finds the patient learnt
    // from the first message.
    let only_user = meta_json(&envelope(serde_json::json!({
        "messages": [{"from_user_id": format!("US.{}", wa_id(&p)), "id": "wamid.IN2",
                      "timestamp": "1800000060", "type": "interactive",
                      "interactive": {"type": "button_reply",
                                      "button_reply": {"id": "confirm:A1", "title": "Ja"}}}]
    })));
    assert_eq!(post_signed(&d, &only_user).await, 200);
    let received = events(&d, EventKind::MessageReceived);
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].patient, Some(p.id));
    assert_eq!(received[1].details["reply_id"], "confirm:A1");
    // An unknown sender: not stored, an event without a patient.
    let stranger = text_message("wamid.IN3", "4915559999999", "X", "hello");
    assert_eq!(post_signed(&d, &stranger).await, 200);
    assert_eq!(post_signed(&d, &stranger).await, 200);
    let received = events(&d, EventKind::MessageReceived);
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].patient, None);
    assert_eq!(received[2].details["matched"], "false");
    assert!(v
        .wa_inbound("wamid.IN3")
        .unwrap()
        .unwrap()
        .content
        .is_none());
    d.stop().await;
}

/// A small deterministic shuffle (no rand dependency).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_and_duplicated_statuses_end_in_the_right_state() {
    let d = start_receiver("").await;
    let p = add_patient(&d, "00011").await;
    let to = wa_id(&p);
    // (wamid, the statuses Meta sends for it, the final state)
    let plan: Vec<(String, Vec<&str>, StatusKind)> = (0..12)
        .map(|i| {
            let (states, last): (Vec<&str>, StatusKind) = match i % 4 {
                0 => (vec!["sent", "delivered", "read"], StatusKind::Read),
                1 => (vec!["sent", "read"], StatusKind::Read), // read without delivered
                2 => (vec!["sent", "failed"], StatusKind::Failed),
                _ => (
                    vec!["sent", "delivered", "read", "played"],
                    StatusKind::Played,
                ),
            };
            (format!("wamid.ST{i:02}"), states, last)
        })
        .collect();
    let mut all: Vec<serde_json::Value> = Vec::new();
    for (wamid, states, _) in &plan {
        for s in states {
            all.push(status(wamid, s, &to));
            all.push(status(wamid, s, &to)); // every status twice (Meta retries)
        }
    }
    shuffle(&mut all, 0x9E37_79B9_7F4A_7C15);
    // In batches of 1 to 5, concurrently in pairs, some batches posted twice.
    let mut chunks: Vec<Vec<serde_json::Value>> = Vec::new();
    let mut rest = all.as_slice();
    let mut n = 1;
    while !rest.is_empty() {
        let take = n.min(rest.len());
        chunks.push(rest[..take].to_vec());
        rest = &rest[take..];
        n = n % 5 + 1;
    }
    for pair in chunks.chunks(2) {
        let bodies: Vec<Vec<u8>> = pair.iter().map(|c| statuses(c.clone())).collect();
        if let [a, b] = bodies.as_slice() {
            let (x, y) = tokio::join!(post_signed(&d, a), post_signed(&d, b));
            assert_eq!((x, y), (200, 200));
        } else {
            assert_eq!(post_signed(&d, &bodies[0]).await, 200);
        }
        assert_eq!(post_signed(&d, &bodies[0]).await, 200);
    }
    let v = &d.running.vault;
    for (wamid, states, last) in &plan {
        let r = v.wa_status(wamid).unwrap().unwrap();
        assert_eq!(r.state, *last, "{wamid}");
        assert_eq!(r.patient, Some(p.id));
        let seen: u8 = states
            .iter()
            .map(|s| StatusKind::parse(s).unwrap().bit())
            .sum();
        assert_eq!(r.seen, seen, "{wamid}");
        if *last == StatusKind::Failed {
            assert_eq!(r.error_code, Some(131026));
        }
    }
    // The feed never shows a state going backwards for a message.
    let mut best: std::collections::HashMap<String, StatusKind> = Default::default();
    for e in events(&d, EventKind::MessageStatus) {
        let s = StatusKind::parse(&e.details["status"]).unwrap();
        let prev = best.insert(e.details["ref"].clone(), s);
        assert!(prev.is_none_or(|p| p < s), "backwards: {prev:?} then {s:?}");
    }
    assert_eq!(best.len(), plan.len());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_content_reaches_the_disk_in_the_clear() {
    let d = start_receiver("").await;
    let p = add_patient(&d, "00013").await;
    let secret_text = "ZZMARKWATEXT the lab says I have ZZMARKDIAG";
    let body = text_message("wamid.PRIV1", &wa_id(&p), "ZZMARKPROFILE", secret_text);
    assert_eq!(post_signed(&d, &body).await, 200);
    let status_body = statuses(vec![status("wamid.PRIV2", "read", &wa_id(&p))]);
    assert_eq!(post_signed(&d, &status_body).await, 200);
    let install = d.stop().await;
    let mut markers = markers(&p);
    markers.extend(
        [
            "ZZMARKWATEXT",
            "ZZMARKDIAG",
            "ZZMARKPROFILE",
            "wamid.PRIV1",
            "wamid.PRIV2",
            &wa_id(&p),
        ]
        .map(String::from),
    );
    let hits = scan_dir(&install.data, &markers);
    assert!(hits.is_empty(), "plaintext on disk: {hits:#?}");
}

// ---- direct TLS, reloaded on SIGHUP ------------------------------------------

mod tls {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    /// A self-signed certificate for 127.0.0.1: (cert PEM, key PEM).
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A signed POST over TLS trusting only `cert_pem`; None if the
    /// handshake fails.
    async fn post_tls(addr: std::net::SocketAddr, cert_pem: &str, body: Vec<u8>) -> Option<u16> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/webhook")
            .header("host", "127.0.0.1")
            .header("x-hub-signature-256", sign(SECRET, &body))
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        Some(sender.send_request(req).await.unwrap().status().as_u16())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_tls_serves_and_reloads_the_certificate() {
        let install = TestInstall::new(
            "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
             verify_token_file = \"verify-token\"\ntls_cert = \"wh.pem\"\ntls_key = \"wh.key\"\n",
        );
        let dir = install.tmp.path().to_owned();
        write_secret(&dir, "app-secret", SECRET);
        write_secret(&dir, "verify-token", TOKEN);
        let (cert1, key1) = self_signed();
        std::fs::write(dir.join("wh.pem"), &cert1).unwrap();
        write_secret(&dir, "wh.key", key1.trim());
        let d = Daemon::start_in(install).await;
        let addr = d.running.webhook_addr.unwrap();
        let body = statuses_body("wamid.TLS1", "sent");
        assert_eq!(post_tls(addr, &cert1, body.clone()).await, Some(200));
        // Plain HTTP gets no answer from a TLS port.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let plain =
            hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(TokioIo::new(tcp)).await;
        if let Ok((mut sender, conn)) = plain {
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method("POST")
                .uri("/webhook")
                .body(Full::new(bytes::Bytes::from(body.clone())))
                .unwrap();
            assert!(sender.send_request(req).await.is_err());
        }

        // A renewed certificate is served after a reload; a broken one is
        // refused and the current one stays.
        let (cert2, key2) = self_signed();
        std::fs::write(dir.join("wh.pem"), &cert2).unwrap();
        write_secret(&dir, "wh.key", key2.trim());
        let reload = d.running.webhook_tls.clone().unwrap();
        reload.reload().unwrap();
        assert_eq!(post_tls(addr, &cert1, body.clone()).await, None);
        let body2 = statuses_body("wamid.TLS2", "sent");
        assert_eq!(post_tls(addr, &cert2, body2).await, Some(200));
        std::fs::write(dir.join("wh.pem"), "not a certificate").unwrap();
        assert!(reload.reload().is_err());
        let body3 = statuses_body("wamid.TLS3", "sent");
        assert_eq!(post_tls(addr, &cert2, body3).await, Some(200));
        assert!(d.running.vault.wa_status("wamid.TLS3").unwrap().is_some());
        d.stop().await;
    }
}

#[test]
fn config_check_reads_the_webhook_secrets() {
    let install = TestInstall::new(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
    );
    let out = install.run(&["config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("webhook.app_secret_file") && err.contains("Fix:"),
        "{err}"
    );
    write_secret(install.tmp.path(), "app-secret", SECRET);
    write_secret(install.tmp.path(), "verify-token", TOKEN);
    let out = install.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("webhook on http://127.0.0.1:0/webhook"),
        "{}",
        stdout(&out)
    );
    std::fs::set_permissions(
        install.tmp.path().join("verify-token"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let err = stderr(&install.run(&["config", "check"]));
    assert!(
        err.contains("webhook.verify_token_file") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_patients_messages_stay_unreadable_and_are_not_reapplied() {
    let d = start_receiver("").await;
    let p = add_patient(&d, "00021").await;
    let body = text_message("wamid.ER1", &wa_id(&p), "Z", "ZZMARKERASED");
    assert_eq!(post_signed(&d, &body).await, 200);
    assert!(d.running.vault.wa_inbound("wamid.ER1").unwrap().is_some());
    let vault = d.running.vault.clone();
    let id = p.id;
    vault.erase_patient_async(id, "test", t0()).await.unwrap();
    let v = &d.running.vault;
    assert!(v.wa_inbound("wamid.ER1").unwrap().is_none());
    assert_eq!(v.wa_last_inbound(p.id).unwrap(), None);
    // Meta's retry of the old call is not applied again; a new message from
    // the number no longer finds anyone.
    assert_eq!(post_signed(&d, &body).await, 200);
    let new = text_message("wamid.ER2", &wa_id(&p), "Z", "again");
    assert_eq!(post_signed(&d, &new).await, 200);
    let received = events(&d, EventKind::MessageReceived);
    assert_eq!(
        received.len(),
        1,
        "the first is redacted, the second unmatched"
    );
    assert_eq!(received[0].patient, None);
    assert_eq!(received[0].details["matched"], "false");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_delivery_states_and_an_erased_patients_records_are_pruned() {
    let d = start_receiver("").await;
    let kept = add_patient(&d, "00031").await;
    let erased = add_patient(&d, "00032").await;
    let bodies = [
        statuses_body("wamid.PR1", "read"),
        text_message("wamid.PR2", "4915559990000", "X", "unknown sender"),
        text_message("wamid.PR3", &wa_id(&kept), "K", "kept"),
        text_message("wamid.PR4", &wa_id(&erased), "E", "erased"),
    ];
    for b in &bodies {
        assert_eq!(post_signed(&d, b).await, 200);
    }
    let v = d.running.vault.clone();
    v.erase_patient_async(erased.id, "test", t0())
        .await
        .unwrap();
    let retention = jiff::SignedDuration::from_hours(30 * 24);
    let t = jiff::Timestamp::from_second(1_800_000_100).unwrap();
    // Within the retention only the erased patient's records go (their
    // message, last inbound time, business-scoped id).
    let gone = clinic_relay::webhook::prune::prune(&v, t, retention)
        .await
        .unwrap();
    assert_eq!(gone, 3);
    assert!(v.wa_status("wamid.PR1").unwrap().is_some());
    let later = t
        .checked_add(jiff::SignedDuration::from_hours(31 * 24))
        .unwrap();
    let gone = clinic_relay::webhook::prune::prune(&v, later, retention)
        .await
        .unwrap();
    assert_eq!(gone, 2, "the old state and the unknown sender's marker");
    assert!(v.wa_status("wamid.PR1").unwrap().is_none());
    assert!(v.wa_inbound("wamid.PR2").unwrap().is_none());
    let record = v.wa_inbound("wamid.PR3").unwrap().unwrap();
    assert_eq!(record.patient, Some(kept.id), "a patient's messages stay");
    assert!(v.wa_last_inbound(kept.id).unwrap().is_some());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_with_many_entries_and_changes_applies_all_of_them() {
    let d = start_receiver("").await;
    let p = add_patient(&d, "00041").await;
    let change =
        |value: serde_json::Value| serde_json::json!({"field": "messages", "value": value});
    let body = meta_json(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [
                change(serde_json::json!({"statuses": [status("wamid.M1", "delivered", &wa_id(&p))]})),
                change(serde_json::json!({"messages": [{
                    "from": wa_id(&p), "id": "wamid.M2", "timestamp": "1800000070", "type": "image",
                    "image": {"id": "1234567890", "mime_type": "image/jpeg", "caption": "ZZMARKCAPTION"}}]})),
            ]},
            {"id": "2", "changes": [
                change(serde_json::json!({"errors": [{"code": 131000, "title": "Something went wrong"}]})),
                change(serde_json::json!({"messages": [{
                    "from": wa_id(&p), "id": "wamid.M3", "timestamp": "1800000080", "type": "button",
                    "button": {"payload": "cancel:A7", "text": "Absagen"}}]})),
            ]}
        ]
    }));
    assert_eq!(post_signed(&d, &body).await, 200);
    let v = &d.running.vault;
    assert_eq!(
        v.wa_status("wamid.M1").unwrap().unwrap().state,
        StatusKind::Delivered
    );
    let received = events(&d, EventKind::MessageReceived);
    let kinds: Vec<&str> = received
        .iter()
        .map(|e| e.details["type"].as_str())
        .collect();
    assert_eq!(kinds, ["image", "button"]);
    assert_eq!(received[1].details["reply_id"], "cancel:A7");
    let errors = events(&d, EventKind::WhatsappError);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].details["error_code"], "131000");
    assert_eq!(
        v.wa_last_inbound(p.id).unwrap(),
        Some(jiff::Timestamp::from_second(1_800_000_080).unwrap())
    );
    d.stop().await;
}

/// Issue 8 extended to the webhook door: 1,000 idle connections (and a
/// slowloris header) do not lock out Meta. At the cap the oldest connection
/// that sent nothing is closed to make room, and a signed POST is answered
/// 200 within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_webhook_connections_do_not_lock_out_meta() {
    use tokio::io::AsyncWriteExt;
    let d = start_receiver("").await;
    let addr = d.running.webhook_addr.unwrap();
    let mut held = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 10 == 0 {
            // Slowloris: a request that never finishes its headers.
            s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .await
                .unwrap();
        }
        held.push(s);
    }
    // The receiver keeps at most webhook.max_connections (64) of them.
    let mut closed = 0;
    for _ in 0..200 {
        let mut buf = [0u8; 64];
        closed = held
            .iter()
            .filter(|c| matches!(c.try_read(&mut buf), Ok(0)))
            .count();
        if closed >= 1000 - 64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(closed >= 1000 - 64, "only {closed} idle connections closed");
    let body = statuses_body("wamid.FLOOD1", "delivered");
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(std::time::Duration::from_secs(1), post_signed(&d, &body))
        .await
        .expect("a signed POST answered within 1 s");
    assert_eq!(status, 200);
    eprintln!(
        "webhook: signed POST in {} ms with 1,000 idle connections",
        started.elapsed().as_millis()
    );
    drop(held);
    d.stop().await;
}
