//! Reads: one record, prefix scans, counts. Readers never take the writer.

use super::*;

impl Vault {
    /// Reads and opens one record.
    pub fn get(&self, tree: Tree, key: &[u8]) -> VaultResult<Option<Vec<u8>>> {
        match self.inner.store.get(tree, key)? {
            None => Ok(None),
            Some(sealed) => self.open_value(tree, key, sealed.as_ref()).map(Some),
        }
    }

    pub fn get_json<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> VaultResult<Option<T>> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| VaultError::decode(tree, &e)),
        }
    }

    /// Every record of `tree` in key order: its key, and its value or why it
    /// does not open (a queue must get past a damaged item, not stop at it).
    pub fn scan_raw(&self, tree: Tree) -> impl Iterator<Item = VaultResult<FirstRecord>> + '_ {
        self.inner.store.scan_from(tree, &[]).map(move |r| {
            let (k, v) = r?;
            let opened = self.open_value(tree, k.as_ref(), v.as_ref());
            Ok((k.as_ref().to_vec(), opened))
        })
    }

    /// [`Vault::scan_raw`] from `start` on.
    pub fn scan_raw_from<'a>(
        &'a self,
        tree: Tree,
        start: &[u8],
    ) -> impl Iterator<Item = VaultResult<FirstRecord>> + 'a {
        self.inner.store.scan_from(tree, start).map(move |r| {
            let (k, v) = r?;
            let opened = self.open_value(tree, k.as_ref(), v.as_ref());
            Ok((k.as_ref().to_vec(), opened))
        })
    }

    /// Records of `tree` whose key starts with `prefix`, in key order, opened.
    pub fn scan_prefix<'a>(
        &'a self,
        tree: Tree,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = VaultResult<(Vec<u8>, Vec<u8>)>> + 'a {
        self.inner
            .store
            .scan_from(tree, prefix)
            .take_while(move |r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.as_ref().starts_with(prefix))
            })
            .map(move |r| {
                let (k, v) = r?;
                let plain = self.open_value(tree, k.as_ref(), v.as_ref())?;
                Ok((k.as_ref().to_vec(), plain))
            })
    }

    /// The records of `tree` sealed under one of `patient`'s keys, in key
    /// order, opened. The key handle at the head of each sealed value says
    /// whose key sealed it, so the records of everyone else are skipped
    /// without being opened: for a tree with no index by patient (the
    /// WhatsApp sent log) read for one patient. A value too damaged to
    /// name its key is skipped too.
    pub fn scan_sealed_for(
        &self,
        tree: Tree,
        patient: PatientId,
    ) -> impl Iterator<Item = VaultResult<(Vec<u8>, Vec<u8>)>> + '_ {
        let handles: std::collections::HashSet<u64> = crate::sync::read(&self.inner.keys)
            .handles_of(KeyOwner::Patient(patient))
            .collect();
        self.inner.store.scan_from(tree, &[]).filter_map(move |r| {
            let (k, v) = match r {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let handle = seal::handle_of(v.as_ref()).ok()?;
            if !handles.contains(&handle) {
                return None;
            }
            let plain = self.open_value(tree, k.as_ref(), v.as_ref());
            Some(plain.map(|p| (k.as_ref().to_vec(), p)))
        })
    }

    /// The keys of `tree` from `start` on, in key order, without opening
    /// the values (a count of entries whose key is the whole fact: `kpi`).
    pub fn scan_keys_from<'a>(
        &'a self,
        tree: Tree,
        start: &[u8],
    ) -> impl Iterator<Item = VaultResult<Vec<u8>>> + 'a {
        self.inner
            .store
            .scan_from(tree, start)
            .map(|r| Ok(r?.0.as_ref().to_vec()))
    }

    /// The number of patient records (erased patients' records left by a
    /// restored backup included), kept by every commit: no scan.
    pub fn patient_count(&self) -> usize {
        usize::try_from(crate::sync::lock(&self.inner.commit_lock).patients).unwrap_or(usize::MAX)
    }

    /// The number of records in a tree; 0 when the store cannot be read
    /// (it is then marked failed, and the status says so).
    pub fn count(&self, tree: Tree) -> usize {
        self.inner.store.len(tree).unwrap_or(0)
    }
}
