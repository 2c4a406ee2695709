use super::*;
use proptest::prelude::*;

fn de(raw: &str) -> Option<String> {
    to_e164(raw, &PhonePlan::default())
}

fn us(raw: &str) -> Option<String> {
    to_e164(raw, &PhonePlan::for_region("US").unwrap())
}

#[test]
fn german_forms() {
    for raw in [
        "0151 123 456-78",
        "0151/12345678",
        "+49 (0)151 12345678",
        "+49 (151) 12345678",
        "0049 151 12345678",
        "0049151/12345678",
        "+4915112345678",
        "151 12345678",
    ] {
        assert_eq!(de(raw).as_deref(), Some("+4915112345678"), "{raw}");
    }
}

#[test]
fn nanp_forms() {
    for raw in [
        "(201) 555-0123",
        "201.555.0123",
        "1 201 555 0123",
        "+1 (201) 555-0123",
    ] {
        assert_eq!(us(raw).as_deref(), Some("+12015550123"), "{raw}");
    }
    // 555 is not an area code: libphonenumber knows the range is unassigned,
    // where the old hand-written rules took any ten digits.
    assert_eq!(us("(555) 123-4567"), None);
    // A German clinic reads the same digits as a number in Essen (0201).
    assert_eq!(de("(201) 555-0123").as_deref(), Some("+492015550123"));
}

#[test]
fn extensions_are_dropped() {
    assert_eq!(us("(201) 555-0123 x12").as_deref(), Some("+12015550123"));
    assert_eq!(us("201-555-0123 ext. 7").as_deref(), Some("+12015550123"));
    assert_eq!(
        de("0151 12345678 ext. 5").as_deref(),
        Some("+4915112345678")
    );
}

#[test]
fn non_numbers_are_none() {
    for raw in [
        "",
        "   ",
        "unknown",
        "n/a",
        "12",
        "0151 12",
        "+49 151",
        "+1234567890123456789",
        "0000000000",
        "+0123456789",
        "tel:+4915112345678;phone-context=é",
        "0151\u{0}12345678",
        "０１５１ １２３４５６７８",
    ] {
        assert_eq!(de(raw), None, "{raw:?}");
    }
    assert_eq!(de(&"1".repeat(MAX_INPUT + 1)), None);
}

/// What the hand-written normaliser wrote for these inputs (its own tests,
/// the HL7 fixtures and the API tests): stores written by it hold blind
/// indexes over exactly these strings, so the new rules must agree.
#[test]
fn agrees_with_what_stores_hold() {
    for (raw, old) in [
        ("0151 555-01234", "+4915155501234"),
        ("+49 (151) 55501234", "+4915155501234"),
        ("0049151/55501234", "+4915155501234"),
        ("+49 (0)151 55501234", "+4915155501234"),
        ("0151 5550 4242", "+4915155504242"),
        ("0151 5550 1234", "+4915155501234"),
        ("+4915155501234", "+4915155501234"),
        ("15155500500", "+4915155500500"),
        ("+4915550100042", "+4915550100042"),
        ("030 1234567", "+49301234567"),
        // The examples of docs/hl7.md § 5.2.
        ("0155 5010 0200", "+4915550100200"),
        ("+49 (1555) 0100200", "+4915550100200"),
        ("+49 (0)1555 0100200", "+4915550100200"),
        ("0049 1555/0100200", "+4915550100200"),
        ("+4915550100200", "+4915550100200"),
    ] {
        assert_eq!(de(raw).as_deref(), Some(old), "{raw}");
    }
}

#[test]
fn plans_from_config_values() {
    assert_eq!(PhonePlan::for_region("DE"), Some(PhonePlan::default()));
    assert_eq!(
        PhonePlan::for_region("de"),
        None,
        "ISO codes are upper case"
    );
    assert_eq!(PhonePlan::for_region("XX"), None);
    assert_eq!(PhonePlan::for_region(""), None);
    let pairs = [
        ("49", "DE"),
        ("1", "US"),
        ("44", "GB"),
        ("43", "AT"),
        ("7", "RU"),
    ];
    for (code, region) in pairs {
        let plan = PhonePlan::for_calling_code(code).unwrap();
        assert_eq!(plan.region(), region, "{code}");
        assert_eq!(plan.calling_code().to_string(), code);
    }
    assert_eq!(PhonePlan::for_calling_code("999"), None);
    assert_eq!(PhonePlan::for_calling_code("x"), None);
    assert_eq!(PhonePlan::default().trunk_prefix(), Some("0"));
    assert_eq!(
        PhonePlan::for_region("US").unwrap().trunk_prefix(),
        Some("1")
    );
}

#[test]
fn config_keys_old_and_new() {
    let plan = |r, cc, t| plan_from_config(r, cc, t).map(|p| p.region().to_owned());
    assert_eq!(plan(None, None, None).as_deref(), Ok("DE"));
    assert_eq!(plan(Some("AT"), None, None).as_deref(), Ok("AT"));
    // Files written before pms.phone_region keep loading.
    assert_eq!(plan(None, Some("49"), Some("0")).as_deref(), Ok("DE"));
    assert_eq!(plan(None, Some("1"), Some("")).as_deref(), Ok("US"));
    assert_eq!(plan(None, Some("1"), Some("1")).as_deref(), Ok("US"));
    assert_eq!(plan(Some("CH"), Some("41"), Some("0")).as_deref(), Ok("CH"));
    let key = |r, cc, t| plan_from_config(r, cc, t).unwrap_err().key;
    assert_eq!(key(Some("Germany"), None, None), "pms.phone_region");
    assert_eq!(key(Some("de"), None, None), "pms.phone_region");
    assert_eq!(key(Some("DE"), Some("43"), None), "pms.phone_country_code");
    assert_eq!(key(None, Some("+49"), None), "pms.phone_country_code");
    assert_eq!(key(None, Some("999"), None), "pms.phone_country_code");
    assert_eq!(key(Some("DE"), None, Some("1")), "pms.phone_trunk_prefix");
    let e = plan_from_config(Some("DE"), None, Some("1")).unwrap_err();
    assert!(e.reason.contains("\"0\""), "{}", e.reason);
}

#[test]
fn wa_ids_are_international() {
    assert_eq!(
        international_to_e164("4915112345678").as_deref(),
        Some("+4915112345678")
    );
    assert_eq!(
        international_to_e164("12015550123").as_deref(),
        Some("+12015550123")
    );
    assert_eq!(international_to_e164("015112345678"), None);
    assert_eq!(international_to_e164(""), None);
}

#[test]
fn wa_ids_in_metas_own_forms() {
    // As given when valid.
    assert_eq!(
        wa_id_to_e164("4915112345678").as_deref(),
        Some("+4915112345678")
    );
    assert_eq!(
        wa_id_to_e164("5491112345678").as_deref(),
        Some("+5491112345678")
    );
    // Mexico's old mobile "1" and Brazil's missing ninth digit.
    assert_eq!(
        wa_id_to_e164("5215512345678").as_deref(),
        Some("+525512345678")
    );
    assert_eq!(
        wa_id_to_e164("551187654321").as_deref(),
        Some("+5511987654321")
    );
    // A Brazilian landline (first digit 2 to 5) is valid as it is.
    assert_eq!(
        wa_id_to_e164("551132654321").as_deref(),
        Some("+551132654321")
    );
    assert_eq!(wa_id_to_e164("52155"), None);
    assert_eq!(wa_id_to_e164("x5215512345678"), None);
    assert_eq!(wa_id_to_e164(""), None);
}

#[test]
fn line_types() {
    assert_eq!(number_type("+4915112345678"), NumberType::Mobile);
    assert_eq!(number_type("+49301234567"), NumberType::Landline);
    assert_eq!(number_type("+12015550123"), NumberType::FixedOrMobile);
    assert_eq!(number_type("+498001234567"), NumberType::Service);
    assert_eq!(number_type("+15551234567"), NumberType::Other);
    assert_eq!(number_type("4915112345678"), NumberType::Other);
    assert_eq!(number_type("+"), NumberType::Other);
    assert!(NumberType::Mobile.may_be_mobile());
    assert!(NumberType::FixedOrMobile.may_be_mobile());
    assert!(NumberType::Other.may_be_mobile());
    assert!(!NumberType::Landline.may_be_mobile());
    assert!(!NumberType::Service.may_be_mobile());
}

proptest! {
    // Release builds abort on a panic: no input may reach one.
    #[test]
    fn never_panics_on_any_string(s in "\\PC{0,80}") {
        let _ = de(&s);
        let _ = us(&s);
        let _ = international_to_e164(&s);
        let _ = wa_id_to_e164(&s);
        let _ = number_type(&s);
    }

    #[test]
    fn never_panics_on_phone_like_strings(s in "[+0-9 ()./#,xet;:a-z-]{0,70}") {
        if let Some(e164) = de(&s) {
            prop_assert!(e164.starts_with('+'));
            prop_assert!(e164.len() <= 16);
            // Normalising is idempotent: the blind index sees one form.
            prop_assert_eq!(de(&e164), Some(e164.clone()));
            let _ = number_type(&e164);
        }
        let _ = international_to_e164(&s);
        let _ = wa_id_to_e164(&s);
        let _ = number_type(&format!("+{s}"));
    }

    #[test]
    fn german_mobiles_in_any_layout(n in 10_000_000u64..99_999_999, sep in "[ /-]?") {
        let want = format!("+49151{n}");
        let raw = format!("0151{sep}{n}");
        prop_assert_eq!(de(&raw), Some(want));
    }
}

#[test]
fn every_regions_example_mobile_is_valid_and_may_be_mobile() {
    let mut regions = 0;
    for meta in DATABASE.iter() {
        let Some(plan) = PhonePlan::for_region(meta.id()) else {
            continue; // "001": non-geographic codes have no region
        };
        warm(&plan);
        let Some(national) = meta.descriptors().mobile().and_then(|d| d.example()) else {
            continue;
        };
        let e164 = format!("+{}{national}", meta.country_code());
        assert_eq!(
            to_e164(&e164, &plan).as_deref(),
            Some(e164.as_str()),
            "{}",
            meta.id()
        );
        assert!(number_type(&e164).may_be_mobile(), "{}", meta.id());
        regions += 1;
    }
    assert!(regions > 200, "{regions}");
}
