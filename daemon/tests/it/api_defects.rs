//! Regression tests for the API and configuration defects of issue 7: each
//! test fails on the code before its fix.

use crate::pms_support::*;
use crate::support::*;
use serde_json::json;

fn check(install: &TestInstall) -> (bool, String) {
    let out = install.run(&["config", "check"]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn a_network_mllp_listener_without_an_allow_list_fails_config_check() {
    let install = TestInstall::new("[pms]\nmllp_listen = \"0.0.0.0:0\"\n");
    let (ok, out) = check(&install);
    assert!(!ok, "{out}");
    assert!(out.contains("`pms.allow`"), "{out}");
    assert!(out.contains("allow = [\"any\"]"), "{out}");

    let install =
        TestInstall::new("[pms]\nmllp_listen = \"0.0.0.0:0\"\nallow = [\"192.168.10.0/24\"]\n");
    let (ok, out) = check(&install);
    assert!(ok, "{out}");
    let install = TestInstall::new("[pms]\nmllp_listen = \"0.0.0.0:0\"\nallow = [\"any\"]\n");
    let (ok, out) = check(&install);
    assert!(ok, "{out}");
    let install = TestInstall::new("[pms]\nmllp_listen = \"127.0.0.1:0\"\nallow = []\n");
    let (ok, out) = check(&install);
    assert!(ok, "{out}");
}

#[test]
fn the_shipped_configs_pass_config_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in [
        "config/clinic-relay.toml",
        "config/dev.toml",
        "config/demo.toml",
    ] {
        let config = root.join(name);
        let text = std::fs::read_to_string(&config).unwrap();
        let parsed = clinic_relay::config::Config::from_toml(&text, &config);
        assert!(parsed.is_ok(), "{name}: {}", parsed.unwrap_err());
    }
}

#[test]
fn config_check_shows_clean_absolute_paths_for_a_relative_config() {
    let install = TestInstall::new("");
    let dir = install.tmp.path();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(dir.join("sub"))
        .args(["config", "check", "--config", "../sub/./../config.toml"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let dir = dir.canonicalize().unwrap();
    assert!(
        text.starts_with(&format!("{}: OK", dir.join("config.toml").display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("data in {}", dir.join("data").display())),
        "{text}"
    );
    assert!(!text.contains(".."), "{text}");
}

/// A raw request on the API socket; returns the whole answer, lower-cased
/// head included (for the `Allow` header).
async fn raw(socket: &std::path::Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_backup_on_the_socket_a_wrong_method_is_405_not_403() {
    let d = Daemon::start("").await;
    let socket = d.running.api_socket.clone();
    for method in ["POST", "PUT", "DELETE"] {
        let answer = raw(
            &socket,
            &format!("{method} /v1/admin/backup HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("http/1.1 405"), "{method}: {answer}");
        assert!(answer.contains("allow: get\r\n"), "{method}: {answer}");
        assert!(!answer.contains("unix socket"), "{method}: {answer}");
    }
    let (status, problem) = d.api("GET", "/v1/admin/nothing", None).await;
    assert_eq!(status, 404, "{problem}");
    let seq = d.running.vault.audit_seq();
    let (status, _) = d.api("POST", "/v1/admin/backup", None).await;
    assert_eq!(status, 405);
    assert_eq!(d.running.vault.audit_seq(), seq, "no backup was taken");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_cursor_past_the_head_is_refused_and_names_the_head() {
    use clinic_relay::audit::AuditDraft;
    use clinic_relay::model::{Event, EventKind};
    use clinic_relay::vault::{Owner, Tree, Txn};
    let d = Daemon::start("").await;
    let (status, problem) = d.api("GET", "/v1/events?after=1", None).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["head"], 0, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("head is 0"),
        "{problem}"
    );
    let vault = d.running.vault.clone();
    tokio::task::spawn_blocking(move || {
        for n in 0..2 {
            let mut txn = Txn::new(t0());
            let event = Event {
                kind: EventKind::OptedOut,
                time: t0(),
                patient: None,
                appointment: Some(format!("APPT-{n}")),
                slot: None,
                details: Default::default(),
            };
            txn.append_json(Tree::Events, Owner::System, &event)
                .unwrap();
            txn.audit(AuditDraft::new("test", "event"));
            vault.commit(txn).unwrap();
        }
    })
    .await
    .unwrap();
    // At the head: fine (and a long-poll would wait there).
    let (status, page) = d.api("GET", "/v1/events?after=2", None).await;
    assert_eq!((status, page["cursor"].clone()), (200, json!(2)), "{page}");
    let (status, problem) = d.api("GET", "/v1/events?after=42&wait=5", None).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["head"], 2, "{problem}");
    assert_eq!(problem["type"], "urn:clinic-relay:problem:bad-request");
    assert!(
        problem["detail"].as_str().unwrap().contains("head is 2"),
        "{problem}"
    );
    d.stop().await;
}

fn backup_audits(vault: &clinic_relay::vault::Vault) -> usize {
    vault
        .audit_entries(1)
        .filter(|(_, e)| e.as_ref().unwrap().action == "backup.create")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backup_create_is_not_audited() {
    let d = Daemon::start("").await;
    let config = d.install.config.clone();
    let dir = d.install.tmp.path().to_owned();
    let existing = dir.join("exists.backup");
    std::fs::write(&existing, b"keep me").unwrap();

    let out = run_cli_async(&config, &["backup", "create", existing.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let missing = dir.join("no-such-folder/x.backup");
    let out = run_cli_async(&config, &["backup", "create", missing.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert_eq!(
        backup_audits(&d.running.vault),
        0,
        "failed backups were audited"
    );

    let good = dir.join("good.backup");
    let out = run_cli_async(&config, &["backup", "create", good.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(backup_audits(&d.running.vault), 1);
    let install = d.stop().await;

    // Without a daemon the CLI takes the backup itself, and audits it once
    // it is on disk; a failure is not audited.
    let out = run_cli_async(
        &install.config,
        &["backup", "create", existing.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    let offline = install.tmp.path().join("offline.backup");
    let out = run_cli_async(
        &install.config,
        &["backup", "create", offline.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(offline.exists());
    let vault = install.open();
    assert_eq!(backup_audits(&vault), 2);
    vault.verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_since_takes_a_plain_date() {
    // The daemon's clock is t0 = 2027-01-15T08:00:00Z: its entries are on
    // that day in Berlin (the test config's service.time_zone).
    let install = Daemon::start("").await.stop().await;
    let export = |since: &'static str| {
        let config = install.config.clone();
        async move {
            let out = run_cli_async(&config, &["audit", "export", "--since", since]).await;
            assert!(out.status.success(), "--since {since}: {}", stderr(&out));
            stdout(&out).lines().count()
        }
    };
    let all = export("2027-01-15").await;
    assert!(all > 0);
    assert_eq!(export("2027-01-15T00:00:00+01:00").await, all);
    assert_eq!(export("2027-01-16").await, 0);
    let out = run_cli_async(
        &install.config,
        &["audit", "export", "--since", "15.01.2027"],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
}
