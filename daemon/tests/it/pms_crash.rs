//! Kill -9 during ingest: the real daemon takes ADT messages over MLLP, a
//! sender records every AA, and the daemon is SIGKILLed at varying points
//! with a message in flight, 20 times, while a second connection resends
//! every message. After each kill every AA'd message is in the vault. Spawns the real binary because it kills it.

use crate::pms_support::*;
use crate::support::*;

const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_no_acknowledged_message() {
    let install = TestInstall::new("");
    let mut acked: Vec<String> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n = 0u64;
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + seed % 15;
        let Served {
            mut child,
            mllp: addr,
            ..
        } = spawn_serve(&install);
        let mut c = Mllp::connect(addr).await;
        // A second engine resends every message at once (a retransmission
        // racing the original): its AA is a promise too, so it must not
        // come before the original is durable.
        let mut dup = Mllp::connect(addr).await;
        // Keep one message in flight at all times, so the kill lands during
        // a commit as often as between them.
        let mut in_flight = format!("{n:06}");
        let message =
            |n: u64, mrn: &str| adt_a04(&format!("K{n}"), &format!("KILL{mrn}"), "ZZKILL", "");
        c.send_frame(&message(n, &in_flight)).await;
        dup.send_frame(&message(n, &in_flight)).await;
        n += 1;
        for _ in 0..kill_after {
            // Whichever answer comes first counts as acknowledged.
            let ack = dup.read_ack().await;
            assert_eq!(msa(&ack).0, "AA");
            acked.push(format!("KILL{in_flight}"));
            let ack = c.read_ack().await;
            assert_eq!(msa(&ack).0, "AA");
            in_flight = format!("{n:06}");
            c.send_frame(&message(n, &in_flight)).await;
            dup.send_frame(&message(n, &in_flight)).await;
            n += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let vault = install.open();
        for mrn in &acked {
            assert_eq!(
                vault.find_patients_by_mrn("", mrn).unwrap().len(),
                1,
                "round {round}: AA'd {mrn} lost"
            );
        }
        assert_eq!(vault.audit_damage(), None);
        vault.close().unwrap();
    }
    assert!(acked.len() as u64 >= ROUNDS);
}
