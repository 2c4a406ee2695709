//! The WhatsApp commands of the CLI.

use super::client::{GraphClient, Token};
use crate::config::Config;

/// A client for the account's template endpoints, and a runtime to drive
/// it; `what` names the command in the errors.
fn account_client(
    config: &Config,
    what: &str,
) -> Result<(tokio::runtime::Runtime, GraphClient), String> {
    let wa = &config.whatsapp;
    let Some(path) = wa.token_path() else {
        return Err(format!("{what} needs live credentials: set whatsapp.phone_number_id and whatsapp.token_file (or the systemd credential whatsapp-token)"));
    };
    if wa.business_account_id.is_none() {
        return Err(format!(
            "{what} needs whatsapp.business_account_id (the WhatsApp Business Account id)"
        ));
    }
    let token = Token::load(&path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // hyper's connection pool needs the runtime while it is built.
    let client = {
        let _guard = rt.enter();
        GraphClient::new(wa, Some(token)).map_err(|e| e.to_string())?
    };
    Ok((rt, client))
}

/// `clinic-relay templates check`.
pub fn templates_check(config: &Config) -> Result<(), String> {
    let (rt, client) = account_client(config, "templates check")?;
    let findings = rt.block_on(async {
        super::templates::check(&client)
            .await
            .map_err(|e| format!("listing the account's templates failed: {e}"))
    })?;
    let mut bad = 0;
    for f in &findings {
        println!("{:<32} {:<6} {}", f.name, f.language, f.state);
        if !f.ok() {
            bad += 1;
        }
    }
    if bad > 0 {
        return Err(format!(
            "{bad} of {} templates are not approved: submit the missing ones (`clinic-relay templates create`) and fix the rejected ones in the WhatsApp Manager",
            findings.len()
        ));
    }
    Ok(())
}

/// `clinic-relay whatsapp check`: one line per check; an error (exit 1)
/// when any says FIX.
pub fn whatsapp_check(config: &Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let findings = rt.block_on(super::check::run(config));
    for f in &findings {
        println!("{f}");
    }
    let fix = findings
        .iter()
        .filter(|f| f.verdict == super::check::Verdict::Fix)
        .count();
    if fix > 0 {
        return Err(format!(
            "whatsapp check: {fix} thing(s) to fix (the FIX lines above)"
        ));
    }
    Ok(())
}

/// `clinic-relay templates create`: submits each shipped template the
/// account does not have. A rejected or paused one is not submitted again
/// (Meta wants it edited, not duplicated): it is listed for a person to fix.
pub fn templates_create(config: &Config) -> Result<(), String> {
    let (rt, client) = account_client(config, "templates create")?;
    rt.block_on(async {
        let findings = super::templates::check(&client)
            .await
            .map_err(|e| format!("listing the account's templates failed: {e}"))?;
        let mut failed = 0;
        for f in &findings {
            if f.state != "missing" {
                println!(
                    "{:<32} {:<6} {} (left as it is)",
                    f.name, f.language, f.state
                );
                continue;
            }
            let Some(definition) = super::templates::definition(&f.name, &f.language) else {
                continue;
            };
            match client.create_template(&definition).await {
                Ok(answer) => {
                    let status = answer
                        .get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("submitted")
                        .to_ascii_lowercase();
                    println!("{:<32} {:<6} submitted: {status}", f.name, f.language);
                }
                Err(e) => {
                    failed += 1;
                    println!("{:<32} {:<6} NOT submitted: {e}", f.name, f.language);
                }
            }
        }
        if failed > 0 {
            return Err(format!(
                "{failed} templates could not be submitted (see above)"
            ));
        }
        Ok(())
    })
}

/// `clinic-relay outbox list [--limit N] [--show-content]`. With the content
/// (PHI), the read is audited first (`outbox.read`, one entry per patient
/// shown), and nothing is printed if the audit entry cannot be written.
pub fn outbox_list(
    vault: &crate::vault::Vault,
    limit: usize,
    show_content: bool,
) -> Result<(), String> {
    let rows = if show_content {
        let rows = super::outbox::list_with_content(vault, limit).map_err(|e| e.to_string())?;
        let mut patients: Vec<_> = rows
            .iter()
            .filter(|r| r.content.is_some())
            .map(|r| r.patient)
            .collect();
        patients.sort_by_key(|p| p.map(|p| p.to_string()));
        patients.dedup();
        let drafts = patients.into_iter().map(|p| {
            let mut d = crate::audit::AuditDraft::new("admin:cli", "outbox.read");
            d.subject = p.map(|p| p.to_string());
            d
        });
        vault
            .record_audit_blocking(crate::clock::Clock::now(&crate::clock::SystemClock), drafts)
            .map_err(|e| format!("the read could not be audited, nothing shown: {e}"))?;
        rows
    } else {
        super::outbox::list(vault, limit).map_err(|e| e.to_string())?
    };
    println!(
        "seq\tstate\tkind\ttemplate\tpatient\tattempts\tat\twamid{}",
        if show_content { "\tcontent" } else { "" }
    );
    for r in rows {
        let content = match (&r.content, show_content) {
            (Some(c), true) => format!("\t{c}"),
            (None, true) => "\t-".to_owned(),
            _ => String::new(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}{content}",
            r.seq,
            r.state,
            r.kind.as_str(),
            r.template.unwrap_or_else(|| "-".to_owned()),
            r.patient.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            r.attempts,
            r.at,
            r.wamid.unwrap_or_else(|| "-".to_owned()),
        );
    }
    Ok(())
}
