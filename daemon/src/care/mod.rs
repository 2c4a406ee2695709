//! Patient workflows (issue 10), first slice: appointment reminders with
//! Confirm / Cancel quick replies.
//!
//! - `config`: the `[reminders]` section.
//! - `reminder`: the workflow as a pure state machine (no I/O, no clock).
//! - `store`: workflow states and the durable timer index in `Tree::Care`.
//! - `shell`: runs decisions on the vault's writer and stages their effects
//!   in the caller's txn (appointments from `commands`, taps from
//!   `webhook::apply`, due timers from the scheduler).
//! - `scheduler`: the `care-scheduler` task.
//! - `consent`: opt-out / opt-in keywords in the chat.
//! - `messages`: the texts per language (`config/messages/<lang>.toml`).
//! - `texts`: which text each reply is, the visit's date and time.
//! - `reschedule`: which open slots a "Reschedule" tap offers;
//!   `slots`: reading them and offering them as a list.
//! - `results`: a result document behind an identity check, as a pure
//!   state machine; `results_shell` runs it on the writer, `proof` reads
//!   a date of birth or a code from free text, `results_config` is the
//!   `[results]` section.
//! - `booking`: the Book menu entry for a known patient (open slots,
//!   a hold, the request to the PMS, its answer).
//! - `conversation`: the chat bot (greeting, menu, hand-off to staff) and
//!   the staff inbox's state (issue 11); `intake` (pure) and
//!   `intake_shell`: an unknown number's name, birth date and consent
//!   becoming a new-patient request; `my_appointments` and `results_menu`:
//!   the menu's My appointments and Results for a known patient.

pub mod booking;
pub mod config;
pub mod consent;
pub mod conversation;
pub mod intake;
pub mod intake_shell;
pub mod ledger;
pub mod messages;
pub mod my_appointments;
pub mod proof;
pub mod reminder;
pub mod reschedule;
pub mod results;
pub mod results_config;
pub mod results_menu;
pub mod results_shell;
pub mod scheduler;
pub mod shell;
pub mod slots;
pub mod store;
pub mod texts;

/// What the workflows need from the config, held by the vault so that the
/// writer's decisions can reach it (`Vault::set_care`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub reminders: config::RemindersConfig,
    pub conversations: conversation::config::ConversationsConfig,
    pub time_zone: jiff::tz::TimeZone,
    pub outbound: crate::pms::outbound::OutboundConfig,
    pub results: results_config::ResultsConfig,
    /// Document limits for the result PDFs (`whatsapp.max_document_bytes`).
    pub media: crate::whatsapp::media::MediaConfig,
    /// Self-service booking (`[booking]`).
    pub booking: booking::config::BookingConfig,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            reminders: config.reminders.clone(),
            conversations: config.conversations.clone(),
            time_zone: config.service.time_zone.clone(),
            outbound: config.pms.outbound.clone(),
            results: config.results.clone(),
            media: config.whatsapp.media.clone(),
            booking: config.booking.clone(),
        }
    }
}
