//! The Cloud API client against the Graph API simulator, over real sockets.

use clinic_relay::whatsapp::client::{ApiError, GraphClient, Token};
use clinic_relay::whatsapp::config::WhatsappConfig;
use graph_sim::{Injection, Route, Sim, Template};
use serde_json::json;
use std::time::Duration;

pub fn config_for(sim: &Sim) -> WhatsappConfig {
    WhatsappConfig {
        api_base_url: sim.base_url(),
        phone_number_id: "106540352242922".to_owned(),
        business_account_id: Some("102290129340398".to_owned()),
        request_timeout: Duration::from_secs(5),
        ..WhatsappConfig::default()
    }
}

fn text(to: &str) -> serde_json::Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hello"}})
}

#[tokio::test]
async fn sends_with_the_bearer_token_and_stores_what_meta_answers() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-1"));
    sim.map_wa_id("+4915550001", "4915550009");
    let client = GraphClient::new(&config_for(&sim), Some(Token::new("tok-1\n"))).unwrap();
    let sent = client.send(&text("+4915550001")).await.unwrap();
    assert!(sent.wamid.starts_with("wamid."));
    assert_eq!(sent.wa_id.as_deref(), Some("4915550009"));
    let req = &sim.requests()[0];
    assert_eq!(req.path, "/v21.0/106540352242922/messages");
    assert_eq!(req.authorization.as_deref(), Some("Bearer tok-1"));

    // A second send reuses the pooled connection (no new accept needed).
    client.send(&text("+4915550002")).await.unwrap();

    client.set_token(Token::new("stale"));
    let err = client.send(&text("+4915550001")).await.unwrap_err();
    assert!(err.is_auth() && !err.retryable(), "{err:?}");
}

#[tokio::test]
async fn meta_errors_are_classified() {
    let sim = Sim::start().await.unwrap();
    let client = GraphClient::new(&config_for(&sim), None).unwrap();
    sim.inject(Injection::code(131047));
    let e = client.send(&text("+1")).await.unwrap_err();
    assert!(matches!(e, ApiError::Meta { code: 131047, .. }) && !e.retryable());
    sim.inject(Injection::code(130429));
    let e = client.send(&text("+1")).await.unwrap_err();
    assert!(e.retryable() && e.is_throttle());
    sim.inject(Injection::http(503));
    assert!(client.send(&text("+1")).await.unwrap_err().retryable());
    sim.delay(Some(Duration::from_millis(400)));
    let mut cfg = config_for(&sim);
    cfg.request_timeout = Duration::from_millis(100);
    let impatient = GraphClient::new(&cfg, None).unwrap();
    assert!(matches!(
        impatient.send(&text("+1")).await.unwrap_err(),
        ApiError::Timeout
    ));
    sim.delay(None);
    sim.refuse_connections(true);
    let e = loop {
        // The listener closes asynchronously: wait until it is gone.
        match client.send(&text("+1")).await {
            Err(e) => break e,
            Ok(_) => tokio::task::yield_now().await,
        }
    };
    assert!(e.retryable(), "{e:?}");
}

#[tokio::test]
async fn media_upload_get_and_delete_and_templates() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "de"));
    let client = GraphClient::new(&config_for(&sim), None).unwrap();
    let pdf = b"%PDF-1.4 synthetic\n%%EOF".to_vec();
    let id = client
        .upload_media(&pdf, "application/pdf", "befund.pdf")
        .await
        .unwrap();
    assert_eq!(sim.media_ids(), vec![id.clone()]);
    client.delete_media(&id).await.unwrap();
    assert!(sim.media_ids().is_empty());
    sim.inject(Injection::code(100).route(Route::Media));
    assert!(client
        .upload_media(&pdf, "application/pdf", "x.pdf")
        .await
        .is_err());

    let t = client.templates().await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].name.as_str(), t[0].status.as_str()),
        ("appointment_reminder", "APPROVED")
    );
    let p = client.phone_number().await.unwrap();
    assert_eq!(p["quality_rating"], "GREEN");
}
