//! The WhatsApp webhook receiver: Meta's calls come in over HTTP(S), are
//! authenticated by their HMAC signature over the raw body, parsed, and
//! applied through the core's one apply path; only a durable commit is
//! answered 200. See docs/webhook.md.

pub mod config;
