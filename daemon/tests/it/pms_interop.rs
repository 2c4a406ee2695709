//! Interoperability with the shapes public sample feeds use (US ADT/SIU/ORU,
//! IHE PAM and the French CI-SIS document transmission profile), over real
//! MLLP into the real daemon: which events are AA, which are AR, MDM
//! documents and their replacement, results taken back by the sender, and
//! PDFs among other ED observations or wrapped in CDA. All data is synthetic.

use crate::pms_support::*;
use base64::Engine as _;
use clinic_relay::model::AppointmentStatus;
use clinic_relay::vault::Tree;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pdf(tag: &str) -> Vec<u8> {
    format!("%PDF-1.4\n% synthetic ZZTEST document {tag}\n%%EOF\n").into_bytes()
}

/// A CDA R2 level-1 document whose nonXMLBody carries `pdf`, with the
/// base64 wrapped at 76 characters as senders write it.
fn cda_wrapping(pdf: &[u8]) -> String {
    let data = b64(pdf);
    let lines: Vec<&str> = data
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <ClinicalDocument xmlns=\"urn:hl7-org:v3\">\n\
         <realmCode code=\"FR\"/>\n<title>ZZTEST compte rendu</title>\n\
         <recordTarget><patientRole><id extension=\"000123\"/></patientRole></recordTarget>\n\
         <component>\n<nonXMLBody>\n\
         <text mediaType=\"application/pdf\" representation=\"B64\">\n{}\n</text>\n\
         </nonXMLBody>\n</component>\n</ClinicalDocument>\n",
        lines.join("\n")
    )
}

fn mdm(trigger: &str, control_id: &str, doc: &str, parent: &str, obx: &str) -> String {
    [
        msh(&format!("MDM^{trigger}^MDM_T02"), control_id, "2.5.1"),
        format!("EVN|{trigger}|20261125093000"),
        "PID|1||010100^^^ZZHOSP^MR||ZZDOC^ANN^^^^^L||19010203".to_owned(),
        "PV1|1|O".to_owned(),
        format!("TXA|1|LR|AP|20261124120000||||||||{doc}|{parent}||||AU"),
        obx.to_owned(),
    ]
    .join("\r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adt_events_we_do_not_use_and_siu_discontinue_and_no_show_are_aa() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let v = &d.running.vault;
    assert_eq!(
        msa(&c
            .send(&adt_a04("IO1", "010001", "ZZFIRST", "0151 5550 1001"))
            .await)
        .0,
        "AA"
    );

    // A02 (transfer), a visit event we do not use: AA, its PID fills in.
    let a02 = [
        msh("ADT^A02^ADT_A02", "IO2", "2.5.1"),
        "EVN|A02|20261125093000".to_owned(),
        "PID|1||010001^^^ZZHOSP^MR||ZZFIRST^NEWGIVEN".to_owned(),
        "PV1|1|I|WARD2^201^1".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&a02).await;
    assert_eq!(msa(&ack), ("AA".into(), "IO2".into()), "{:?}", err(&ack));
    let id = v.find_patients_by_mrn("", "010001").unwrap()[0];
    let p = v.get_patient(id).unwrap().unwrap();
    assert_eq!(p.given_name, "NEWGIVEN", "filled in");
    assert_eq!(
        p.phone.as_deref(),
        Some("+4915155501234"),
        "kept: an A02 does not replace"
    );
    // A60 (adverse reaction) and A03 (discharge) of an unknown MRN: AA,
    // and the patient now exists.
    for (trigger, control) in [("A60", "IO3"), ("A03", "IO4"), ("A13", "IO4B")] {
        let msg = [
            msh(&format!("ADT^{trigger}"), control, "2.5"),
            format!("EVN|{trigger}|20261125093000"),
            "PID|1||010002^^^ZZHOSP^MR||ZZSECOND^BEN||19010203".to_owned(),
        ]
        .join("\r");
        let ack = c.send(&msg).await;
        assert_eq!(msa(&ack).0, "AA", "ADT^{trigger}: {:?}", err(&ack));
    }
    assert_eq!(v.find_patients_by_mrn("", "010002").unwrap().len(), 1);

    // A40 merge: AA, as before.
    let a40 = [
        msh("ADT^A40^ADT_A39", "IO5", "2.5"),
        "EVN|A40|20261125093000".to_owned(),
        "PID|1||010001^^^ZZHOSP^MR||ZZFIRST^NEWGIVEN".to_owned(),
        "MRG|010002^^^ZZHOSP^MR".to_owned(),
    ]
    .join("\r");
    assert_eq!(msa(&c.send(&a40).await).0, "AA");
    assert!(v.find_patients_by_mrn("", "010002").unwrap().is_empty());

    // S16 (discontinue) of a booked appointment: cancelled. S26: no-show.
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("IO6", "APPT-IO1", "010001", "202612011000"))
            .await)
        .0,
        "AA"
    );
    let s16 = siu_s12_v25("IO7", "APPT-IO1", "010001", "202612011000")
        .replace("SIU^S12^SIU_S12", "SIU^S16^SIU_S12");
    let ack = c.send(&s16).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert_eq!(
        v.get_appointment("APPT-IO1").unwrap().unwrap().status,
        AppointmentStatus::Cancelled
    );
    let s26 = siu_s12_v25("IO8", "APPT-IO2", "010001", "202612021000")
        .replace("SIU^S12^SIU_S12", "SIU^S26^SIU_S12");
    let ack = c.send(&s26).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert_eq!(
        v.get_appointment("APPT-IO2").unwrap().unwrap().status,
        AppointmentStatus::Noshow
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_types_we_do_not_handle_stay_ar_200() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    for (kind, control) in [("DFT^P03^DFT_P03", "DFT1"), ("MFN^M02", "MFN1")] {
        let msg = [
            msh(kind, control, "2.5.1"),
            "EVN|P03|20261125093000".to_owned(),
            "PID|1||010300^^^ZZHOSP^MR||ZZDFT^ANN".to_owned(),
            "FT1|1|||20261124||CG|99213^Visit".to_owned(),
        ]
        .join("\r");
        let ack = c.send(&msg).await;
        assert_eq!(msa(&ack), ("AR".into(), control.into()));
        assert_eq!(err(&ack), Some(("200".into(), "MSH-9".into())));
    }
    assert_eq!(d.running.vault.count(Tree::Patients), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdm_t02_creates_t10_replaces_and_t11_withdraws() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let v = &d.running.vault;
    let first = pdf("v1");
    let t02 = mdm(
        "T02",
        "MDM1",
        "DOC-2001",
        "",
        &format!(
            "OBX|1|ED|PDF^Report||^application^pdf^Base64^{}||||||F",
            b64(&first)
        ),
    );
    let ack = c.send(&t02).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = v.get_result("DOC-2001").unwrap().unwrap();
    assert_eq!((r.version, &r.pdf, r.withdrawn), (1, &first, false));

    // T10 replacement of the same document (OBX-11 = C): a new version.
    let second = pdf("v2");
    let t10 = mdm(
        "T10",
        "MDM2",
        "DOC-2001",
        "DOC-2001",
        &format!(
            "OBX|1|ED|PDF^Report||^application^pdf^Base64^{}||||||C",
            b64(&second)
        ),
    );
    let ack = c.send(&t10).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = v.get_result("DOC-2001").unwrap().unwrap();
    assert_eq!((r.version, &r.pdf), (2, &second));
    assert!(r.is_deliverable());

    // T11 cancellation: withdrawn, no content, never deliverable again.
    let t11 = mdm("T11", "MDM3", "DOC-2001", "", "");
    let ack = c.send(&t11).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = v.get_result("DOC-2001").unwrap().unwrap();
    assert!(r.withdrawn);
    assert!(r.pdf.is_empty());
    assert_eq!(r.version, 3);
    assert!(!r.is_deliverable());
    let (status, report) = d.api("GET", "/v1/results/DOC-2001", None).await;
    assert_eq!(status, 200);
    assert_eq!(report["status"], "entered-in-error");
    assert_eq!(report["presentedForm"], serde_json::json!([]));

    // A T10 under a new document number takes its parent back.
    let t02 = mdm(
        "T02",
        "MDM4",
        "DOC-2002",
        "",
        &format!("OBX|1|ED|PDF||^AP^PDF^Base64^{}||||||F", b64(&first)),
    );
    assert_eq!(msa(&c.send(&t02).await).0, "AA");
    let t10 = mdm(
        "T10",
        "MDM5",
        "DOC-2003",
        "DOC-2002",
        &format!("OBX|1|ED|PDF||^AP^PDF^Base64^{}||||||C", b64(&second)),
    );
    let ack = c.send(&t10).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert!(v.get_result("DOC-2002").unwrap().unwrap().withdrawn);
    let new = v.get_result("DOC-2003").unwrap().unwrap();
    assert_eq!(new.pdf, second);
    assert!(new.is_deliverable());

    // The French profile's deletion: MDM^T04 with OBX-11 = D.
    let t04 = mdm(
        "T04",
        "MDM6",
        "DOC-2003",
        "",
        "OBX|1|ED|PDF||^AP^PDF^Base64^||||||D",
    );
    let ack = c.send(&t04).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert!(v.get_result("DOC-2003").unwrap().unwrap().withdrawn);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oru_that_cancels_the_order_withdraws_the_result() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let v = &d.running.vault;
    let report = pdf("lab");
    let oru = |control: &str, orc1: &str, obx: &str| {
        [
            msh("ORU^R01^ORU_R01", control, "2.5.1"),
            "PID|1||010400^^^ZZHOSP^MR||ZZLAB^ANN||19010203".to_owned(),
            format!("ORC|{orc1}|PL-3001|FILL-3001"),
            "OBR|1|PL-3001|FILL-3001|LAB^Lab report|||20261124080000||||||||||||||||||F".to_owned(),
            obx.to_owned(),
        ]
        .join("\r")
    };
    let ed = format!(
        "OBX|1|ED|PDF^Report||^AP^PDF^Base64^{}||||||F",
        b64(&report)
    );
    let ack = c.send(&oru("ORU1", "RE", &ed)).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert!(v.get_result("FILL-3001").unwrap().unwrap().is_deliverable());

    // ORC-1 = CA: the order is cancelled; the PDF must never reach the patient.
    let ack = c.send(&oru("ORU2", "CA", "")).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = v.get_result("FILL-3001").unwrap().unwrap();
    assert!(r.withdrawn && r.pdf.is_empty() && !r.is_deliverable());
    assert_eq!(r.version, 2);
    assert_eq!(v.count(Tree::Results), 1);

    // The cancelled final sent again (an engine replaying its queue): the
    // result stays withdrawn, and the PDF is not kept.
    let ack = c.send(&oru("ORU3", "RE", &ed)).await;
    assert_eq!(msa(&ack).0, "AA");
    let r = v.get_result("FILL-3001").unwrap().unwrap();
    assert!(r.withdrawn && r.pdf.is_empty() && !r.is_deliverable());
    // A correction (OBX-11 = C) reissues it.
    let corrected = ed.replace("||||||F", "||||||C");
    let ack = c.send(&oru("ORU3C", "RE", &corrected)).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert!(v.get_result("FILL-3001").unwrap().unwrap().is_deliverable());

    // OBX-11 = D (IHE/CI-SIS deletion in an ORU) withdraws too.
    let deleted = ed.replace("||||||F", "||||||D");
    let ack = c.send(&oru("ORU4", "RE", &deleted)).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert!(v.get_result("FILL-3001").unwrap().unwrap().withdrawn);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oru_with_a_pdf_wrapped_in_cda_stores_the_pdf() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let report = pdf("cda");
    // CI-SIS shape: OBX-5 = ^TEXT^XML^Base64^<the CDA, base64>.
    let msg = [
        msh("ORU^R01^ORU_R01", "CDA1", "2.5"),
        "PID|1||010500^^^ZZHOSP^MR||ZZCDA^ANN||19010203".to_owned(),
        "ORC|RE|PL-4001|FILL-4001".to_owned(),
        "OBR|1|PL-4001|FILL-4001|11488-4^Compte rendu^LN|||20261124080000".to_owned(),
        format!(
            "OBX|1|ED|11488-4^Compte rendu^LN||^TEXT^XML^Base64^{}||||||F",
            b64(cda_wrapping(&report).as_bytes())
        ),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = d.running.vault.get_result("FILL-4001").unwrap().unwrap();
    assert_eq!(r.pdf, report);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_next_to_cda_xml_without_a_pdf_is_stored_with_aa() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let report = pdf("mixed");
    let structured = "<?xml version=\"1.0\"?><ClinicalDocument xmlns=\"urn:hl7-org:v3\">\
                      <component><structuredBody><text>ZZTEST</text></structuredBody></component></ClinicalDocument>";
    let msg = [
        msh("ORU^R01^ORU_R01", "MIX1", "2.5.1"),
        "PID|1||010600^^^ZZHOSP^MR||ZZMIX^ANN||19010203".to_owned(),
        "OBR|1||FILL-5001|LAB^Lab report".to_owned(),
        format!(
            "OBX|1|ED|CDA^Document||^TEXT^XML^Base64^{}||||||F",
            b64(structured.as_bytes())
        ),
        format!(
            "OBX|2|ED|PDF^Report||^application^pdf^Base64^{}||||||F",
            b64(&report)
        ),
        "OBX|3|ED|MAIL^Body||^TEXT^PLAIN^A^ZZTEST synthetic mail body||||||F".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack), ("AA".into(), "MIX1".into()), "{:?}", err(&ack));
    let r = d.running.vault.get_result("FILL-5001").unwrap().unwrap();
    assert_eq!(r.pdf, report);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_messages_are_accepted_only_when_configured() {
    let training = adt_a04("TR1", "010700", "ZZTRAIN", "").replace("|TR1|P|", "|TR1|T|");
    let production = adt_a04("TR2", "010701", "ZZPROD", "");

    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let ack = c.send(&training).await;
    assert_eq!(msa(&ack).0, "AR");
    assert_eq!(err(&ack), Some(("202".into(), "MSH-11".into())));
    assert_eq!(d.running.vault.count(Tree::Patients), 0);
    d.stop().await;

    let d = Daemon::start("[pms]\nmllp_listen = \"127.0.0.1:0\"\nprocessing_ids = [\"T\"]\n").await;
    let mut c = d.mllp().await;
    let ack = c.send(&training).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    assert_eq!(
        d.running
            .vault
            .find_patients_by_mrn("", "010700")
            .unwrap()
            .len(),
        1
    );
    // A test installation refuses production traffic.
    let ack = c.send(&production).await;
    assert_eq!(msa(&ack).0, "AR");
    assert_eq!(err(&ack).unwrap().0, "202");
    assert!(d
        .running
        .vault
        .find_patients_by_mrn("", "010701")
        .unwrap()
        .is_empty());
    d.stop().await;
}
