//! Agents (found by the SHA-256 of their token) and permission profiles.

use redb::{ReadableTable, TableDefinition};

use super::{
    AGENT_HASHES, AGENT_NAMES, AGENTS, Agent, PROFILE_NAMES, PROFILES, Profile, Reader, StoreError,
    Txn, collect, decode, encode, st,
};

impl Txn<'_> {
    /// Records `name → id` in a unique name index; a taken name is a conflict.
    fn claim_name(
        &mut self,
        index: TableDefinition<&str, &str>,
        kind: &str,
        name: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let mut names = self.txn.open_table(index).map_err(st)?;
        if names.get(name).map_err(st)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "{kind} {name} already exists"
            )));
        }
        names.insert(name, id).map_err(st)?;
        Ok(())
    }

    pub fn insert_agent(&mut self, a: &Agent) -> Result<(), StoreError> {
        self.claim_name(AGENT_NAMES, "agent", &a.name, &a.id)?;
        self.txn
            .open_table(AGENT_HASHES)
            .map_err(st)?
            .insert(a.token_hash.as_str(), a.id.as_str())
            .map_err(st)?;
        self.txn
            .open_table(AGENTS)
            .map_err(st)?
            .insert(a.id.as_str(), encode(a).as_slice())
            .map_err(st)?;
        Ok(())
    }

    pub fn agent_by_name(&self, name: &str) -> Result<Option<Agent>, StoreError> {
        self.by_name(AGENT_NAMES, AGENTS, "agents", name)
    }

    /// A record found through its name index.
    fn by_name<T: serde::de::DeserializeOwned>(
        &self,
        names: TableDefinition<&str, &str>,
        records: TableDefinition<&str, &[u8]>,
        table: &'static str,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let names = self.txn.open_table(names).map_err(st)?;
        let Some(id) = names.get(name).map_err(st)?.map(|v| v.value().to_owned()) else {
            return Ok(None);
        };
        let t = self.txn.open_table(records).map_err(st)?;
        t.get(id.as_str())
            .map_err(st)?
            .map(|v| decode(table, &id, v.value()))
            .transpose()
    }

    pub fn put_agent(&mut self, a: &Agent) -> Result<(), StoreError> {
        self.txn
            .open_table(AGENTS)
            .map_err(st)?
            .insert(a.id.as_str(), encode(a).as_slice())
            .map_err(st)?;
        Ok(())
    }

    pub fn insert_profile(&mut self, p: &Profile) -> Result<(), StoreError> {
        self.claim_name(PROFILE_NAMES, "profile", &p.name, &p.id)?;
        self.txn
            .open_table(PROFILES)
            .map_err(st)?
            .insert(p.id.as_str(), encode(p).as_slice())
            .map_err(st)?;
        Ok(())
    }

    /// Replaces a profile's record (its name and id stay).
    pub fn put_profile(&mut self, p: &Profile) -> Result<(), StoreError> {
        self.txn
            .open_table(PROFILES)
            .map_err(st)?
            .insert(p.id.as_str(), encode(p).as_slice())
            .map_err(st)?;
        Ok(())
    }

    pub fn profile_by_name(&self, name: &str) -> Result<Option<Profile>, StoreError> {
        self.by_name(PROFILE_NAMES, PROFILES, "profiles", name)
    }

    pub fn remove_profile(&mut self, p: &Profile) -> Result<(), StoreError> {
        self.txn
            .open_table(PROFILE_NAMES)
            .map_err(st)?
            .remove(p.name.as_str())
            .map_err(st)?;
        self.txn
            .open_table(PROFILES)
            .map_err(st)?
            .remove(p.id.as_str())
            .map_err(st)?;
        Ok(())
    }

    pub fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        collect(&self.txn.open_table(AGENTS).map_err(st)?, "agents")
    }
}

impl Reader {
    /// The agent holding a token with this hash (one read transaction; no write on the
    /// request path).
    pub fn agent_by_token_hash(&self, hash: &str) -> Result<Option<Agent>, StoreError> {
        let hashes = self.0.open_table(AGENT_HASHES).map_err(st)?;
        let Some(id) = hashes.get(hash).map_err(st)?.map(|v| v.value().to_owned()) else {
            return Ok(None);
        };
        let t = self.0.open_table(AGENTS).map_err(st)?;
        t.get(id.as_str())
            .map_err(st)?
            .map(|v| decode("agents", &id, v.value()))
            .transpose()
    }

    pub fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        let mut a: Vec<Agent> = collect(&self.0.open_table(AGENTS).map_err(st)?, "agents")?;
        a.sort_by(|x, y| x.name.cmp(&y.name));
        Ok(a)
    }

    pub fn profiles(&self) -> Result<Vec<Profile>, StoreError> {
        let mut p: Vec<Profile> = collect(&self.0.open_table(PROFILES).map_err(st)?, "profiles")?;
        p.sort_by(|x, y| x.name.cmp(&y.name));
        Ok(p)
    }

    pub fn profile(&self, id: &str) -> Result<Option<Profile>, StoreError> {
        let t = self.0.open_table(PROFILES).map_err(st)?;
        t.get(id)
            .map_err(st)?
            .map(|v| decode("profiles", id, v.value()))
            .transpose()
    }
}
