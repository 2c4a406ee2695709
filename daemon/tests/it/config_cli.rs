//! `clinic-relay config check` and start-up key checks through the real
//! binary: each error names the key and the fix, and the exit code says it.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;

fn check_fails(install: &TestInstall, expected: &[&str]) {
    let out = install.run(&["config", "check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

#[test]
fn a_valid_config_checks_ok() {
    let install = TestInstall::new("");
    let out = install.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK"));
    assert!(stdout(&out).contains("Europe/Berlin"));
}

#[test]
fn unknown_key() {
    let install = TestInstall::new("[pms]\nmllp_port = 2575\n");
    check_fails(
        &install,
        &["unknown key `pms.mllp_port`", "docs/configuration.md"],
    );
}

#[test]
fn bad_time_zone() {
    let install = TestInstall::new("");
    let text = std::fs::read_to_string(&install.config)
        .unwrap()
        .replace("Europe/Berlin", "Europe/Atlantis");
    std::fs::write(&install.config, text).unwrap();
    check_fails(
        &install,
        &["`service.time_zone`", "Europe/Atlantis", "Fix:"],
    );
}

#[test]
fn bad_address() {
    let install = TestInstall::new("[pms]\nmllp_listen = \"2575\"\n");
    check_fails(&install, &["`pms.mllp_listen`", "\"2575\"", "0.0.0.0:2575"]);
}

#[test]
fn world_readable_key_file_is_refused_by_check_and_serve() {
    let install = TestInstall::new("");
    std::fs::set_permissions(&install.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    check_fails(&install, &["keys.master_key_file", "chmod 600", "0644"]);
    let out = install.run(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(
        !install.data.join("store").exists(),
        "nothing may be created with a bad key"
    );
}

#[test]
fn missing_config_file_says_how_to_point_at_one() {
    let out = std::process::Command::new(BIN)
        .args([
            "config",
            "check",
            "--config",
            "/nonexistent/clinic-relay.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--config"));
}

#[test]
fn env_var_names_the_config() {
    let install = TestInstall::new("");
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .env("CLINIC_RELAY_CONFIG", &install.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn keys_init_writes_0600_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let run = || {
        std::process::Command::new(BIN)
            .args(["keys", "init", "--out"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&path).unwrap();
    let second = run();
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
