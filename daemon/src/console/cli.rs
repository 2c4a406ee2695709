//! The offline commands of the console: `staff add|list|disable|reset` (the
//! daemon stopped: they open the vault) and `console cert`.

use super::staff::{self, Enrolment, Role};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::vault::Vault;
use std::io::BufRead;
use zeroize::Zeroizing;

/// The audit actor of the offline staff commands.
const ACTOR: &str = "admin:cli";

fn role(r: Option<&str>) -> Result<Option<Role>, String> {
    r.map(|r| r.parse::<Role>().map_err(|e| e.to_string()))
        .transpose()
}

/// One line from standard input (`--password-stdin`), without its newline.
fn password_from_stdin(wanted: bool) -> Result<Option<Zeroizing<String>>, String> {
    if !wanted {
        return Ok(None);
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    Ok(Some(Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    )))
}

fn show(name: &str, e: &Enrolment, generated: bool) {
    if generated {
        println!("password for {name} (shown once): {}", &*e.password);
    }
    println!("TOTP for {name} (shown once): scan the code with the authenticator app, or type in the line under it");
    if let Some(code) = qr(&e.otpauth) {
        println!("{}", &*code);
    }
    println!("{}", &*e.otpauth);
}

/// The enrolment URI as a QR code of text blocks, for a terminal with
/// light text on a dark background (the usual one; phone scanners read
/// the light-on-dark code), with the quiet zone around it. Zeroized like
/// the URI: it is the secret.
fn qr(otpauth: &str) -> Option<Zeroizing<String>> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(otpauth, qrcode::EcLevel::M).ok()?;
    Some(Zeroizing::new(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    ))
}

pub fn add(vault: &Vault, name: &str, r: Option<&str>, stdin: bool) -> Result<(), String> {
    let role = role(r)?.unwrap_or(Role::Desk);
    let given = password_from_stdin(stdin)?;
    let e = staff::add(vault, name, role, given, ACTOR, SystemClock.now())
        .map_err(|e| e.to_string())?;
    println!("added staff account {name} (role {})", role.name());
    show(name, &e, !stdin);
    Ok(())
}

pub fn reset(vault: &Vault, name: &str, r: Option<&str>, stdin: bool) -> Result<(), String> {
    let role = role(r)?;
    let given = password_from_stdin(stdin)?;
    let e = staff::reset(vault, name, role, given, ACTOR, SystemClock.now())
        .map_err(|e| e.to_string())?;
    println!("reset staff account {name}: unlocked, new password and TOTP secret");
    show(name, &e, !stdin);
    Ok(())
}

pub fn disable(vault: &Vault, name: &str) -> Result<(), String> {
    staff::disable(vault, name, ACTOR, SystemClock.now()).map_err(|e| e.to_string())?;
    println!("disabled staff account {name}");
    Ok(())
}

pub fn list(vault: &Vault) -> Result<(), String> {
    let all = staff::list(vault).map_err(|e| e.to_string())?;
    if all.is_empty() {
        println!("no staff accounts (add one with `clinic-relay staff add NAME`)");
    }
    for a in all {
        let state = if a.disabled {
            "disabled"
        } else if a.locked {
            "locked"
        } else {
            "active"
        };
        println!(
            "{}\t{}\t{state}\tfailed logins: {}\tsince {}",
            a.name,
            a.role.name(),
            a.failures,
            a.created
        );
    }
    Ok(())
}

/// `console cert`: the certificate's SHA-256 fingerprint (the self-signed
/// one is made now if the console has none yet).
pub fn cert(config: &Config) -> Result<(), String> {
    let Some(c) = &config.console else {
        return Err("the console is off: set [console] listen in the config".to_owned());
    };
    if c.plain_http {
        return Err("console.plain_http is set: there is no certificate".to_owned());
    }
    let files = super::cert::files(c, &config.service.data_dir).map_err(|e| e.to_string())?;
    let fp = super::cert::fingerprint(&files.cert).map_err(|e| e.to_string())?;
    println!("{}", files.cert.display());
    println!("SHA-256 fingerprint: {fp}");
    Ok(())
}
