//! Webhooks the way Meta delivers them: status updates (`sent`, `delivered`,
//! `read`) for every message the simulator accepted, and inbound messages,
//! POSTed to a receiver with `X-Hub-Signature-256` over JSON serialised as
//! Meta does (non-ASCII as `\uXXXX`, `/` as `\/`), optionally shuffled,
//! duplicated and batched several to a call, as Meta's retries and
//! batching produce them.

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `http://127.0.0.1:PORT/webhook`
    pub url: String,
    pub app_secret: String,
    /// Shuffle the updates (a seeded, repeatable order).
    pub shuffle: Option<u64>,
    /// Send every update twice (Meta retries for up to 7 days).
    pub duplicate: bool,
    /// Updates per POST (each its own `entry`).
    pub per_call: usize,
}

/// One change of a webhook call (`entry[].changes[0].value`).
pub type Update = Value;

/// A status update for `wamid`.
pub fn status(wamid: &str, state: &str, recipient: &str, at: u64) -> Update {
    status_with_callback(wamid, state, recipient, None, at)
}

/// A status update for `wamid` echoing the sender's
/// `biz_opaque_callback_data`, as Meta does when the send carried one.
pub fn status_with_callback(
    wamid: &str,
    state: &str,
    recipient: &str,
    callback: Option<&str>,
    at: u64,
) -> Update {
    let mut update = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": [{
            "id": wamid, "status": state, "timestamp": at.to_string(), "recipient_id": recipient,
            "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "utility"}},
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility"}
        }]
    });
    if let Some(cb) = callback {
        update["statuses"][0]["biz_opaque_callback_data"] = json!(cb);
    }
    update
}

/// An inbound text message from `from` (digits, as Meta writes `wa_id`).
pub fn inbound_text(wamid: &str, from: &str, name: &str, text: &str, at: u64) -> Update {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": name}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": at.to_string(), "type": "text",
                      "text": {"body": text}}]
    })
}

/// An inbound media message (`kind`: image, document, audio, video,
/// sticker) naming `media_id` (see `Sim::add_media`).
pub fn inbound_media(
    wamid: &str,
    from: &str,
    kind: &str,
    media_id: &str,
    mime_type: &str,
    sha256: &str,
    at: u64,
) -> Update {
    let mut media = json!({"id": media_id, "mime_type": mime_type, "sha256": sha256});
    if kind == "image" {
        media["caption"] = json!("ZZ caption");
    }
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "ZZ"}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": at.to_string(), "type": kind,
                      kind: media}]
    })
}

/// JSON the way Meta serialises it: non-ASCII as `\uXXXX` (surrogate pairs
/// beyond the BMP) and `/` as `\/`. The signature covers these bytes, so a
/// receiver must verify the raw body, not a re-serialisation.
pub fn meta_json(v: &Value) -> Vec<u8> {
    let plain = v.to_string();
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.into_bytes()
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// The calls `updates` become under `d` (each a complete, signed body).
pub fn calls(updates: &[Update], d: &Delivery) -> Vec<Vec<u8>> {
    let mut list: Vec<&Update> = updates.iter().collect();
    if d.duplicate {
        list.extend(updates.iter());
    }
    if let Some(seed) = d.shuffle {
        // xorshift Fisher-Yates: repeatable without a rand dependency.
        let mut x = seed | 1;
        for i in (1..list.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            list.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    list.chunks(d.per_call.max(1))
        .map(|chunk| {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|u| json!({"id": "102290129340398", "changes": [{"field": "messages", "value": u}]}))
                .collect();
            meta_json(&json!({"object": "whatsapp_business_account", "entry": entries}))
        })
        .collect()
}

/// POSTs every call to `d.url` on a kept-alive connection; returns the
/// HTTP statuses. A call whose connection fails is sent again on a new
/// connection (up to three tries), as Meta retries.
pub async fn deliver(updates: &[Update], d: &Delivery) -> std::io::Result<Vec<u16>> {
    let rest = d
        .url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// webhook URLs"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut sender = None;
    let mut statuses = Vec::new();
    for body in calls(updates, d) {
        let mut tries = 0;
        let status = loop {
            tries += 1;
            let s = match sender.take() {
                Some(s) => s,
                None => connect(host).await?,
            };
            match post(s, host, path, &body, &d.app_secret).await {
                Ok((status, s)) => {
                    sender = Some(s);
                    break status;
                }
                Err(e) if tries >= 3 => return Err(e),
                Err(_) => continue,
            }
        };
        statuses.push(status);
    }
    Ok(statuses)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

async fn connect(host: &str) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(
    mut sender: Sender,
    host: &str,
    path: &str,
    body: &[u8],
    secret: &str,
) -> std::io::Result<(u16, Sender)> {
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("/{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(secret, body))
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .map_err(std::io::Error::other)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?;
    Ok((status, sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_json_escapes_non_ascii_and_slashes() {
        let v = json!({"name": "Zoë 😀", "url": "a/b"});
        let text = String::from_utf8(meta_json(&v)).unwrap();
        assert_eq!(text, r#"{"name":"Zo\u00eb \ud83d\ude00","url":"a\/b"}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn calls_shuffle_duplicate_and_batch_every_update() {
        let updates: Vec<Update> = (0..5)
            .map(|i| status(&format!("w{i}"), "sent", "1", 0))
            .collect();
        let d = Delivery {
            url: String::new(),
            app_secret: String::new(),
            shuffle: Some(7),
            duplicate: true,
            per_call: 3,
        };
        let calls = calls(&updates, &d);
        assert_eq!(calls.len(), 4);
        let ids: Vec<String> = calls
            .iter()
            .flat_map(|c| {
                let v: Value = serde_json::from_slice(c).unwrap();
                v["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        e["changes"][0]["value"]["statuses"][0]["id"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids.len(), 10);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["w0", "w0", "w1", "w1", "w2", "w2", "w3", "w3", "w4", "w4"]
        );
        assert_ne!(ids, sorted, "shuffled");
    }
}
