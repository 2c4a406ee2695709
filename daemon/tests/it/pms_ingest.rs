//! HL7 over real MLLP sockets into the real daemon (in-process, port 0):
//! ACK codes, ERR segments, idempotency, size limits, and the mapping of
//! real-world message shapes into the vault.

use crate::pms_support::*;
use clinic_relay::model::AppointmentStatus;
use clinic_relay::vault::Tree;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adt_is_acknowledged_after_commit_and_stored() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&adt_a04("MSG0001", "000123", "ZZTEST", "0151 555-0999"))
        .await;
    assert_eq!(msa(&ack), ("AA".into(), "MSG0001".into()));
    assert_eq!(ack.message_type().unwrap().code, "ACK");
    let vault = &d.running.vault;
    let ids = vault.find_patients_by_mrn("", "000123").unwrap();
    assert_eq!(ids.len(), 1);
    let p = vault.get_patient(ids[0]).unwrap().unwrap();
    assert_eq!(p.family_name, "ZZTEST");
    assert_eq!(p.birth_date.unwrap().to_string(), "1901-02-03");
    assert_eq!(
        p.phone.as_deref(),
        Some("+4915155501234"),
        "the cell (CP) number wins"
    );
    assert_eq!(vault.find_patients_by_phone("+4915155501234").unwrap(), ids);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pid3_is_ae_with_err() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let msg = adt_a04("MSG0002", "", "ZZTEST", "");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack), ("AE".into(), "MSG0002".into()));
    assert_eq!(err(&ack), Some(("101".into(), "PID-3".into())));
    assert_eq!(d.running.vault.count(Tree::Patients), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_types_are_ar() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&format!("{}\rORC|NW|1", msh("ORM^O01", "MSG0003", "2.3")))
        .await;
    assert_eq!(msa(&ack), ("AR".into(), "MSG0003".into()));
    assert_eq!(err(&ack).unwrap().0, "200");
    let ack = c
        .send(&format!(
            "{}\rSCH|A1|A1\rPID|1||1^^^^MR",
            msh("SIU^S99", "MSG0004", "2.5")
        ))
        .await;
    assert_eq!(msa(&ack), ("AR".into(), "MSG0004".into()));
    assert_eq!(err(&ack).unwrap().0, "201");
    // Not HL7 at all: AR with an empty MSA-2, and the connection goes on.
    let ack = c.send("hello").await;
    assert_eq!(msa(&ack).0, "AR");
    let ack = c.send(&adt_a04("MSG0005", "000124", "ZZTEST", "")).await;
    assert_eq!(msa(&ack).0, "AA");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_control_id_is_applied_once() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let first = adt_a04("DUP1", "000200", "ZZFIRST", "");
    assert_eq!(msa(&c.send(&first).await).0, "AA");
    let audit_after_first = d.running.vault.audit_seq();
    // A retransmission (same sender, MSH-10 and content): AA, not applied again.
    assert_eq!(msa(&c.send(&first).await).0, "AA");
    assert_eq!(d.running.vault.audit_seq(), audit_after_first);
    let id = d.running.vault.find_patients_by_mrn("", "000200").unwrap()[0];
    let family = |d: &Daemon| {
        d.running
            .vault
            .get_patient(id)
            .unwrap()
            .unwrap()
            .family_name
    };
    assert_eq!(family(&d), "ZZFIRST");
    // The same MSH-10 with other content is a new message (senders recycle
    // control ids): applied, not silently dropped.
    assert_eq!(
        msa(&c.send(&adt_a04("DUP1", "000200", "ZZSECOND", "")).await).0,
        "AA"
    );
    assert_eq!(family(&d), "ZZSECOND");
    assert!(d.running.vault.audit_seq() > audit_after_first);
    // A new MSH-10 applies.
    assert_eq!(
        msa(&c.send(&adt_a04("DUP2", "000200", "ZZTHIRD", "")).await).0,
        "AA"
    );
    assert_eq!(family(&d), "ZZTHIRD");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_rejected_and_the_connection_stays_usable() {
    let d = Daemon::start("[pms]\nmllp_listen = \"127.0.0.1:0\"\nmax_message_bytes = 4096\n").await;
    let mut c = d.mllp().await;
    let mut big = adt_a04("BIG1", "000300", "ZZTEST", "");
    big.push_str("\rNTE|1||");
    big.push_str(&"X".repeat(10_000));
    let ack = c.send(&big).await;
    assert_eq!(
        msa(&ack),
        ("AR".into(), "BIG1".into()),
        "the head still names the message"
    );
    assert_eq!(d.running.vault.count(Tree::Patients), 0);
    let ack = c.send(&adt_a04("SMALL1", "000301", "ZZTEST", "")).await;
    assert_eq!(msa(&ack).0, "AA");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siu_v23_with_only_sch1_and_a_trailing_space() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let msg = [
        msh("SIU^S12", "V23A", "2.3"),
        "SCH|APPT-23||||||ROUTINE||||^^20^200612011430 |||||||||||||||".to_owned(),
        "PID|1||000400^^^^MR||ZZOLD^ZZGIVEN||19010203".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let a = d.running.vault.get_appointment("APPT-23").unwrap().unwrap();
    assert_eq!(a.duration_minutes, 20, "SCH-11.3 in minutes");
    // 14:30 in Europe/Berlin (the test config's zone) in winter is 13:30 UTC.
    assert_eq!(a.start.to_string(), "2006-12-01T13:30:00Z");
    assert_eq!(a.status, AppointmentStatus::Booked);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siu_v28_with_tq1_and_three_resource_groups() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let msg = [
        msh("SIU^S12^SIU_S12", "V28A", "2.8"),
        "SCH||APPT-28^ZZPMS|||||||||||||||||||||||Booked".to_owned(),
        "TQ1|1||||||202612010900+0100|202612010945+0100".to_owned(),
        "PID|1||000500^^^ZZHOSP^MR||ZZNEW^ZZGIVEN||19010203|||||^PRN^CP^^^151^55500500".to_owned(),
        "RGS|1|A".to_owned(),
        "AIS|1|A|CONSULT^Consultation".to_owned(),
        "RGS|2|A".to_owned(),
        "AIP|1|A|D1^ZZDOC^ADA^^^Dr.".to_owned(),
        "RGS|3|A".to_owned(),
        "AIL|1|A|^^^ZZCLINIC^^^^^Room 7".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let a = d.running.vault.get_appointment("APPT-28").unwrap().unwrap();
    assert_eq!(a.start.to_string(), "2026-12-01T08:00:00Z");
    assert_eq!(a.duration_minutes, 45);
    assert_eq!(a.provider.as_deref(), Some("Dr. ADA ZZDOC"));
    assert_eq!(a.location.as_deref(), Some("Room 7"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_and_local_status_codes() {
    let d = Daemon::start(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\n[pms.status_map]\nARRIVED = \"arrived\"\n",
    )
    .await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("S1", "APPT-1", "000600", "202612011000"))
            .await)
        .0,
        "AA"
    );
    let arrived = siu_s12_v25("S2", "APPT-1", "000600", "202612011000")
        .replace("SIU^S12^SIU_S12", "SIU^S14^SIU_S12")
        .replace("|Booked", "|ARRIVED");
    assert_eq!(msa(&c.send(&arrived).await).0, "AA");
    assert_eq!(
        d.running
            .vault
            .get_appointment("APPT-1")
            .unwrap()
            .unwrap()
            .status,
        AppointmentStatus::Arrived
    );
    let cancel = siu_s12_v25("S3", "APPT-1", "000600", "202612011000")
        .replace("SIU^S12^SIU_S12", "SIU^S15^SIU_S12");
    assert_eq!(msa(&c.send(&cancel).await).0, "AA");
    assert_eq!(
        d.running
            .vault
            .get_appointment("APPT-1")
            .unwrap()
            .unwrap()
            .status,
        AppointmentStatus::Cancelled
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_merges_in_one_a40_move_appointments() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    for (n, mrn) in ["000701", "000702", "000703", "000704"].iter().enumerate() {
        let ack = c
            .send(&siu_s12_v25(
                &format!("M{n}"),
                &format!("APPT-7{n}"),
                mrn,
                "202612011000",
            ))
            .await;
        assert_eq!(msa(&ack).0, "AA");
    }
    let msg = [
        msh("ADT^A40^ADT_A39", "MERGE1", "2.5"),
        "EVN|A40|20261125".to_owned(),
        "PID|1||000701^^^ZZHOSP^MR||ZZKEEP^ONE".to_owned(),
        "MRG|000702^^^ZZHOSP^MR".to_owned(),
        "PID|2||000703^^^ZZHOSP^MR||ZZKEEP^TWO".to_owned(),
        "MRG|000704^^^ZZHOSP^MR".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let v = &d.running.vault;
    let keep1 = v.find_patients_by_mrn("", "000701").unwrap()[0];
    let keep2 = v.find_patients_by_mrn("", "000703").unwrap()[0];
    assert_eq!(v.appointments_of(keep1).unwrap().len(), 2);
    assert_eq!(v.appointments_of(keep2).unwrap().len(), 2);
    assert_eq!(
        v.get_appointment("APPT-71").unwrap().unwrap().patient,
        keep1
    );
    let gone = v.patient_id_for_mrn("", "000702");
    assert_eq!(v.get_patient(gone).unwrap(), None);
    assert!(v.appointments_of(gone).unwrap().is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lf_and_crlf_separated_input_and_escaped_names() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let lf = adt_a04("LF1", "000800", "ZZTEST\\S\\JUNIOR\\T\\CO", "").replace('\r', "\n");
    assert_eq!(msa(&c.send(&lf).await).0, "AA");
    let crlf = adt_a04("CRLF1", "000801", "ZZTEST", "").replace('\r', "\r\n");
    assert_eq!(msa(&c.send(&crlf).await).0, "AA");
    let v = &d.running.vault;
    let p = v
        .get_patient(v.find_patients_by_mrn("", "000800").unwrap()[0])
        .unwrap()
        .unwrap();
    assert_eq!(p.family_name, "ZZTEST^JUNIOR&CO");
    assert_eq!(v.find_patients_by_mrn("", "000801").unwrap().len(), 1);
    d.stop().await;
}

fn pdf_bytes() -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n% synthetic test document ZZTEST\n".to_vec();
    pdf.extend((0..3000u32).map(|i| (i % 251) as u8));
    pdf.extend_from_slice(b"\n%%EOF\n");
    pdf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oru_with_a_pdf_split_over_repetitions_and_sub_ids() {
    use base64::Engine as _;
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let pdf = pdf_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pdf);
    let (a, rest) = b64.split_at(1000);
    let (b, rest) = rest.split_at(1500);
    let msg = [
        msh("ORU^R01^ORU_R01", "ORU1", "2.5.1"),
        "PID|1||000900^^^ZZHOSP^MR||ZZLAB^ZZGIVEN||19010203".to_owned(),
        "ORC|RE|PL-1|FILL-900".to_owned(),
        "OBR|1|PL-1|FILL-900|LAB^Lab report|||20261124080000".to_owned(),
        "OBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F".to_owned(),
        format!("OBX|2|ED|PDF^Report|1|^AP^PDF^Base64^{a}~^AP^PDF^Base64^{b}||||||F"),
        format!("OBX|3|ED|PDF^Report|2|^application^pdf^Base64^{rest}||||||F"),
    ]
    .join("\r");
    let ack = c.send(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let r = d.running.vault.get_result("FILL-900").unwrap().unwrap();
    assert_eq!(r.pdf, pdf);
    assert_eq!(r.version, 1);
    // A correction of the same order replaces it.
    let corrected = msg.replace("ORU1", "ORU2").replace("||||||F", "||||||C");
    assert_eq!(msa(&c.send(&corrected).await).0, "AA");
    assert_eq!(
        d.running
            .vault
            .get_result("FILL-900")
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert_eq!(d.running.vault.count(Tree::Results), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oru_without_a_pdf_or_with_a_bad_one() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let plain = [
        msh("ORU^R01", "ORU3", "2.3"),
        "PID|1||000901^^^^MR||ZZLAB".to_owned(),
        "OBR|1||FILL-901".to_owned(),
        "OBX|1|NM|GLU||5.5|mmol/L|||||F".to_owned(),
    ]
    .join("\r");
    assert_eq!(msa(&c.send(&plain).await).0, "AA");
    assert_eq!(d.running.vault.count(Tree::Results), 0);
    let not_pdf = [
        msh("ORU^R01", "ORU4", "2.5"),
        "PID|1||000902^^^^MR||ZZLAB".to_owned(),
        "OBR|1||FILL-902".to_owned(),
        "OBX|1|ED|PDF||^AP^PDF^Base64^aGVsbG8gd29ybGQ=||||||F".to_owned(),
    ]
    .join("\r");
    let ack = c.send(&not_pdf).await;
    assert_eq!(msa(&ack).0, "AE");
    assert_eq!(err(&ack), Some(("102".into(), "OBX-5".into())));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pms_consent_field_opts_in_and_out() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let with = |id: &str, flag: &str| {
        format!(
            "{}\rZCN|WHATSAPP|{flag}",
            adt_a04(id, "001000", "ZZTEST", "")
        )
    };
    assert_eq!(msa(&c.send(&with("C1", "Y")).await).0, "AA");
    let id = d.running.vault.find_patients_by_mrn("", "001000").unwrap()[0];
    let consent = d.running.vault.get_consent(id).unwrap().unwrap();
    assert_eq!(consent.state, clinic_relay::model::ConsentState::OptedIn);
    assert_eq!(msa(&c.send(&with("C2", "N")).await).0, "AA");
    assert_eq!(
        d.running.vault.get_consent(id).unwrap().unwrap().state,
        clinic_relay::model::ConsentState::OptedOut
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_outside_the_allow_list_are_closed() {
    let d =
        Daemon::start("[pms]\nmllp_listen = \"127.0.0.1:0\"\nallow = [\"10.1.2.0/24\"]\n").await;
    let mut stream = tokio::net::TcpStream::connect(d.running.mllp_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream
        .write_all(b"\x0bMSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\x1c\r")
        .await;
    let mut buf = [0u8; 16];
    // The daemon closed the socket without reading: EOF (or a reset).
    let n = stream.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_messages_are_refused() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let training = adt_a04("T1", "005000", "ZZTRAIN", "").replace("|T1|P|", "|T1|T|");
    let ack = c.send(&training).await;
    assert_eq!(msa(&ack), ("AR".into(), "T1".into()));
    assert_eq!(err(&ack).unwrap().0, "202");
    assert_eq!(d.running.vault.count(Tree::Patients), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduling_pid_fills_in_but_never_clears_what_adt_set() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let adt = adt_a04("P1", "006000", "ZZKEEP", "0151 5550 6000")
        .replace("PD1||||||||||||N", "PD1||||||||||||Y");
    assert_eq!(msa(&c.send(&adt).await).0, "AA");
    // This SIU's PID has a name but no phone and no PD1.
    let siu = [
        msh("SIU^S12", "P2", "2.5.1"),
        "SCH|APPT-P|APPT-P|||||CHECKUP||||^^30^202612011000".to_owned(),
        "PID|1||006000^^^ZZHOSP^MR||ZZKEEP^NEWGIVEN".to_owned(),
    ]
    .join("\r");
    assert_eq!(msa(&c.send(&siu).await).0, "AA");
    let v = &d.running.vault;
    let p = v
        .get_patient(v.find_patients_by_mrn("", "006000").unwrap()[0])
        .unwrap()
        .unwrap();
    assert_eq!(p.given_name, "NEWGIVEN");
    assert_eq!(p.phone.as_deref(), Some("+4915155501234"), "phone kept");
    assert!(p.protected, "no-outreach flag kept");
    assert_eq!(p.birth_date.unwrap().to_string(), "1901-02-03");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appointment_moved_to_another_patient_leaves_the_first() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    assert_eq!(
        msa(&c
            .send(&siu_s12_v25("MV1", "APPT-MV", "007001", "202612011000"))
            .await)
        .0,
        "AA"
    );
    let moved = siu_s12_v25("MV2", "APPT-MV", "007002", "202612011000")
        .replace("SIU^S12^SIU_S12", "SIU^S14^SIU_S12");
    assert_eq!(msa(&c.send(&moved).await).0, "AA");
    let v = &d.running.vault;
    let first = v.find_patients_by_mrn("", "007001").unwrap()[0];
    let second = v.find_patients_by_mrn("", "007002").unwrap()[0];
    assert!(v.appointments_of(first).unwrap().is_empty());
    assert_eq!(v.appointments_of(second).unwrap().len(), 1);
    // Erasing the first patient leaves the second one's appointment alone.
    let v2 = v.clone();
    tokio::task::spawn_blocking(move || {
        v2.erase_patient(first, "test", crate::support::t0())
            .unwrap()
    })
    .await
    .unwrap();
    assert!(v.get_appointment("APPT-MV").unwrap().is_some());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_keeps_the_no_outreach_flag_of_the_merged_patient() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let blocked =
        adt_a04("NB1", "008002", "ZZBLOCKED", "").replace("PD1||||||||||||N", "PD1||||||||||||Y");
    assert_eq!(msa(&c.send(&blocked).await).0, "AA");
    assert_eq!(
        msa(&c.send(&adt_a04("NB2", "008001", "ZZKEEP", "")).await).0,
        "AA"
    );
    let merge = [
        msh("ADT^A40^ADT_A39", "NB3", "2.5"),
        "PID|1||008001^^^ZZHOSP^MR||ZZKEEP^ONE".to_owned(),
        "MRG|008002^^^ZZHOSP^MR".to_owned(),
    ]
    .join("\r");
    assert_eq!(msa(&c.send(&merge).await).0, "AA");
    let v = &d.running.vault;
    let keep = v
        .get_patient(v.find_patients_by_mrn("", "008001").unwrap()[0])
        .unwrap()
        .unwrap();
    assert!(keep.protected, "the survivor inherits 'do not contact'");
    assert!(v.find_patients_by_mrn("", "008002").unwrap().is_empty());
    d.stop().await;
}
