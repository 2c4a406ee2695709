//! Applying a txn (on the writer thread only): sealing, sequencing,
//! chaining audit entries, one atomic store write; and what a durable
//! commit tells the rest of the daemon.

use super::*;

impl Vault {
    pub(super) fn seal_ops(&self, ops: &[Op]) -> VaultResult<Vec<Write>> {
        ops.iter()
            .map(|op| match op {
                Op::Put(tree, key, owner, plain) => Ok(Write::Put {
                    tree: *tree,
                    key: key.clone(),
                    value: self.seal_value(*tree, key, *owner, plain)?,
                }),
                Op::Remove(tree, key) => Ok(Write::Remove {
                    tree: *tree,
                    key: key.clone(),
                }),
            })
            .collect()
    }

    /// Seals the txn's values and applies everything as one commit,
    /// chaining its audit entries. Does not wait for durability. Called only
    /// by the writer thread ([`writer`]).
    pub(super) fn apply(&self, txn: Txn) -> VaultResult<Receipt> {
        // Only the writer applies, and a rotation begins as a writer job:
        // the key generation cannot change while this txn is sealed.
        let mut writes = self.seal_ops(&txn.ops)?;
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        let mut receipt = Receipt::empty();
        receipt.wrote = txn.flush_anyway;
        receipt.wakes_scheduler = txn.wakes_scheduler;
        let mut next_seqs: Vec<(Tree, u64)> = Vec::new();
        for (tree, owner, plain) in &txn.appends {
            let last = next_seqs
                .iter()
                .rev()
                .find(|(t, _)| t == tree)
                .map(|(_, s)| *s)
                .or_else(|| chain.last_seq.get(tree).copied())
                .unwrap_or(0);
            let seq = last + 1;
            let key = seq.to_be_bytes().to_vec();
            let value = self.seal_value(*tree, &key, *owner, plain)?;
            writes.push(Write::Put {
                tree: *tree,
                key,
                value,
            });
            next_seqs.push((*tree, seq));
        }
        // The high-water marks are stored, not derived from the last key at
        // the next start: a drained queue or a pruned feed must never hand
        // out a number again (feed cursors would skip, receipts collide).
        let mut marked: Vec<Tree> = Vec::new();
        for (tree, seq) in next_seqs.iter().rev() {
            if marked.contains(tree) {
                continue;
            }
            marked.push(*tree);
            let key = high_water_key(*tree);
            let value = self.seal_value(Tree::Meta, &key, Owner::System, &seq.to_be_bytes())?;
            writes.push(Write::Put {
                tree: Tree::Meta,
                key,
                value,
            });
        }
        let (mut seq, mut hash) = (chain.seq, chain.hash.clone());
        if !txn.audits.is_empty() {
            if let Some(why) = &chain.damage {
                return Err(VaultError::AuditDamaged(why.clone()));
            }
            if !chain.anchor_marked {
                writes.push(self.anchor_mark()?);
            }
            for draft in txn.audits {
                let entry = AuditEntry::chain(seq, &hash, txn.time, draft);
                let key = entry.seq.to_be_bytes().to_vec();
                let json = serde_json::to_vec(&entry).map_err(|_| VaultError::Encode)?;
                let value = self.seal_value(Tree::Audit, &key, Owner::System, &json)?;
                writes.push(Write::Put {
                    tree: Tree::Audit,
                    key,
                    value,
                });
                seq = entry.seq;
                hash = entry.hash;
            }
            let head = AuditHead::new(&self.inner.purpose.audit, seq, &hash);
            let json = serde_json::to_vec(&head).map_err(|_| VaultError::Encode)?;
            let value = self.seal_value(Tree::Audit, AUDIT_HEAD_KEY, Owner::System, &json)?;
            writes.push(Write::Put {
                tree: Tree::Audit,
                key: AUDIT_HEAD_KEY.to_vec(),
                value,
            });
            receipt.audit_seq = Some(seq);
        }
        let patients = self.patients_after(&txn.ops, chain.patients)?;
        if patients != chain.patients || chain.patients_unsaved {
            let value = self.seal_value(
                Tree::Meta,
                PATIENT_COUNT_KEY,
                Owner::System,
                &patients.to_be_bytes(),
            )?;
            writes.push(Write::Put {
                tree: Tree::Meta,
                key: PATIENT_COUNT_KEY.to_vec(),
                value,
            });
        }
        if writes.is_empty() {
            // Nothing changed (an unchanged record, a repeat): sled must not
            // see an empty transaction (it panics on one).
            return Ok(receipt);
        }
        self.inner.store.apply(&writes)?;
        receipt.wrote = true;
        chain.patients = patients;
        chain.patients_unsaved = false;
        chain.seq = seq;
        chain.hash = hash;
        chain.anchor_marked |= receipt.audit_seq.is_some();
        for (tree, s) in &next_seqs {
            chain.last_seq.insert(*tree, *s);
        }
        receipt.appended = next_seqs;
        Ok(receipt)
    }

    /// The number of patient records once `ops` are applied: the last op on
    /// each patient's key decides whether it is there, against whether it
    /// is there now (the store as the writer sees it, earlier commits of
    /// the batch included).
    fn patients_after(&self, ops: &[Op], before: u64) -> VaultResult<u64> {
        let mut last: Vec<(&[u8], bool)> = Vec::new();
        for op in ops {
            let (key, present) = match op {
                Op::Put(Tree::Patients, key, ..) => (key.as_slice(), true),
                Op::Remove(Tree::Patients, key) => (key.as_slice(), false),
                Op::Put(..) | Op::Remove(..) => continue,
            };
            match last.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = present,
                None => last.push((key, present)),
            }
        }
        let mut count = before;
        for (key, present) in last {
            let was = self.inner.store.get(Tree::Patients, key)?.is_some();
            match (was, present) {
                (false, true) => count = count.saturating_add(1),
                (true, false) => count = count.saturating_sub(1),
                _ => {}
            }
        }
        Ok(count)
    }

    /// Commits `txn` as a job of the writer and returns once it is durable.
    /// Blocks the thread: from async code use [`Vault::commit_async`]. For a
    /// txn whose content depends on what is stored, use [`Vault::write`], so
    /// that the reads happen on the writer too.
    pub fn commit(&self, txn: Txn) -> VaultResult<Receipt> {
        self.write_blocking(move |_| Ok::<_, VaultError>((txn, ())))
            .map(|c| c.receipt)
    }

    /// Tells long-polls about events that are now on disk. Any flush that
    /// covers this commit covers every earlier one (they were applied first,
    /// under the commit lock), so the watermark is a simple maximum.
    pub(super) fn publish_durable(&self, receipt: &Receipt) {
        if receipt.last_in(Tree::PmsOutbox).is_some() {
            self.inner.outbox_signal.notify_one();
        }
        if receipt.last_in(Tree::WaOutbox).is_some() {
            self.inner.wa_outbox_signal.notify_one();
        }
        if receipt.wakes_scheduler {
            self.inner.care_signal.notify_one();
        }
        if let Some(seq) = receipt.last_in(Tree::Events) {
            self.inner.events_durable.send_if_modified(|cur| {
                let moved = seq > *cur;
                if moved {
                    *cur = seq;
                }
                moved
            });
        }
    }

    /// Notified when a durable commit queued a message for the PMS.
    pub fn outbox_signal(&self) -> &tokio::sync::Notify {
        &self.inner.outbox_signal
    }

    /// Woken when a message lands in the WhatsApp outbox.
    pub fn wa_outbox_signal(&self) -> &tokio::sync::Notify {
        &self.inner.wa_outbox_signal
    }

    /// Woken when a durable commit set a workflow timer.
    pub fn care_signal(&self) -> &tokio::sync::Notify {
        &self.inner.care_signal
    }

    /// The workflow settings the daemon runs with (None: no workflows,
    /// e.g. a vault opened by a tool or a test without them).
    pub fn care(&self) -> Option<std::sync::Arc<crate::care::Settings>> {
        self.inner.care.get().cloned()
    }

    /// Sets the workflow settings, once, before inputs are applied.
    pub fn set_care(&self, settings: crate::care::Settings) {
        let _ = self.inner.care.set(std::sync::Arc::new(settings));
    }

    /// The minimal-payload policy outbound WhatsApp messages are checked
    /// against (the default one until the service sets the config's).
    pub fn wa_policy(&self) -> std::sync::Arc<crate::whatsapp::policy::Policy> {
        self.inner.wa_policy.get().cloned().unwrap_or_default()
    }

    /// Sets the minimal-payload policy, once, before anything is queued.
    pub fn set_wa_policy(&self, policy: crate::whatsapp::policy::Policy) {
        let _ = self.inner.wa_policy.set(std::sync::Arc::new(policy));
    }

    /// The first record of a tree (lowest key): its key, and its value or
    /// why it does not open.
    pub fn first(&self, tree: Tree) -> VaultResult<Option<FirstRecord>> {
        match self.inner.store.scan_from(tree, &[]).next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                let opened = self.open_value(tree, k.as_ref(), v.as_ref());
                Ok(Some((k.as_ref().to_vec(), opened)))
            }
        }
    }

    /// The highest event seq that is durable; changes wake the receiver.
    pub fn events_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.events_durable.subscribe()
    }

    /// The last seq of a sequenced tree (0 when empty).
    pub fn last_seq(&self, tree: Tree) -> u64 {
        crate::sync::lock(&self.inner.commit_lock)
            .last_seq
            .get(&tree)
            .copied()
            .unwrap_or(0)
    }

    /// Commits `txn` as a job of the writer and resolves once it is durable.
    pub async fn commit_async(&self, txn: Txn) -> VaultResult<Receipt> {
        self.write(move |_| Ok::<_, VaultError>((txn, ())))
            .await
            .map(|c| c.receipt)
    }

    /// Durably records audit entries that depend on nothing stored (service
    /// start and stop, an admin action, a batch of read audits): a writer job
    /// like every other change, resolved once it is on disk.
    pub async fn record_audit(
        &self,
        now: Timestamp,
        drafts: impl IntoIterator<Item = AuditDraft>,
    ) -> VaultResult<Receipt> {
        self.commit_async(Self::audit_txn(now, drafts)).await
    }

    /// [`Vault::record_audit`] for threads outside the async runtime.
    pub fn record_audit_blocking(
        &self,
        now: Timestamp,
        drafts: impl IntoIterator<Item = AuditDraft>,
    ) -> VaultResult<Receipt> {
        self.commit(Self::audit_txn(now, drafts))
    }

    pub(super) fn audit_txn(now: Timestamp, drafts: impl IntoIterator<Item = AuditDraft>) -> Txn {
        let mut txn = Txn::new(now);
        for draft in drafts {
            txn.audit(draft);
        }
        txn
    }

    /// Waits until everything applied so far is durable: the writer answers
    /// an empty job only after every earlier batch was flushed.
    pub fn flush(&self) -> VaultResult<()> {
        self.commit(Txn::new(Timestamp::UNIX_EPOCH)).map(|_| ())
    }
}
