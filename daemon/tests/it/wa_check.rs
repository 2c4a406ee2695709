//! `clinic-relay whatsapp check`: the real binary against the Graph API
//! simulator and a running daemon's webhook receiver.

use crate::pms_support::Daemon;
use crate::support::*;
use crate::wa_proxy::{Mode, TestProxy};
use graph_sim::{Injection, Route, Sim};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const PHONE_ID: &str = "106540352242922";
const VERIFY: &str = "verify me&now";
/// Replaced by the webhook's real address once the daemon listens.
const PLACEHOLDER: &str = "http://127.0.0.1:1/webhook";

fn secret_file(dir: &Path, name: &str, value: &str) {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn wa_section(sim: &Sim, extra: &str) -> String {
    format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"{PHONE_ID}\"\n\
         business_account_id = \"102290129340398\"\ntoken_file = \"wa.token\"\n{extra}\n",
        sim.base_url()
    )
}

/// The line for `what`, whatever its verdict.
fn finding(printed: &str, what: &str) -> String {
    printed
        .lines()
        .find(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(what)
        })
        .unwrap_or_else(|| panic!("no {what} line in:\n{printed}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_config_is_all_ok_directly_and_through_a_proxy() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-c"));
    sim.known_phone_number_id(Some(PHONE_ID));
    let install = TestInstall::new(&format!(
        "{}\n[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
        wa_section(&sim, &format!("webhook_public_url = \"{PLACEHOLDER}\""))
    ));
    let dir = install.tmp.path().to_owned();
    secret_file(&dir, "wa.token", "tok-c\n");
    secret_file(&dir, "app-secret", "check-app-secret");
    secret_file(&dir, "verify-token", VERIFY);
    let d = Daemon::start_in(install).await;
    let hook = format!("http://{}/webhook", d.running.webhook_addr.unwrap());
    let text = std::fs::read_to_string(&d.install.config)
        .unwrap()
        .replace(PLACEHOLDER, &hook);
    std::fs::write(&d.install.config, &text).unwrap();

    let out = run_cli_async(&d.install.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    assert!(finding(&printed, "token").starts_with("OK"), "{printed}");
    assert!(
        finding(&printed, "connection").ends_with("direct"),
        "{printed}"
    );
    let phone = finding(&printed, "phone number");
    assert!(
        phone.starts_with("OK")
            && phone.contains("\"Sim Clinic\"")
            && phone.contains("quality GREEN"),
        "{printed}"
    );
    assert!(
        finding(&printed, "business account").starts_with("OK"),
        "{printed}"
    );
    let webhook = finding(&printed, "webhook");
    assert!(
        webhook.starts_with("OK") && webhook.contains(&hook),
        "{printed}"
    );
    assert!(!printed.lines().any(|l| l.starts_with("FIX")), "{printed}");
    let all = format!("{printed}{}", stderr(&out));
    assert!(
        !all.contains("tok-c") && !all.contains("verify me"),
        "no secret printed"
    );
    let asked = sim.requests();
    assert!(asked.iter().any(
        |r| r.path.starts_with(&format!("/v21.0/{PHONE_ID}?fields="))
            && r.path.contains("quality_rating")
    ));
    assert!(asked.iter().any(|r| r
        .path
        .starts_with("/v21.0/102290129340398/message_templates")
        && r.path.contains("limit=1")));

    // A public URL whose path does not reach webhook.path.
    let wrong_path = dir.join("wrong-path.toml");
    std::fs::write(&wrong_path, text.replace(&hook, &format!("{hook}-old"))).unwrap();
    let out = run_cli_async(&wrong_path, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let line = finding(&printed, "webhook");
    assert!(
        line.starts_with("FIX") && line.contains("404") && line.contains("webhook.path (/webhook)"),
        "{printed}"
    );

    // The same through a CONNECT proxy named in the config.
    let proxy = TestProxy::start(Mode::Tunnel, None).await;
    let proxied = dir.join("proxied.toml");
    std::fs::write(
        &proxied,
        text.replace(
            "[whatsapp]\n",
            &format!("[whatsapp]\nproxy = \"{}\"\n", proxy.url()),
        ),
    )
    .unwrap();
    let out = run_cli_async(&proxied, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    assert!(
        finding(&printed, "connection").contains(&format!(
            "through the proxy {} (whatsapp.proxy)",
            proxy.addr
        )),
        "{printed}"
    );
    assert!(
        proxy.connects().contains(&sim.addr().to_string()),
        "{:?}",
        proxy.connects()
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_or_a_wrong_phone_id_is_a_fix_line_and_exit_1() {
    let sim = Sim::start().await.unwrap();
    sim.known_phone_number_id(Some(PHONE_ID));
    sim.inject(Injection::code(190).route(Route::PhoneNumber));
    let install = TestInstall::new(&wa_section(&sim, ""));
    secret_file(install.tmp.path(), "wa.token", "tok-old\n");
    let out = run_cli_async(&install.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let token = printed
        .lines()
        .find(|l| l.starts_with("FIX") && l.contains("token"))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        token.contains("token expired or invalid: replace the file at whatsapp.token_file"),
        "{printed}"
    );
    assert!(
        finding(&printed, "business account").starts_with("SKIP"),
        "{printed}"
    );
    assert!(
        finding(&printed, "webhook").starts_with("SKIP"),
        "{printed}"
    );
    assert!(stderr(&out).contains("to fix"), "{}", stderr(&out));
    assert!(!printed.contains("tok-old"));

    // A phone number id the account does not have.
    let wrong = TestInstall::new(&wa_section(&sim, "").replace(PHONE_ID, "999000111"));
    secret_file(wrong.tmp.path(), "wa.token", "tok-old\n");
    let out = run_cli_async(&wrong.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let line = finding(&printed, "phone number id");
    assert!(
        line.starts_with("FIX")
            && line.contains("999000111")
            && line.contains("whatsapp.phone_number_id"),
        "{printed}"
    );
    assert!(
        finding(&printed, "business account").starts_with("OK"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_says_what_to_set_and_a_bsp_header_config_checks_ok() {
    let dry = TestInstall::new("[whatsapp]\n");
    let out = run_cli_async(&dry.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let line = finding(&printed, "credentials");
    assert!(
        line.starts_with("FIX") && line.contains("dry-run") && line.contains("whatsapp.token_file"),
        "{printed}"
    );

    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("bsp-key"));
    sim.token_header(Some("D360-API-KEY"));
    let bsp = TestInstall::new(&wa_section(&sim, "auth_header = \"D360-API-KEY\""));
    secret_file(bsp.tmp.path(), "wa.token", "bsp-key\n");
    let out = run_cli_async(&bsp.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    assert!(
        finding(&printed, "phone number").starts_with("OK"),
        "{printed}"
    );
    assert!(sim
        .requests()
        .iter()
        .all(|r| r.authorization.is_none() && r.header("d360-api-key") == Some("bsp-key")));

    // A token file others can read is a FIX (the daemon still uses it).
    let token = bsp.tmp.path().join("wa.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_cli_async(&bsp.config, &["whatsapp", "check"]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let line = finding(&printed, "token file");
    assert!(
        line.starts_with("FIX") && line.contains("chmod 600"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reads_the_proxy_credentials_file() {
    let sim = Sim::start().await.unwrap();
    let install = TestInstall::new(&wa_section(
        &sim,
        "proxy = \"http://127.0.0.1:3128\"\nproxy_auth_file = \"proxy-auth\"",
    ));
    let dir = install.tmp.path();
    secret_file(dir, "wa.token", "tok\n");
    let auth = dir.join("proxy-auth");
    std::fs::write(&auth, "clinic:s3cret\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_cli_async(&install.config, &["config", "check"]).await;
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("whatsapp.proxy_auth_file") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("s3cret"));
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_cli_async(&install.config, &["config", "check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}
