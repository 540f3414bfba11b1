//! Browser-side records: login links, sessions and pending OAuth authorizations. Each is keyed
//! by the SHA-256 of a bearer value that only the browser holds.

use redb::{ReadableTable, TableDefinition};

use super::{
    Connection, LOGIN_LINKS, LoginLink, PENDING, PendingAuthorization, Reader, SESSIONS, Session,
    StoreError, Txn, decode, encode, st,
};

fn get<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match t.get(key).map_err(st)? {
        Some(v) => decode(name, key, v.value()).map(Some),
        None => Ok(None),
    }
}

impl Txn<'_> {
    fn put<T: serde::Serialize>(
        &mut self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
        v: &T,
    ) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(def).map_err(st)?;
        t.insert(key, encode(v).as_slice()).map_err(st)?;
        Ok(())
    }

    fn take<T: serde::de::DeserializeOwned>(
        &mut self,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let mut t = self.txn.open_table(def).map_err(st)?;
        let raw = t.remove(key).map_err(st)?.map(|v| v.value().to_vec());
        raw.map(|r| decode(name, key, &r)).transpose()
    }

    pub fn put_login_link(&mut self, hash: &str, link: &LoginLink) -> Result<(), StoreError> {
        self.put(LOGIN_LINKS, hash, link)
    }

    /// Removes and returns the link: a link works once.
    pub fn take_login_link(&mut self, hash: &str) -> Result<Option<LoginLink>, StoreError> {
        self.take(LOGIN_LINKS, "login_links", hash)
    }

    pub fn put_session(&mut self, hash: &str, s: &Session) -> Result<(), StoreError> {
        self.put(SESSIONS, hash, s)
    }

    pub fn delete_session(&mut self, hash: &str) -> Result<Option<Session>, StoreError> {
        self.take(SESSIONS, "sessions", hash)
    }

    pub fn put_pending(&mut self, p: &PendingAuthorization) -> Result<(), StoreError> {
        self.put(PENDING, &p.state_hash.clone(), p)
    }

    /// Removes and returns the pending authorization: a `state` is single use.
    pub fn take_pending(
        &mut self,
        state_hash: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        self.take(PENDING, "pending_authorizations", state_hash)
    }

    /// Drops expired login links, sessions and pending authorizations; returns the sealed
    /// verifier records of the pending ones, for the caller to delete from the vault.
    pub fn purge_expired(&mut self) -> Result<(Vec<String>, usize), StoreError> {
        let now = self.now;
        let mut records = Vec::new();
        let mut removed = 0;
        {
            let mut t = self.txn.open_table(PENDING).map_err(st)?;
            let mut gone = Vec::new();
            for e in t.iter().map_err(st)? {
                let (k, v) = e.map_err(st)?;
                let p: PendingAuthorization =
                    decode("pending_authorizations", k.value(), v.value())?;
                if p.expires <= now {
                    gone.push(k.value().to_owned());
                    records.push(p.verifier_record);
                }
            }
            removed += gone.len();
            for k in gone {
                t.remove(k.as_str()).map_err(st)?;
            }
        }
        for (def, name) in [(LOGIN_LINKS, "login_links"), (SESSIONS, "sessions")] {
            let mut t = self.txn.open_table(def).map_err(st)?;
            let mut gone = Vec::new();
            for e in t.iter().map_err(st)? {
                let (k, v) = e.map_err(st)?;
                let exp: serde_json::Value = decode(name, k.value(), v.value())?;
                let expired = exp
                    .get("expires")
                    .and_then(|x| x.as_str())
                    .and_then(|x| {
                        time::OffsetDateTime::parse(
                            x,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .is_none_or(|x| x <= now);
                if expired {
                    gone.push(k.value().to_owned());
                }
            }
            removed += gone.len();
            for k in gone {
                t.remove(k.as_str()).map_err(st)?;
            }
        }
        Ok((records, removed))
    }

    pub fn pending_for_session(&self, session_hash: &str) -> Result<usize, StoreError> {
        let t = self.txn.open_table(PENDING).map_err(st)?;
        let mut n = 0;
        for e in t.iter().map_err(st)? {
            let (k, v) = e.map_err(st)?;
            let p: PendingAuthorization = decode("pending_authorizations", k.value(), v.value())?;
            n += usize::from(p.browser_session_hash == session_hash);
        }
        Ok(n)
    }

    /// The user's live (not revoked) connection for a service, if any.
    pub fn live_connection(
        &self,
        user_id: &str,
        service: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let index = self.txn.open_table(super::LIVE_CONNECTIONS).map_err(st)?;
        let conns = self.txn.open_table(super::CONNECTIONS).map_err(st)?;
        super::live_connection_in(&index, &conns, user_id, service)
    }
}

impl Reader {
    pub fn session(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        get(&self.0.open_table(SESSIONS).map_err(st)?, "sessions", hash)
    }

    pub fn pending(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        get(
            &self.0.open_table(PENDING).map_err(st)?,
            "pending_authorizations",
            state_hash,
        )
    }

    pub fn pending_all(&self) -> Result<Vec<PendingAuthorization>, StoreError> {
        super::collect(
            &self.0.open_table(PENDING).map_err(st)?,
            "pending_authorizations",
        )
    }

    pub fn user(&self, id: &str) -> Result<Option<super::User>, StoreError> {
        get(&self.0.open_table(super::USERS).map_err(st)?, "users", id)
    }
}
