//! Keys in use: blind indexes, the patient data keys, sealing and opening.

use super::*;

impl Vault {
    /// The blind index of `value` in `domain`: HMAC-SHA256 under the index key.
    pub fn blind_index(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.inner.purpose.index);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn audit_key(&self) -> &hmac::Key {
        &self.inner.purpose.audit
    }

    /// The key backups are sealed with (stable across master key rotation).
    pub fn backup_key(&self) -> &[u8; 32] {
        &self.inner.purpose.backup
    }

    /// Keeps a copy of the keyring at `path`, updated on every change.
    pub fn set_keyring_mirror(&self, path: &Path) -> VaultResult<()> {
        Ok(crate::sync::lock(&self.inner.keyring).set_mirror(path)?)
    }

    /// Why the keyring copy is stale, if it is.
    pub fn keyring_mirror_error(&self) -> Option<String> {
        crate::sync::lock(&self.inner.keyring)
            .mirror_error()
            .map(str::to_owned)
    }

    pub fn has_patient_key(&self, id: PatientId) -> bool {
        crate::sync::read(&self.inner.keys)
            .current_handle(KeyOwner::Patient(id))
            .is_some()
    }

    /// Makes sure the patient has a data key, creating it (staged: durable
    /// with the next flush of the store's log, keyring.rs) if needed. Must
    /// precede the first record of a patient.
    pub fn ensure_patient_key(&self, id: PatientId) -> VaultResult<()> {
        if self.has_patient_key(id) {
            return Ok(());
        }
        self.create_missing_keys(&[id])
    }

    /// Run by the writer at the start of a batch: creates the data keys the
    /// batch's jobs declared (patients about to get their first record and
    /// without a key, as the writer found them), all at once, before any of
    /// the jobs runs. A failure is left
    /// for the jobs to report: each still makes sure of its key
    /// ([`Vault::ensure_patient_key`]) and fails if it cannot.
    pub(super) fn create_patient_keys(&self, ids: &[PatientId]) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.create_missing_keys(ids) {
            tracing::warn!(error = %e, "new patients' keys could not be created; their messages fail and are sent again");
        }
    }

    /// Creates under the keyring's lock the keys of those of `ids` that have
    /// none (checked again under the lock). Their lines are staged in the
    /// store's log, written by the flush that makes the first records
    /// sealed under them durable, in the same `fdatasync`.
    fn create_missing_keys(&self, ids: &[PatientId]) -> VaultResult<()> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        let mut wanted: Vec<PatientId> = ids
            .iter()
            .copied()
            .filter(|p| !self.has_patient_key(*p))
            .collect();
        wanted.sort_unstable_by_key(|p| p.0);
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let owners: Vec<KeyOwner> = wanted.into_iter().map(KeyOwner::Patient).collect();
        let (entries, lines) = ring.add_staged_many(&owners)?;
        // Staged before any job can seal under these keys: the log writes
        // the lines ahead of every commit applied after this.
        self.inner.store.stage_keys(lines.as_bytes());
        let mut view = crate::sync::write(&self.inner.keys);
        for entry in &entries {
            view.add(entry)?;
        }
        Ok(())
    }

    /// Appends the staged keys to the keyring, then checkpoints the store,
    /// emptying its log (keyring lines included). With the keyring locked,
    /// so that no key is staged in between.
    pub(super) fn checkpoint_locked(&self, ring: &mut Keyring) -> VaultResult<()> {
        ring.save_staged(&crate::sync::read(&self.inner.keys))?;
        self.inner.store.checkpoint_keys_saved()?;
        Ok(())
    }

    /// [`Vault::checkpoint_locked`], taking the keyring's lock.
    pub(super) fn checkpoint(&self) -> VaultResult<()> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        self.checkpoint_locked(&mut ring)
    }

    /// After a flush: a log grown past its size with keyring lines in it is
    /// emptied here (the engine empties others itself). A failure is only
    /// logged: the log keeps everything, and the next flush tries again.
    pub(super) fn checkpoint_if_due(&self) {
        if self.inner.store.checkpoint_due() {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "the store's log could not be emptied yet; it keeps every record and is tried again after the next flush");
            }
        }
    }

    /// Right after the store opened (or reopened): takes the keys whose
    /// lines its log held and the keyring lacks (a crash before they were
    /// saved), stages again those staged here but lost with a failed
    /// instance of the store, and empties the log once they are saved.
    pub(super) fn take_keys_from_log(&self) -> VaultResult<()> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        // Keys staged before a reopen went down with the failed instance
        // (at a start nothing is staged yet; the adopted keys below are in
        // the log already).
        if ring.has_staged() {
            let staged = ring.staged_lines(&crate::sync::read(&self.inner.keys))?;
            self.inner.store.stage_keys(staged.as_bytes());
        }
        let lines = self.inner.store.take_recovered_keys();
        let adopted = ring.adopt(&mut crate::sync::write(&self.inner.keys), &lines)?;
        if adopted > 0 {
            tracing::info!(
                keys = adopted,
                "took new patients' keys from the store's log into the keyring"
            );
        }
        if ring.has_staged() || !lines.is_empty() {
            self.checkpoint_locked(&mut ring)?;
        }
        Ok(())
    }

    pub(super) fn sealing_key(&self, owner: Owner) -> VaultResult<KeyInUse> {
        let kind = match owner {
            Owner::System => KeyOwner::System,
            Owner::Patient(p) => KeyOwner::Patient(p),
        };
        let view = crate::sync::read(&self.inner.keys);
        view.current_handle(kind)
            .and_then(|h| view.in_use(h))
            .ok_or(match owner {
                Owner::Patient(p) => VaultError::NoPatientKey(p),
                Owner::System => VaultError::Internal("the keyring has no system key"),
            })
    }

    pub(super) fn seal_value(
        &self,
        tree: Tree,
        key: &[u8],
        owner: Owner,
        plain: &[u8],
    ) -> VaultResult<Vec<u8>> {
        let vk = self.sealing_key(owner)?;
        vk.with_key(|dk| seal::seal(dk, &self.inner.nonces, tree.name(), key, plain))?
            .map_err(|source| VaultError::Damaged {
                tree: tree.name(),
                source,
            })
    }

    pub(super) fn open_value(&self, tree: Tree, key: &[u8], sealed: &[u8]) -> VaultResult<Vec<u8>> {
        let damaged = |source| VaultError::Damaged {
            tree: tree.name(),
            source,
        };
        let handle = seal::handle_of(sealed).map_err(damaged)?;
        let vk = crate::sync::read(&self.inner.keys).in_use(handle).ok_or(
            VaultError::KeyUnavailable {
                tree: tree.name(),
                handle,
            },
        )?;
        vk.with_key(|dk| seal::open(dk, tree.name(), key, sealed))?
            .map_err(damaged)
    }
}
