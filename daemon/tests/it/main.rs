//! The one integration-test binary (DESIGN.md: every file directly in
//! `tests/` links a separate binary, which is slow on a 2-core machine).

mod support;

mod api;
mod api_defects;
mod appliance;
mod audit_anchor;
mod audit_tamper;
mod care_follow_up;
mod care_languages;
mod care_reminders;
mod care_reschedule;
mod clock_jump;
mod config_cli;
mod core_apply;
mod disk_full;
mod fault_kill;
mod hostile;
mod openapi;
mod phone_numbers;
mod pms_crash;
mod pms_ingest;
mod pms_interop;
mod pms_outbound;
mod pms_support;
mod queue;
mod serve_notify;
mod service_hardening;
mod tls;
mod vault_crash;
mod vault_crypto;
mod vault_erasure;
mod vault_privacy;
mod vault_rotation;
mod wa_check;
mod wa_client;
mod wa_crash;
mod wa_media;
mod wa_media_crash;
mod wa_outbox;
mod wa_proxy;
mod wa_template_gate;
mod wa_templates;
mod webhook;
mod webhook_crash;
