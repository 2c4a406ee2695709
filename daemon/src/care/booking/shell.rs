//! Bookings on the vault's writer: resolves a tap against the slot table,
//! runs the pure [`decide`](super::decide), and stages the state, the
//! hold and its timer, the `SRM^S01` (through `pms::outbound::stage`, the
//! one path for patient actions), the feed events, audit entries and the
//! replies in the caller's txn (a webhook call's, a PMS message's, the
//! scheduler's).

use super::search::{self, Group, Window};
use super::store::{self, GroupRef, Tap, Token};
use super::{decide, Booking, Effect, Failure, Input, Pick, Rules, Say, HOLD_EXPIRY};
use crate::care::Settings;
use crate::model::{Appointment, Event, EventKind, PatientId};
use crate::pms::outbound::{ActionError, PatientAction};
use crate::vault::{Txn, Vault, VaultResult};
use crate::whatsapp::message::{self, Frame, Row};
use jiff::Timestamp;
use std::collections::HashSet;
use std::sync::Arc;

/// The audit actor of what the booking flow does.
pub const ACTOR: &str = "care:booking";

fn settings(vault: &Vault) -> Option<Arc<Settings>> {
    vault.care().filter(|s| s.booking.enabled)
}

/// Whether the Book menu entry is automated (else it goes to staff).
pub fn enabled(vault: &Vault) -> bool {
    settings(vault).is_some()
}

/// The open slots as the patient may see them: in start order, without
/// those held for others.
struct Open {
    sorted: Arc<Vec<crate::model::Slot>>,
    held: HashSet<String>,
    now: Timestamp,
    days: u32,
}

impl Open {
    fn load(
        vault: &Vault,
        txn: &Txn,
        settings: &Settings,
        patient: PatientId,
        now: Timestamp,
    ) -> VaultResult<Self> {
        Ok(Self {
            sorted: vault.slots_by_start()?,
            held: store::held_ids(vault, txn, now, Some(patient))?,
            now,
            days: settings.booking.days,
        })
    }

    /// [`Open::load`] without the slots `removed` (staged, not yet read).
    fn load_without(
        vault: &Vault,
        txn: &Txn,
        settings: &Settings,
        patient: PatientId,
        now: Timestamp,
        removed: &HashSet<String>,
    ) -> VaultResult<Self> {
        let mut open = Self::load(vault, txn, settings, patient, now)?;
        open.held.extend(removed.iter().cloned());
        Ok(open)
    }

    fn window(&self) -> Window<'_> {
        Window {
            now: self.now,
            days: self.days,
            held: &self.held,
        }
    }

    fn groups(&self) -> Vec<Group> {
        search::groups(&self.sorted, &self.window())
    }

    fn group(&self, vault: &Vault, r: GroupRef) -> Option<Group> {
        self.groups()
            .into_iter()
            .find(|g| store::group_ref(vault, g) == r)
    }

    fn pick(&self, vault: &Vault, start: Timestamp, r: store::Ref) -> Option<Pick> {
        search::at(&self.sorted, &self.window(), start)
            .into_iter()
            .find(|s| store::slot_ref(vault, &s.id) == r)
            .map(Pick::of)
    }
}

/// The patient chose Book (from the conversation, in its txn).
pub fn start(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    language: Option<String>,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = settings(vault) else {
        return Ok(());
    };
    let open = Open::load(vault, txn, &settings, patient, now)?;
    let several = open.groups().len() > 1;
    run(
        vault,
        txn,
        &settings,
        patient,
        Input::Start { several, language },
        now,
    )
}

/// The conversation left the booking (idle reset, a greeting, staff): a
/// booking being chosen ends; one the PMS was asked about stays.
pub fn end(vault: &Vault, txn: &mut Txn, patient: PatientId, now: Timestamp) -> VaultResult<()> {
    let Some(settings) = settings(vault) else {
        return Ok(());
    };
    run(vault, txn, &settings, patient, Input::End, now)
}

/// Whether staff hold the patient's conversation: then the bot answers
/// nothing, a booking tap included (it is shown to staff in the inbox).
fn with_staff(vault: &Vault, txn: &Txn, patient: PatientId) -> VaultResult<bool> {
    use crate::care::conversation::{store as conv, Contact};
    let id = conv::id(vault, &Contact::Patient(patient));
    Ok(conv::load_in(vault, txn, &id)?.is_some_and(|c| c.phase.with_staff()))
}

/// A row or button id from `patient`: true when it was ours (handled).
pub fn on_tap(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    reply_id: &str,
    now: Timestamp,
) -> VaultResult<bool> {
    if !store::is_payload(reply_id) || with_staff(vault, txn, patient)? {
        return Ok(false);
    }
    let (Some(settings), Some(tap)) = (settings(vault), store::parse_payload(reply_id)) else {
        tracing::info!("a booking button that no longer applies is ignored");
        return Ok(true);
    };
    let open = Open::load(vault, txn, &settings, patient, now)?;
    let input = match tap {
        Tap::Group(r) => match open.group(vault, r) {
            Some(g) => Input::Group(g),
            None => Input::Start {
                several: open.groups().len() > 1,
                language: None,
            },
        },
        Tap::Page(page, r) => Input::Page {
            group: r.and_then(|r| open.group(vault, r)),
            page,
        },
        Tap::Slot(start, r) => Input::Slot(open.pick(vault, start, r)),
        Tap::Yes(start, r) => Input::Yes(open.pick(vault, start, r)),
        Tap::AnotherTime => Input::AnotherTime,
    };
    run(vault, txn, &settings, patient, input, now)?;
    Ok(true)
}

/// A text from `patient`: "later" (`keywords.later`) while a list of
/// times is out pages on. True when handled.
pub fn on_text(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    body: &str,
    now: Timestamp,
) -> VaultResult<bool> {
    let Some(settings) = settings(vault) else {
        return Ok(false);
    };
    if !settings
        .reminders
        .messages
        .is_keyword("keywords.later", body)
    {
        return Ok(false);
    }
    let Some(b) = store::load_in(vault, txn, &store::token(vault, patient))? else {
        return Ok(false);
    };
    if with_staff(vault, txn, patient)? {
        return Ok(false);
    }
    let super::Step::Choosing { page } = b.step else {
        return Ok(false);
    };
    let input = Input::Page {
        group: b.group.clone(),
        page: page.saturating_add(1),
    };
    run(vault, txn, &settings, patient, input, now)?;
    Ok(true)
}

/// An appointment as the PMS or the API left it (from `commands`, in the
/// txn that stores it): at a held slot's time (same provider and location
/// when both name one) it answers that hold's booking request.
pub fn on_appointment(
    vault: &Vault,
    txn: &mut Txn,
    a: &Appointment,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = settings(vault) else {
        return Ok(());
    };
    if !a.status.is_upcoming() {
        return Ok(());
    }
    let same = |x: &Option<String>, y: &Option<String>| match (x, y) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    // A hold past its time still waits for its timer: the PMS's answer
    // counts until the timer has fired.
    let matching: Vec<store::Hold> = store::holds(vault, txn, Timestamp::MIN)?
        .into_iter()
        .filter(|h| h.pick.start == a.start)
        .filter(|h| same(&h.pick.provider, &a.provider) && same(&h.pick.location, &a.location))
        .collect();
    for h in matching {
        let input = Input::Appointment {
            slot: h.pick.slot.clone(),
            mine: h.patient == a.patient,
        };
        run(vault, txn, &settings, h.patient, input, now)?;
    }
    Ok(())
}

/// A hold's expiry timer (from `care::shell::fire_due`; its removal is in
/// `txn` already). `token` names the booking.
pub fn on_timer(
    vault: &Vault,
    txn: &mut Txn,
    token: &Token,
    due: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let (Some(settings), Some(b)) = (settings(vault), store::load_in(vault, txn, token)?) else {
        return Ok(());
    };
    let patient = b.patient;
    run(
        vault,
        txn,
        &settings,
        patient,
        Input::HoldExpired { due },
        now,
    )
}

fn run(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    patient: PatientId,
    input: Input,
    now: Timestamp,
) -> VaultResult<()> {
    let token = store::token(vault, patient);
    let before = store::load_in(vault, txn, &token)?;
    let rules = Rules {
        hold: settings.booking.hold,
    };
    let (after, effects) = decide(before.clone(), patient, input, now, rules);
    let lang = language(vault, settings, after.as_ref().or(before.as_ref()), patient)?;
    let group = after.as_ref().and_then(|b| b.group.clone());
    // Reads do not see what this txn stages: a slot it takes out of the
    // table must not be offered by the same decision.
    let removed = effects
        .iter()
        .filter_map(|e| match e {
            Effect::RemoveSlot(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let cx = Cx {
        vault,
        settings,
        patient,
        token,
        lang: &lang,
        now,
        removed,
    };
    for effect in effects {
        cx.stage(txn, effect, group.as_ref())?;
    }
    match after {
        Some(b) if before.as_ref() != Some(&b) => store::stage(txn, &token, &b)?,
        None if before.is_some() => store::remove(txn, &token),
        _ => {}
    }
    Ok(())
}

/// The language of the booking's conversation, else the patient's
/// (chosen in the chat, else PID-15), else the clinic's default.
fn language(
    vault: &Vault,
    settings: &Settings,
    b: Option<&Booking>,
    patient: PatientId,
) -> VaultResult<String> {
    let catalog = &settings.reminders.messages;
    if let Some(l) = b
        .and_then(|b| b.language.as_deref())
        .filter(|l| catalog.has(l))
    {
        return Ok(l.to_owned());
    }
    let theirs = crate::care::shell::contact(vault, patient)?.and_then(|(_, l)| l);
    Ok(catalog.language(theirs.as_deref()).to_owned())
}

/// One decision's context.
struct Cx<'a> {
    vault: &'a Vault,
    settings: &'a Settings,
    patient: PatientId,
    token: Token,
    lang: &'a str,
    now: Timestamp,
    /// Slots this decision takes out of the table.
    removed: HashSet<String>,
}

impl Cx<'_> {
    fn text(&self, key: &'static str) -> &str {
        self.settings.reminders.messages.text(self.lang, key)
    }

    /// A slot's time as a row title and in texts.
    fn when(&self, start: Timestamp) -> String {
        crate::care::texts::slot_title(
            &self.settings.reminders.messages,
            start,
            &self.settings.time_zone,
            self.lang,
        )
    }

    fn stage(&self, txn: &mut Txn, effect: Effect, group: Option<&Group>) -> VaultResult<()> {
        let (vault, now) = (self.vault, self.now);
        match effect {
            Effect::OfferGroups => self.offer_groups(txn, group)?,
            Effect::OfferSlots { group, page } => self.offer_slots(txn, group.as_ref(), page)?,
            Effect::AskConfirm(pick) => {
                let body = self
                    .text("booking.confirm")
                    .replace("{when}", &self.when(pick.start));
                let r = store::slot_ref(vault, &pick.slot);
                let yes = store::payload(Tap::Yes(pick.start, r));
                let other = store::payload(Tap::AnotherTime);
                let frame = Frame {
                    header: None,
                    body: &body,
                    footer: None,
                };
                let buttons = [
                    (yes.as_str(), self.text("booking.yes")),
                    (other.as_str(), self.text("booking.another")),
                ];
                self.send(txn, message::buttons(&frame, &buttons))?;
            }
            Effect::Hold { pick, until } => {
                let hold = store::Hold {
                    patient: self.patient,
                    pick,
                    until,
                };
                store::stage_hold(vault, txn, &hold)?;
                crate::care::store::stage_timer(txn, until, &self.token, HOLD_EXPIRY, self.patient);
            }
            Effect::Release { slot, until } => {
                store::remove_hold(vault, txn, &slot);
                crate::care::store::stage_cancel(txn, until, &self.token, HOLD_EXPIRY);
            }
            Effect::Request(pick) => {
                let action = PatientAction::Book {
                    patient: self.patient,
                    slot: pick.slot,
                };
                let cfg = &self.settings.outbound;
                match crate::pms::outbound::stage(vault, txn, cfg, &action, ACTOR, now) {
                    Ok(_) => {}
                    Err(ActionError::Vault(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "a booking request could not be put to the PMS");
                        let mut ev = self.event(EventKind::MessageFailed, None);
                        ev.details
                            .insert("reason".to_owned(), "pms-message".to_owned());
                        vault.stage_event(txn, &ev)?;
                    }
                }
            }
            Effect::RemoveSlot(slot) => vault.stage_remove_slot(txn, &slot)?,
            Effect::Say(say) => {
                let text = match say {
                    Say::Asking => self.text("booking.asking").to_owned(),
                    Say::Booked(start) => self
                        .text("booking.booked")
                        .replace("{when}", &self.when(start)),
                    Say::Taken => self.text("booking.taken").to_owned(),
                    Say::Gone => self.text("reply.slot_gone").to_owned(),
                    Say::StillWaiting => self.text("booking.waiting").to_owned(),
                };
                self.send(txn, message::text(&text))?;
            }
            Effect::Confirmed(pick) => {
                let ev = self.event(EventKind::BookingConfirmed, Some(&pick));
                vault.stage_event(txn, &ev)?;
                txn.audit(self.audit("booking.confirmed"));
            }
            Effect::Failed(pick, why) => {
                let mut ev = self.event(EventKind::BookingFailed, Some(&pick));
                ev.details
                    .insert("reason".to_owned(), why.as_str().to_owned());
                vault.stage_event(txn, &ev)?;
                let action = match why {
                    Failure::Taken => "booking.taken",
                    Failure::Expired => "booking.expired",
                };
                txn.audit(self.audit(action));
            }
        }
        Ok(())
    }

    fn event(&self, kind: EventKind, pick: Option<&Pick>) -> Event {
        Event {
            kind,
            time: self.now,
            patient: Some(self.patient),
            appointment: None,
            slot: pick.map(|p| p.slot.clone()),
            details: Default::default(),
        }
    }

    fn audit(&self, action: &str) -> crate::audit::AuditDraft {
        crate::audit::AuditDraft::new(ACTOR, action).subject(self.patient.to_string())
    }

    /// The services (or providers) as a list, by their configured labels.
    fn offer_groups(&self, txn: &mut Txn, group: Option<&Group>) -> VaultResult<()> {
        let open = Open::load_without(
            self.vault,
            txn,
            self.settings,
            self.patient,
            self.now,
            &self.removed,
        )?;
        let groups = open.groups();
        if groups.len() < 2 {
            return self.offer_slots(txn, group, 0);
        }
        let labels = &self.settings.booking.labels;
        let option = self.text("booking.option");
        let rows: Vec<(String, String)> = groups
            .iter()
            .take(crate::care::reschedule::MAX_ROWS)
            .enumerate()
            .map(|(i, g)| {
                let id = store::payload(Tap::Group(store::group_ref(self.vault, g)));
                let title = labels
                    .get(g.code())
                    .cloned()
                    .unwrap_or_else(|| format!("{option} {}", i + 1));
                (id, title)
            })
            .collect();
        let (body, button) = (self.text("booking.choose"), self.text("booking.button"));
        self.send_list(txn, body, button, &rows)
    }

    /// Page `page` of the open slots of `group`, with a "Later" row when
    /// more follow; past the last page, the first again; none at all: a
    /// text that says so.
    fn offer_slots(&self, txn: &mut Txn, group: Option<&Group>, page: u32) -> VaultResult<()> {
        let open = Open::load_without(
            self.vault,
            txn,
            self.settings,
            self.patient,
            self.now,
            &self.removed,
        )?;
        let w = open.window();
        let (mut slots, mut more) = search::page(&open.sorted, &w, group, page);
        let mut page = page;
        if slots.is_empty() && page > 0 {
            page = 0;
            (slots, more) = search::page(&open.sorted, &w, group, 0);
        }
        if slots.is_empty() {
            return self.send(txn, message::text(self.text("booking.none")));
        }
        let mut rows: Vec<(String, String)> = slots
            .iter()
            .map(|s| {
                let r = store::slot_ref(self.vault, &s.id);
                (store::payload(Tap::Slot(s.start, r)), self.when(s.start))
            })
            .collect();
        if more {
            let g = group.map(|g| store::group_ref(self.vault, g));
            let next = store::payload(Tap::Page(page.saturating_add(1), g));
            rows.push((next, self.text("booking.later").to_owned()));
        }
        let (body, button) = (self.text("booking.times"), self.text("slots.button"));
        self.send_list(txn, body, button, &rows)
    }

    fn send_list(
        &self,
        txn: &mut Txn,
        body: &str,
        button: &str,
        rows: &[(String, String)],
    ) -> VaultResult<()> {
        let rows: Vec<Row<'_>> = rows
            .iter()
            .map(|(id, title)| Row {
                id,
                title,
                description: None,
            })
            .collect();
        let frame = Frame {
            header: None,
            body,
            footer: None,
        };
        self.send(txn, message::list(&frame, button, &[(None, rows)]))
    }

    /// A reply inside the window the patient's message opened (`care-`
    /// references are a workflow's replies to the policy).
    fn send(
        &self,
        txn: &mut Txn,
        built: Result<message::OutMessage, message::BuildError>,
    ) -> VaultResult<()> {
        let msg = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "a booking message could not be built");
                return Ok(());
            }
        };
        let Some((to, _)) = crate::care::shell::contact(self.vault, self.patient)? else {
            return Ok(());
        };
        let reference = format!(
            "care-book:{}",
            hex::encode(self.token.get(..6).unwrap_or_default())
        );
        crate::care::shell::queue_reply_as(
            self.vault,
            txn,
            Some(self.patient),
            to,
            msg,
            reference,
            self.now,
        )
    }
}
