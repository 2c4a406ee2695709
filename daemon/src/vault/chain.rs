//! The audit chain: its head checkpoint, loading it at open, reading and
//! verifying entries.

use super::*;

impl Vault {
    pub(super) fn read_head(&self) -> Result<Option<AuditHead>, String> {
        match self.get_json::<AuditHead>(Tree::Audit, AUDIT_HEAD_KEY) {
            Ok(h) => Ok(h),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The seq of the last record a sequenced tree holds (0 when empty).
    pub(super) fn last_key_seq(&self, tree: Tree) -> VaultResult<u64> {
        Ok(self
            .inner
            .store
            .last(tree)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    pub(super) fn load_chain_state(&self) -> VaultResult<()> {
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        for tree in Tree::SEQUENCED {
            let last = self.last_key_seq(tree)?;
            let stored = self
                .get(Tree::Meta, &high_water_key(tree))?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            chain.last_seq.insert(tree, last.max(stored));
        }
        match self
            .get(Tree::Meta, PATIENT_COUNT_KEY)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        {
            Some(stored) => chain.patients = u64::from_be_bytes(stored),
            None => {
                // A store from before the count was kept: counted once.
                let counted = self.inner.store.len(Tree::Patients)?;
                chain.patients = u64::try_from(counted).unwrap_or(u64::MAX);
                chain.patients_unsaved = counted > 0;
            }
        }
        // Everything on disk at open is durable.
        let events = chain.last_seq.get(&Tree::Events).copied().unwrap_or(0);
        self.inner.events_durable.send_replace(events);
        match self.read_head() {
            Ok(None)
                if self
                    .inner
                    .store
                    .get(Tree::Audit, &1u64.to_be_bytes())?
                    .is_none() => {}
            Ok(None) => chain.damage = Some("head checkpoint missing".to_owned()),
            Err(e) => chain.damage = Some(format!("head checkpoint unreadable: {e}")),
            Ok(Some(head)) => {
                // The log ends exactly at the head: entry `seq` is there and
                // entry `seq + 1` is not.
                let store = &self.inner.store;
                let last_matches = store.get(Tree::Audit, &head.seq.to_be_bytes())?.is_some()
                    && store
                        .get(Tree::Audit, &(head.seq + 1).to_be_bytes())?
                        .is_none();
                if !head.is_authentic(&self.inner.purpose.audit) {
                    chain.damage = Some("head checkpoint MAC invalid".to_owned());
                } else if !last_matches {
                    chain.damage = Some(format!(
                        "head checkpoint says {} but the log ends elsewhere",
                        head.seq
                    ));
                } else {
                    chain.seq = head.seq;
                    chain.hash = head.hash;
                }
            }
        }
        if chain.damage.is_none() {
            self.anchor_at_open(&mut chain)?;
        }
        Ok(())
    }

    /// Why the audit chain cannot be extended, if it cannot.
    pub fn audit_damage(&self) -> Option<String> {
        crate::sync::lock(&self.inner.commit_lock).damage.clone()
    }

    /// The seq of the last audit entry.
    pub fn audit_seq(&self) -> u64 {
        crate::sync::lock(&self.inner.commit_lock).seq
    }

    /// Every stored audit entry from `from_seq` on, in order, opened where possible.
    pub fn audit_entries(&self, from_seq: u64) -> impl Iterator<Item = StoredEntry> + '_ {
        self.inner
            .store
            .scan_from(Tree::Audit, &from_seq.to_be_bytes())
            .filter(|r| {
                r.as_ref().map_or(true, |(k, _)| {
                    k.as_ref() != AUDIT_HEAD_KEY && k.as_ref() != AUDIT_ANCHORED_KEY
                })
            })
            .map(move |r| match r {
                Err(e) => (u64::MAX, Err(e.to_string())),
                Ok((k, v)) => {
                    let Ok(seq_bytes) = <[u8; 8]>::try_from(k.as_ref()) else {
                        return (u64::MAX, Err("malformed key".to_owned()));
                    };
                    let seq = u64::from_be_bytes(seq_bytes);
                    let entry = self
                        .open_value(Tree::Audit, k.as_ref(), v.as_ref())
                        .map_err(|e| e.to_string())
                        .and_then(|plain| {
                            serde_json::from_slice::<AuditEntry>(&plain)
                                .map_err(|_| "not an audit entry".to_owned())
                        });
                    (seq, entry)
                }
            })
    }

    /// Checks the whole chain against the MAC'd head, then the head against
    /// the anchor kept outside the store (as checked at open). Returns the
    /// entry count.
    pub fn verify_audit(&self) -> VaultResult<u64> {
        let anchor_fault = crate::sync::lock(&self.inner.commit_lock)
            .anchor_fault
            .clone();
        let count = self.verify_chain()?;
        match anchor_fault {
            Some(fault) => Err(fault.into()),
            None => Ok(count),
        }
    }

    /// Checks the whole chain against the MAC'd head. Returns the entry count.
    pub(super) fn verify_chain(&self) -> VaultResult<u64> {
        let head = match self.read_head() {
            Ok(h) => h,
            Err(_) => {
                return Err(AuditFault::HeadMissing.into());
            }
        };
        Ok(audit::verify(
            self.audit_entries(1),
            head,
            self.audit_key(),
        )?)
    }
}
