//! The slot table's in-memory copy (`Vault::slots_by_start`) always equals
//! the stored table, whatever the change: a replacement, a slot taken out,
//! two in one txn, a change staged by a txn that never commits, changes
//! with no read in between.

use clinic_relay::keys::MasterKey;
use clinic_relay::model::Slot;
use clinic_relay::vault::{Txn, Vault, VaultError};
use jiff::Timestamp;

fn slot(i: i64) -> Slot {
    Slot {
        id: format!("S-{i:03}"),
        // Not in id order, so the sort by start shows.
        start: Timestamp::from_second(1_800_000_000 + (i * 7919) % 1000 * 900).unwrap(),
        duration_minutes: 15,
        provider: None,
        location: None,
        service: None,
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_799_000_000).unwrap()
}

/// The stored table, decoded, in start order.
fn stored(v: &Vault) -> Vec<Slot> {
    let mut s = v.slots().unwrap();
    s.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
    s
}

fn same(v: &Vault) {
    assert_eq!(*v.slots_by_start().unwrap(), stored(v));
}

fn write(v: &Vault, f: impl FnOnce(&Vault, &mut Txn) -> Result<(), VaultError> + Send + 'static) {
    v.write_blocking(move |v| {
        let mut txn = Txn::new(now());
        f(v, &mut txn)?;
        Ok::<_, VaultError>((txn, ()))
    })
    .unwrap();
}

#[test]
fn the_copy_follows_every_change_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(&dir.path().join("data"), &MasterKey::generate().unwrap()).unwrap();
    same(&v);
    let all: Vec<Slot> = (0..200).map(slot).collect();
    let first = all.clone();
    write(&v, move |v, t| v.stage_replace_slots(t, &first));
    same(&v);
    assert_eq!(v.slots_by_start().unwrap().len(), 200);

    // One taken out, then two in one txn.
    write(&v, |v, t| v.stage_remove_slot(t, "S-007"));
    same(&v);
    write(&v, |v, t| {
        v.stage_remove_slot(t, "S-010")?;
        v.stage_remove_slot(t, "S-011")
    });
    same(&v);
    assert_eq!(v.slots_by_start().unwrap().len(), 197);

    // A txn that stages a removal and then fails changes nothing.
    let failed = v.write_blocking(|v| {
        let mut txn = Txn::new(now());
        v.stage_remove_slot(&mut txn, "S-020")?;
        Err::<(Txn, ()), _>(VaultError::Encode)
    });
    assert!(failed.is_err());
    same(&v);
    assert!(v.slots_by_start().unwrap().iter().any(|s| s.id == "S-020"));

    // Changes with no read in between: a replacement, then a removal.
    let fewer: Vec<Slot> = all.iter().take(50).cloned().collect();
    write(&v, move |v, t| v.stage_replace_slots(t, &fewer));
    write(&v, |v, t| v.stage_remove_slot(t, "S-001"));
    same(&v);
    assert_eq!(v.slots_by_start().unwrap().len(), 49);

    // A removal read inside its own txn sees the table before it (the
    // change is not committed yet), and after the commit without it.
    write(&v, |v, t| {
        v.stage_remove_slot(t, "S-002")?;
        assert!(v.slots_by_start()?.iter().any(|s| s.id == "S-002"));
        Ok(())
    });
    same(&v);
    assert!(!v.slots_by_start().unwrap().iter().any(|s| s.id == "S-002"));
    v.close().unwrap();
}
