//! The WhatsApp half, outbound: the Cloud API client, message builders and
//! the durable outbox that sends through them. (Inbound webhooks are in
//! `crate::webhook`.) See docs/whatsapp.md.

pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod in_doubt;
pub mod limiter;
pub mod media;
pub mod media_config;
pub mod media_sweep;
pub mod media_timers;
pub mod media_worker;
pub mod message;
pub mod outbox;
pub mod policy;
pub mod proxy;
pub mod template_book;
pub mod templates;
pub mod transport;
pub mod worker;
