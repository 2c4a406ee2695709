//! The simulator over a raw HTTP/1.1 connection.

use graph_sim::{Injection, Sim, Template};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn call(sim: &Sim, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out.split("\r\n\r\n").nth(1).unwrap();
    (status, serde_json::from_str(json).unwrap())
}

const TEXT: &str =
    r#"{"messaging_product":"whatsapp","to":"+15550001","type":"text","text":{"body":"hi"}}"#;

#[tokio::test]
async fn messages_answer_meta_shapes_and_injected_errors() {
    let sim = Sim::start().await.unwrap();
    let (status, body) = call(&sim, "POST", "/v21.0/123/messages", TEXT).await;
    assert_eq!(status, 200);
    assert_eq!(body["contacts"][0]["wa_id"], "15550001");
    assert!(body["messages"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("wamid."));

    sim.inject(Injection::code(131047));
    let (status, body) = call(&sim, "POST", "/v21.0/123/messages", TEXT).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 131047);
    assert!(body["error"]["fbtrace_id"].is_string());
    assert!(body["error"]["error_data"]["details"].is_string());

    sim.rate_limit(Some(1));
    assert_eq!(call(&sim, "POST", "/v21.0/123/messages", TEXT).await.0, 200);
    let (_, body) = call(&sim, "POST", "/v21.0/123/messages", TEXT).await;
    assert_eq!(body["error"]["code"], 130429);
    sim.rate_limit(None);

    sim.pair_limit(Some((1, std::time::Duration::from_secs(3600))));
    assert_eq!(call(&sim, "POST", "/v21.0/123/messages", TEXT).await.0, 200);
    let (_, body) = call(&sim, "POST", "/v21.0/123/messages", TEXT).await;
    assert_eq!(body["error"]["code"], 131056);
    sim.pair_limit(None);

    sim.require_token(Some("other"));
    let (status, body) = call(&sim, "POST", "/v21.0/123/messages", TEXT).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (401, Some(190)));
    assert_eq!(sim.sent_messages().len(), 3);
}

#[tokio::test]
async fn templates_and_phone_fields() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let (_, body) = call(&sim, "GET", "/v21.0/999/message_templates?limit=100", "").await;
    assert_eq!(body["data"][0]["status"], "APPROVED");
    let (_, body) = call(&sim, "GET", "/v21.0/123?fields=verified_name", "").await;
    assert_eq!(body["quality_rating"], "GREEN");
    let unknown = r#"{"messaging_product":"whatsapp","to":"1","type":"template","template":{"name":"nope","language":{"code":"en"}}}"#;
    let (_, body) = call(&sim, "POST", "/v21.0/123/messages", unknown).await;
    assert_eq!(body["error"]["code"], 132001);
}

#[tokio::test]
async fn refusing_closes_the_port_and_reopens_it() {
    let sim = Sim::start().await.unwrap();
    sim.refuse_connections(true);
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(sim.addr()).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(refused);
    sim.refuse_connections(false);
    for _ in 0..200 {
        if TcpStream::connect(sim.addr()).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(call(&sim, "POST", "/v21.0/1/messages", TEXT).await.0, 200);
}
