//! Regression tests for the API and configuration defects of issue 7: each
//! test fails on the code before its fix.

use crate::support::*;

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
    for name in ["config/clinic-relay.toml", "config/dev.toml"] {
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
