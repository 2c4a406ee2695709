//! `clinic-relay whatsapp check`: tries the live configuration end to end
//! and prints one line per check, `OK` or `FIX` with what to change, for
//! clinic IT. Exit status 1 when any line says FIX.
//!
//! Nothing secret is printed: neither the token nor the verify token, only
//! the paths of the files that hold them.

use super::client::{ApiError, GraphClient, Token};
use super::config::{WhatsappConfig, TOKEN_CREDENTIAL};
use crate::config::Config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::path::{Path, PathBuf};

/// One printed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fix,
    /// Not checked because an earlier check failed, or not configured.
    Skip,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "OK",
            Verdict::Fix => "FIX",
            Verdict::Skip => "SKIP",
        };
        write!(f, "{v:<4} {:<16} {}", self.what, self.text)
    }
}

fn line(verdict: Verdict, what: &'static str, text: impl Into<String>) -> Finding {
    Finding {
        verdict,
        what,
        text: text.into(),
    }
}

/// Where the token comes from, for the messages that say where to fix it.
fn token_source(wa: &WhatsappConfig) -> Option<(PathBuf, String)> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(TOKEN_CREDENTIAL);
        if candidate.exists() {
            return Some((
                candidate,
                format!("the systemd credential {TOKEN_CREDENTIAL}"),
            ));
        }
    }
    let file = wa.token_file.clone()?;
    let name = format!("the file at whatsapp.token_file ({})", file.display());
    Some((file, name))
}

/// Runs every check; the findings in order.
pub async fn run(config: &Config) -> Vec<Finding> {
    let wa = &config.whatsapp;
    let mut out = Vec::new();
    let source = token_source(wa);
    if wa.phone_number_id.is_empty() && source.is_none() {
        out.push(line(
            Verdict::Fix,
            "credentials",
            "none configured, so the outbox runs in dry-run and nothing is sent: set whatsapp.phone_number_id, whatsapp.business_account_id and whatsapp.token_file (or the systemd credential whatsapp-token)",
        ));
        return out;
    }
    if wa.force_dry_run {
        out.push(line(
            Verdict::Ok,
            "dry-run",
            "whatsapp.dry_run = true: checking the credentials anyway; remove the key to send for real",
        ));
    }
    if wa.phone_number_id.is_empty() {
        out.push(line(
            Verdict::Fix,
            "phone number id",
            "whatsapp.phone_number_id is not set: copy it from WhatsApp Manager, API Setup",
        ));
    }
    let token = match &source {
        None => {
            out.push(line(
                Verdict::Fix,
                "token",
                "no token: put it in a 0600 file named by whatsapp.token_file (or the systemd credential whatsapp-token)",
            ));
            None
        }
        Some((path, name)) => match Token::load(path) {
            Ok(t) => {
                out.push(match loose_mode(path) {
                    // The daemon still reads it; the check insists, as
                    // DESIGN.md asks of every secret file.
                    Some(mode) => line(
                        Verdict::Fix,
                        "token file",
                        format!("{name} is readable or writable by group or others (mode {mode:04o}): chmod 600 {}", path.display()),
                    ),
                    None => line(Verdict::Ok, "token file", format!("{name} is readable")),
                });
                Some(t)
            }
            Err(e) => {
                out.push(line(
                    Verdict::Fix,
                    "token",
                    format!("{e}: put the access token in {name}"),
                ));
                None
            }
        },
    };
    let client = match GraphClient::new(wa, token.clone()) {
        Ok(c) => {
            out.push(line(Verdict::Ok, "connection", c.route()));
            Some(c)
        }
        Err(e) => {
            out.push(line(Verdict::Fix, "connection", e.to_string()));
            None
        }
    };
    let (Some(client), Some(_), Some((_, name))) = (client, token, &source) else {
        out.push(line(
            Verdict::Skip,
            "graph api",
            "not tried until the lines above are fixed",
        ));
        out.push(webhook(config).await);
        return out;
    };
    let base = &wa.api_base_url;
    let bsp = wa.auth_header.as_ref().map_or_else(String::new, |h| {
        format!(" (sent in the header {h}, whatsapp.auth_header)")
    });
    let mut token_ok = true;
    if !wa.phone_number_id.is_empty() {
        match client.phone_number().await {
            Ok(v) => {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
                out.push(line(
                    Verdict::Ok,
                    "phone number",
                    format!(
                        "{} \"{}\" {}, quality {}, code verification {}",
                        wa.phone_number_id,
                        s("verified_name"),
                        s("display_phone_number"),
                        s("quality_rating"),
                        s("code_verification_status"),
                    ),
                ));
            }
            Err(e) if e.is_auth() => {
                token_ok = false;
                out.push(line(
                    Verdict::Fix,
                    "token",
                    format!("token expired or invalid: replace {name}{bsp}"),
                ));
            }
            Err(ApiError::Meta { code: 100, .. }) => out.push(line(
                Verdict::Fix,
                "phone number id",
                format!(
                    "{} is not a phone number this token can use: check whatsapp.phone_number_id (WhatsApp Manager, API Setup) and that the token's system user has the WhatsApp account",
                    wa.phone_number_id
                ),
            )),
            Err(e) => out.push(unreachable_line("phone number", base, &client, &e)),
        }
    }
    match (&wa.business_account_id, token_ok) {
        (None, _) => out.push(line(
            Verdict::Skip,
            "business account",
            "whatsapp.business_account_id is not set (templates check and create need it)",
        )),
        (Some(_), false) => out.push(line(
            Verdict::Skip,
            "business account",
            "not tried until the token is fixed",
        )),
        (Some(waba), true) => match client.business_account().await {
            Ok(()) => out.push(line(
                Verdict::Ok,
                "business account",
                format!("{waba} is reachable (templates readable)"),
            )),
            Err(e) if e.is_auth() => out.push(line(
                Verdict::Fix,
                "business account",
                format!("token refused for {waba}: give the token's system user the WhatsApp account (whatsapp_business_management), or replace {name}{bsp}"),
            )),
            Err(ApiError::Meta { code: 100, .. }) => out.push(line(
                Verdict::Fix,
                "business account",
                format!("{waba} is not a WhatsApp Business Account this token can use: check whatsapp.business_account_id"),
            )),
            Err(e) => out.push(unreachable_line("business account", base, &client, &e)),
        },
    }
    out.push(webhook(config).await);
    out
}

/// The mode, when group or others may read or write the file.
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

fn unreachable_line(what: &'static str, base: &str, client: &GraphClient, e: &ApiError) -> Finding {
    let text = match e {
        ApiError::Meta { code, message, .. } => format!("Meta answered error {code}: {message}"),
        ApiError::Timeout => format!(
            "no answer from {base} ({}) within whatsapp.request_timeout",
            client.route()
        ),
        other => format!("cannot reach {base} ({}): {other}", client.route()),
    };
    line(Verdict::Fix, what, text)
}

/// Meta's subscription handshake against the public URL, as Meta would
/// send it: a random challenge that must come back verbatim.
async fn webhook(config: &Config) -> Finding {
    let wa = &config.whatsapp;
    let Some(url) = &wa.webhook_public_url else {
        return line(
            Verdict::Skip,
            "webhook",
            "whatsapp.webhook_public_url is not set, so the webhook was not tried from outside",
        );
    };
    let Some(hook) = &config.webhook else {
        return line(
            Verdict::Fix,
            "webhook",
            "whatsapp.webhook_public_url is set but the [webhook] section is not (webhook.listen, webhook.verify_token_file)",
        );
    };
    let token = match crate::webhook::config::read_secret(
        "webhook.verify_token_file",
        &hook.verify_token_file,
    ) {
        Ok(t) => t,
        Err(e) => return line(Verdict::Fix, "webhook", e.to_string()),
    };
    let challenge = match challenge() {
        Some(c) => c,
        None => return line(Verdict::Fix, "webhook", "no randomness for a challenge"),
    };
    let target = format!(
        "{url}?hub.mode=subscribe&hub.challenge={challenge}&hub.verify_token={}",
        percent_encode(token.expose())
    );
    match get(wa, &target).await {
        Ok((200, body)) if body.as_ref() == challenge.as_bytes() => line(
            Verdict::Ok,
            "webhook",
            format!("{url} answered the verification challenge"),
        ),
        Ok((200, _)) => line(
            Verdict::Fix,
            "webhook",
            format!("{url} answered 200 without echoing the challenge: the URL does not reach clinic-relay's webhook.path ({})", hook.path),
        ),
        Ok((403, _)) => line(
            Verdict::Fix,
            "webhook",
            format!("{url} refused the verify token (403): is another webhook receiver behind this URL, or another clinic-relay with a different webhook.verify_token_file?"),
        ),
        Ok((404, _)) => line(
            Verdict::Fix,
            "webhook",
            format!("{url}: nothing there (404): the URL's path must reach webhook.path ({})", hook.path),
        ),
        Ok((status, _)) => line(
            Verdict::Fix,
            "webhook",
            format!("{url} answered HTTP {status}: check the reverse proxy or tunnel in front of webhook.listen"),
        ),
        Err(e) => line(
            Verdict::Fix,
            "webhook",
            format!("cannot reach {url}: {e} (Meta must reach it from the internet: docs/whatsapp.md, reaching the webhook)"),
        ),
    }
}

/// A decimal challenge, as Meta sends.
fn challenge() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some((u64::from_le_bytes(b) >> 1).to_string())
}

/// Query-string encoding of a secret (RFC 3986 unreserved kept).
fn percent_encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn get(wa: &WhatsappConfig, url: &str) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let (http, _) = super::transport::http_for(wa, &uri).map_err(|e| e.to_string())?;
    let req = hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| super::transport::connect_error(&e).to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(wa.request_timeout, exchange)
        .await
        .map_err(|_| "no answer within whatsapp.request_timeout".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_query_encoded() {
        assert_eq!(percent_encode(b"a b&c=d~"), "a%20b%26c%3Dd~");
        let c = challenge().unwrap();
        assert!(!c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    }
}
