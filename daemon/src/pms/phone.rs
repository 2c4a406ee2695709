//! Phone numbers to E.164, the form WhatsApp addresses and our blind index
//! use. PMS data is messy ("0151 123 456-78", "(555) 123-4567", "0049…"), so
//! normalise once, at the door, with libphonenumber's rules and metadata
//! (the `phonenumber` crate) rather than our own guesses: it knows every
//! region's trunk and international prefixes and which number ranges exist,
//! and it tells a mobile from a landline.

use phonenumber::country::Id;
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, PhoneNumber, Type};

/// Longer input is not a phone number. Checked before the parser sees it so
/// that odd PMS fields never reach its rarer paths (RFC 3966 `tel:` URIs
/// with parameters were where its published panics lived).
const MAX_INPUT: usize = 64;

/// How to read numbers written without a country code: the clinic's region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonePlan {
    region: Id,
}

impl Default for PhonePlan {
    fn default() -> Self {
        Self { region: Id::DE }
    }
}

impl PhonePlan {
    /// The plan of an ISO 3166 alpha-2 region ("DE", "US"); None if
    /// libphonenumber has no numbering plan for it.
    pub fn for_region(code: &str) -> Option<Self> {
        let region: Id = code.parse().ok()?;
        DATABASE.by_id(region.as_ref())?;
        Some(Self { region })
    }

    /// The main region of a country calling code ("49" → DE, "1" → US,
    /// "44" → GB), for configurations written before `pms.phone_region`.
    pub fn for_calling_code(code: &str) -> Option<Self> {
        let code: u16 = code.parse().ok()?;
        let metas = DATABASE.by_code(&code)?;
        let main = metas
            .iter()
            .find(|m| m.is_main_country_for_code())
            .or_else(|| metas.first())?;
        Self::for_region(main.id())
    }

    /// The region, e.g. "DE".
    pub fn region(&self) -> &str {
        self.region.as_ref()
    }

    /// The region's country calling code, e.g. 49.
    pub fn calling_code(&self) -> u16 {
        DATABASE
            .by_id(self.region.as_ref())
            .map_or(0, |m| m.country_code())
    }

    /// The region's national trunk prefix ("0" in Germany, "1" in the
    /// NANP), if it has one.
    pub fn trunk_prefix(&self) -> Option<&'static str> {
        DATABASE
            .by_id(self.region.as_ref())
            .and_then(|m| m.national_prefix())
    }
}

/// A `[pms]` phone setting that cannot be used, for the config error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
    pub fix: &'static str,
}

/// The plan from `pms.phone_region` (ISO 3166 alpha-2), or from the older
/// `pms.phone_country_code` when only that is set; DE when neither is.
/// `pms.phone_trunk_prefix` is no longer needed (the region's metadata has
/// it) but is still accepted when it agrees with the region, so that old
/// files keep loading; `""` ("none") is accepted too, as it was.
pub fn plan_from_config(
    region: Option<&str>,
    country_code: Option<&str>,
    trunk_prefix: Option<&str>,
) -> Result<PhonePlan, PlanError> {
    let err = |key, value: &str, reason: String, fix| PlanError {
        key,
        value: value.to_owned(),
        reason,
        fix,
    };
    if let Some(cc) = country_code {
        let syntax = !cc.is_empty()
            && cc.len() <= 3
            && cc.chars().all(|c| c.is_ascii_digit())
            && !cc.starts_with('0');
        if !syntax {
            return Err(err(
                "pms.phone_country_code",
                cc,
                "not a country calling code".to_owned(),
                "digits without + or 00, e.g. \"49\" or \"1\"; or set pms.phone_region instead",
            ));
        }
    }
    let plan = match (region, country_code) {
        (Some(r), cc) => {
            let plan = PhonePlan::for_region(r).ok_or_else(|| {
                err(
                    "pms.phone_region",
                    r,
                    "not a region with a known numbering plan".to_owned(),
                    "an ISO 3166 alpha-2 code in upper case, e.g. \"DE\", \"AT\" or \"US\"",
                )
            })?;
            if let Some(cc) = cc.filter(|cc| *cc != plan.calling_code().to_string()) {
                return Err(err(
                    "pms.phone_country_code",
                    cc,
                    format!(
                        "pms.phone_region {} has the calling code {}",
                        plan.region(),
                        plan.calling_code()
                    ),
                    "remove pms.phone_country_code: pms.phone_region decides",
                ));
            }
            plan
        }
        (None, Some(cc)) => PhonePlan::for_calling_code(cc).ok_or_else(|| {
            err(
                "pms.phone_country_code",
                cc,
                "no region uses this country calling code".to_owned(),
                "set pms.phone_region to the clinic's ISO 3166 alpha-2 code, e.g. \"DE\"",
            )
        })?,
        (None, None) => PhonePlan::default(),
    };
    if let Some(trunk) = trunk_prefix.filter(|t| !t.is_empty()) {
        let own = plan.trunk_prefix().unwrap_or_default();
        if trunk != own {
            return Err(err(
                "pms.phone_trunk_prefix",
                trunk,
                format!("numbers in {} use the trunk prefix {own:?}", plan.region()),
                "remove pms.phone_trunk_prefix: the region's own rules apply",
            ));
        }
    }
    Ok(plan)
}

/// Loads libphonenumber's metadata and compiles the patterns of `plan`'s
/// region and of mobile-type checks. Both happen on first use otherwise
/// (about 100 ms), which would land on the first HL7 message or, worse, on
/// the vault's writer thread with the first webhook.
pub fn warm(plan: &PhonePlan) {
    if let Some(meta) = DATABASE.by_id(plan.region.as_ref()) {
        let example = meta.descriptors().mobile().and_then(|d| d.example());
        if let Some(national) = example {
            let e164 = format!("+{}{national}", meta.country_code());
            let _ = number_type(&e164);
            let _ = to_e164(&e164, plan);
        }
    }
}

/// Returns `+<digits>` for a valid number, or None if this is not one.
/// National numbers are read in `plan`'s region; "+…" and the region's
/// international prefix ("00…") name their own country. An extension
/// ("x12", "ext. 12") is dropped: WhatsApp cannot reach one.
pub fn to_e164(raw: &str, plan: &PhonePlan) -> Option<String> {
    parse(raw, Some(plan.region))
}

/// [`to_e164`] for numbers that are always international, such as a
/// WhatsApp `wa_id` (country code and number without "+"): no region's
/// national rules apply.
pub fn international_to_e164(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('+') {
        parse(raw, None)
    } else {
        parse(&format!("+{raw}"), None)
    }
}

/// The E.164 number a WhatsApp `wa_id` (digits without "+") stands for, so
/// that an inbound message finds the patient however the PMS wrote the
/// number. Meta's ids differ from E.164 in two known ways, both undone here
/// only when the id as given is not a valid number: Mexican mobiles carry
/// the old "1" after the country code (`521…` for `+52…`), and Brazilian
/// accounts registered before the ninth mobile digit lack it (`55 11
/// 8765-4321` for `+55 11 98765-4321`).
pub fn wa_id_to_e164(wa_id: &str) -> Option<String> {
    international_to_e164(wa_id).or_else(|| wa_id_alternative(wa_id))
}

/// The E.164 number a `wa_id` in one of Meta's own forms stands for (see
/// [`wa_id_to_e164`]); None for every other id, without parsing it. A
/// `wa_id` that is a valid number is already its E.164 digits, so the
/// webhook, having missed with the id as given, only needs this: an unknown
/// sender costs no parse (and no metadata) on the writer.
pub fn wa_id_alternative(wa_id: &str) -> Option<String> {
    let digits = wa_id.trim().trim_start_matches('+');
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let alternative = match (digits.get(..3), digits.get(..2), digits.len()) {
        (Some("521"), _, 13) => format!("+52{}", digits.get(3..)?),
        (_, Some("55"), 12) if digits.get(4..5).is_some_and(|d| d >= "6") => {
            format!("+55{}9{}", digits.get(2..4)?, digits.get(4..)?)
        }
        _ => return None,
    };
    parse(&alternative, None).filter(|e164| number_type(e164).may_be_mobile())
}

fn parse(raw: &str, region: Option<Id>) -> Option<String> {
    let number = checked(raw, region)?;
    Some(number.format().mode(Mode::E164).to_string())
}

fn checked(raw: &str, region: Option<Id>) -> Option<PhoneNumber> {
    let raw = raw.trim();
    // Only what people write in a phone field; anything else (control
    // characters, non-ASCII, URI parameters) is not a number we can use.
    let plausible = raw.len() <= MAX_INPUT
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " +-()./#,".contains(c));
    if raw.is_empty() || !plausible {
        return None;
    }
    let number = phonenumber::parse(region, raw).ok()?;
    // Valid means in a number range the region has assigned (which also
    // rules out too short and too long numbers), not merely digits.
    number.is_valid_with(&DATABASE).then_some(number)
}

/// What kind of line a number is, as far as libphonenumber's metadata can
/// tell from the number alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberType {
    Mobile,
    /// Mobile and fixed numbers share ranges (all of the NANP: US, Canada):
    /// possibly a mobile.
    FixedOrMobile,
    Landline,
    /// Toll-free, premium, shared-cost, pager, voicemail, UAN and similar
    /// service numbers: never a person's phone.
    Service,
    /// VoIP and personal numbers, and ranges the metadata does not know
    /// (new allocations): possibly reachable.
    Other,
}

impl NumberType {
    /// Whether WhatsApp may be on this number. Only what the metadata
    /// positively identifies as a landline or a service number is ruled out:
    /// Meta itself answers for the rest (131026 when not on WhatsApp).
    pub fn may_be_mobile(self) -> bool {
        !matches!(self, NumberType::Landline | NumberType::Service)
    }
}

/// The line type of an E.164 number (`+<digits>`).
pub fn number_type(e164: &str) -> NumberType {
    let Some(digits) = e164.strip_prefix('+') else {
        return NumberType::Other;
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return NumberType::Other;
    }
    let Ok(number) = phonenumber::parse(None, e164) else {
        return NumberType::Other;
    };
    match number.number_type(&DATABASE) {
        Type::Mobile => NumberType::Mobile,
        Type::FixedLineOrMobile => NumberType::FixedOrMobile,
        Type::FixedLine => NumberType::Landline,
        Type::TollFree
        | Type::PremiumRate
        | Type::SharedCost
        | Type::Pager
        | Type::Uan
        | Type::Emergency
        | Type::Voicemail
        | Type::ShortCode
        | Type::StandardRate
        | Type::Carrier
        | Type::NoInternational => NumberType::Service,
        Type::PersonalNumber | Type::Voip | Type::Unknown => NumberType::Other,
    }
}

#[cfg(test)]
mod tests;
