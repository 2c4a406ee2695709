//! What the WhatsApp account last said about its message templates, kept in
//! the vault so that a send with a template Meta would refuse (missing,
//! pending, rejected, paused, disabled) fails at enqueue, where the caller
//! can still choose another way to reach the patient, and not minutes later
//! at Meta as a dead letter.
//!
//! The book is refreshed from `GET /{waba-id}/message_templates` when the
//! daemon starts with live credentials and then every hour (after a failed
//! listing, every five minutes). Until the first listing succeeds (dry-run,
//! no business account id, Meta unreachable since the first start) the
//! shipped definitions stand in for it: a template we ship is accepted, any
//! other name is refused. A stale book is still used: a template approved
//! an hour ago is very likely still approved, and Meta's own refusal (132xxx)
//! remains the last line.

use super::client::{ApiError, GraphClient};
use super::templates;
use crate::clock::SharedClock;
use crate::vault::{Owner, Tree, Txn, Vault, VaultResult};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

const BOOK_KEY: &[u8] = b"whatsapp.templates";
/// How often the account's templates are listed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// How soon a failed listing is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

/// One template as the account lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub language: String,
    /// Meta's status, lower case: approved, pending, rejected, paused, disabled…
    pub status: String,
    pub category: String,
}

/// The account's templates at `checked_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateBook {
    pub checked_at: Timestamp,
    pub templates: Vec<Entry>,
}

/// Why a template cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateRefusal {
    #[error(
        "template {name}/{language} is not on the WhatsApp account (listed {checked_at}): submit it \
         (`clinic-relay templates create`) and wait for Meta's approval"
    )]
    Missing {
        name: String,
        language: String,
        checked_at: Timestamp,
    },
    #[error(
        "template {name}/{language} is {status} on the WhatsApp account (listed {checked_at}), \
         not approved: see `clinic-relay templates check` and fix it in the WhatsApp Manager"
    )]
    NotApproved {
        name: String,
        language: String,
        status: String,
        checked_at: Timestamp,
    },
    #[error(
        "template {name}/{language} is not one the daemon ships and the account's templates have \
         not been listed yet: use a shipped template (`clinic-relay templates check`)"
    )]
    Unknown { name: String, language: String },
}

impl TemplateBook {
    /// The book as last stored (None before the first successful listing).
    pub fn load(vault: &Vault) -> VaultResult<Option<Self>> {
        vault.get_json(Tree::Meta, BOOK_KEY)
    }

    pub fn stage(&self, txn: &mut Txn) -> VaultResult<()> {
        txn.put_json(Tree::Meta, BOOK_KEY, Owner::System, self)
    }

    fn find(&self, name: &str, language: &str) -> Option<&Entry> {
        self.templates
            .iter()
            .find(|t| t.name == name && t.language == language)
    }
}

/// May a message with template `name`/`language` be queued?
pub fn verdict(
    book: Option<&TemplateBook>,
    name: &str,
    language: &str,
) -> Result<(), TemplateRefusal> {
    let Some(book) = book else {
        return if templates::is_shipped(name, language) {
            Ok(())
        } else {
            Err(TemplateRefusal::Unknown {
                name: name.to_owned(),
                language: language.to_owned(),
            })
        };
    };
    match book.find(name, language) {
        Some(e) if e.status == "approved" => Ok(()),
        Some(e) => Err(TemplateRefusal::NotApproved {
            name: name.to_owned(),
            language: language.to_owned(),
            status: e.status.clone(),
            checked_at: book.checked_at,
        }),
        None => Err(TemplateRefusal::Missing {
            name: name.to_owned(),
            language: language.to_owned(),
            checked_at: book.checked_at,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("listing the account's templates failed: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// Lists the account's templates and stores the book; returns it.
pub async fn refresh(
    vault: &Vault,
    client: &GraphClient,
    now: Timestamp,
) -> Result<TemplateBook, RefreshError> {
    let remote = client.templates().await?;
    let book = TemplateBook {
        checked_at: now,
        templates: remote
            .into_iter()
            .map(|t| Entry {
                name: t.name,
                language: t.language,
                status: t.status.to_ascii_lowercase(),
                category: t.category.to_ascii_lowercase(),
            })
            .collect(),
    };
    let stored = book.clone();
    vault
        .write(move |_| {
            let mut txn = Txn::new(now);
            stored.stage(&mut txn)?;
            Ok::<_, RefreshError>((txn, ()))
        })
        .await?;
    Ok(book)
}

/// Keeps the book fresh until `stop`: at once, then every
/// [`REFRESH_EVERY`], or [`RETRY_AFTER`] a failure.
pub async fn run(
    vault: Vault,
    client: GraphClient,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = match refresh(&vault, &client, clock.now()).await {
            Ok(book) => {
                let unusable = book
                    .templates
                    .iter()
                    .filter(|t| t.status != "approved")
                    .count();
                info!(
                    templates = book.templates.len(),
                    not_approved = unusable,
                    "WhatsApp templates listed"
                );
                REFRESH_EVERY
            }
            Err(e) => {
                warn!(error = %e, "the WhatsApp templates could not be listed; the last list stays in use");
                RETRY_AFTER
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(next) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(status: &str) -> TemplateBook {
        TemplateBook {
            checked_at: Timestamp::UNIX_EPOCH,
            templates: vec![Entry {
                name: "appointment_reminder".into(),
                language: "de".into(),
                status: status.into(),
                category: "utility".into(),
            }],
        }
    }

    #[test]
    fn only_an_approved_listed_template_passes() {
        assert_eq!(
            verdict(Some(&book("approved")), "appointment_reminder", "de"),
            Ok(())
        );
        let e = verdict(Some(&book("rejected")), "appointment_reminder", "de").unwrap_err();
        assert!(e.to_string().contains("is rejected"), "{e}");
        let e = verdict(Some(&book("approved")), "appointment_reminder", "en").unwrap_err();
        assert!(matches!(e, TemplateRefusal::Missing { .. }), "{e}");
    }

    #[test]
    fn before_the_first_listing_the_shipped_templates_stand_in() {
        assert_eq!(verdict(None, "appointment_reminder", "en"), Ok(()));
        let e = verdict(None, "black_friday_sale", "en").unwrap_err();
        assert!(matches!(e, TemplateRefusal::Unknown { .. }), "{e}");
    }
}
