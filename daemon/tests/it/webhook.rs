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
