//! The WhatsApp commands of the CLI.

use super::client::{GraphClient, Token};
use crate::config::Config;

/// `clinic-relay templates check`.
pub fn templates_check(config: &Config) -> Result<(), String> {
    let wa = &config.whatsapp;
    let Some(path) = wa.token_path() else {
        return Err("templates check needs live credentials: set whatsapp.phone_number_id and whatsapp.token_file (or the systemd credential whatsapp-token)".to_owned());
    };
    if wa.business_account_id.is_none() {
        return Err(
            "templates check needs whatsapp.business_account_id (the WhatsApp Business Account id)"
                .to_owned(),
        );
    }
    let token = Token::load(&path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let findings = rt.block_on(async {
        let client = GraphClient::new(wa, Some(token)).map_err(|e| e.to_string())?;
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
            "{bad} of {} templates are not approved: submit the missing ones in the WhatsApp Manager (definitions: daemon/src/whatsapp/templates.json) and fix the rejected ones",
            findings.len()
        ));
    }
    Ok(())
}

/// `clinic-relay outbox list [--limit N]`.
pub fn outbox_list(vault: &crate::vault::Vault, limit: usize) -> Result<(), String> {
    let rows = super::outbox::list(vault, limit).map_err(|e| e.to_string())?;
    println!("seq\tstate\tkind\ttemplate\tpatient\tattempts\tat\twamid");
    for r in rows {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
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
