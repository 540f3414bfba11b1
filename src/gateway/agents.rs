//! Agents and permission profiles: the admin operations, and authenticating an agent's token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use time::OffsetDateTime;

use super::{ADMIN, Gateway, GatewayError, check_user_name};
use crate::agent_token;
use crate::secret::SecretBytes;
use crate::store::audit::Event;
use crate::store::{Agent, Profile, ProfileRule, StoreError, User};

/// Principals by token digest. Every change to agents, profiles or users bumps the generation
/// and empties the map under the same lock, and a lookup caches what it read only if the
/// generation is unchanged since before its read: a revocation can never be undone by a
/// lookup that raced it, and takes effect on the next request (I11).
#[derive(Default)]
pub struct PrincipalCache {
    inner: std::sync::Mutex<Principals>,
}

#[derive(Default)]
struct Principals {
    generation: u64,
    by_digest: HashMap<[u8; 32], Arc<Principal>>,
    /// Each agent's count of requests in flight, shared by every principal made for it, so
    /// the per-agent cap holds across cache invalidations (which make new principals).
    in_flight: HashMap<String, Arc<AtomicUsize>>,
}

const MAX_CACHED_PRINCIPALS: usize = 10_000;

impl PrincipalCache {
    pub fn invalidate(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.generation += 1;
        g.by_digest.clear();
    }

    fn get(&self, digest: &[u8; 32]) -> (u64, Option<Arc<Principal>>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.generation, g.by_digest.get(digest).cloned())
    }

    /// The agent's in-flight counter (made on first use).
    fn in_flight(&self, agent_id: &str) -> Arc<AtomicUsize> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.in_flight.get(agent_id) {
            return c.clone();
        }
        if g.in_flight.len() >= MAX_CACHED_PRINCIPALS {
            // Counters nothing holds any more (no principal, no request) are all zero.
            g.in_flight.retain(|_, c| Arc::strong_count(c) > 1);
        }
        let c = Arc::new(AtomicUsize::new(0));
        g.in_flight.insert(agent_id.to_owned(), c.clone());
        c
    }

    fn put(&self, generation: u64, digest: [u8; 32], p: Arc<Principal>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.generation == generation {
            if g.by_digest.len() >= MAX_CACHED_PRINCIPALS {
                g.by_digest.clear();
            }
            g.by_digest.insert(digest, p);
        }
    }
}

/// An authenticated agent with what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub agent: Agent,
    pub user: User,
    pub profile: Option<Profile>,
    /// The agent's proxied requests in flight (the per-agent cap), shared by all its
    /// principals.
    pub in_flight: Arc<AtomicUsize>,
}

impl Gateway {
    /// Creates an agent; the token is returned once and only its hash is stored.
    pub fn agent_add(
        &self,
        name: &str,
        user: &str,
        profile: Option<&str>,
    ) -> Result<(Agent, SecretBytes), GatewayError> {
        check_user_name(name).map_err(|_| {
            GatewayError::Invalid("agent names use 1-64 letters, digits and - _ . @".into())
        })?;
        let token = agent_token::generate();
        let hash = agent_token::lookup_hash(token.expose_secret());
        let agent = self.store.write(|t| {
            let u = t
                .user_by_name(user)?
                .ok_or_else(|| StoreError::NotFound(format!("no user named {user}")))?;
            let profile_id = match profile {
                Some(p) => Some(
                    t.profile_by_name(p)?
                        .ok_or_else(|| StoreError::NotFound(format!("no profile named {p}")))?
                        .id,
                ),
                None => None,
            };
            let agent = Agent {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: u.id.clone(),
                name: name.to_owned(),
                profile: profile_id,
                token_hash: hash.clone(),
                created: t.now,
                revoked: None,
            };
            t.insert_agent(&agent)?;
            t.audit(
                Event::new(ADMIN, "agent.add", name, "ok")
                    .detail("user", user)
                    .detail("profile", profile.unwrap_or("(none: all services)")),
            )?;
            Ok(agent)
        })?;
        Ok((agent, token))
    }

    pub fn agents(&self) -> Result<Vec<Agent>, GatewayError> {
        Ok(self.store.read()?.agents()?)
    }

    /// Revokes at once: the next request with the token is refused.
    pub fn agent_revoke(&self, name: &str) -> Result<(), GatewayError> {
        self.store.write(|t| {
            let mut a = t
                .agent_by_name(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no agent named {name}")))?;
            if a.revoked.is_some() {
                return Err(StoreError::Conflict(format!(
                    "agent {name} is already revoked"
                )));
            }
            a.revoked = Some(t.now);
            t.put_agent(&a)?;
            t.audit(Event::new(ADMIN, "agent.revoke", name, "ok"))?;
            Ok(())
        })?;
        self.principals.invalidate();
        Ok(())
    }

    pub fn profile_add(
        &self,
        name: &str,
        rules: Vec<ProfileRule>,
    ) -> Result<Profile, GatewayError> {
        check_user_name(name).map_err(|_| {
            GatewayError::Invalid("profile names use 1-64 letters, digits and - _ . @".into())
        })?;
        if rules.is_empty() {
            return Err(GatewayError::Invalid(
                "a profile needs at least one --allow rule".into(),
            ));
        }
        for r in &rules {
            if !self.config.services.contains_key(&r.service) {
                return Err(GatewayError::Invalid(format!(
                    "no service named {} in the config",
                    r.service
                )));
            }
        }
        let profile = Profile {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            rules: crate::policy::merge(rules),
            created: OffsetDateTime::now_utc(),
        };
        self.store.write(|t| {
            t.insert_profile(&profile)?;
            let summary: Vec<String> = profile.rules.iter().map(crate::policy::describe).collect();
            t.audit(
                Event::new(ADMIN, "profile.add", name, "ok").detail("allow", summary.join(" ")),
            )?;
            Ok(())
        })?;
        Ok(profile)
    }

    /// Replaces a profile's rules (the console's edit). The principal cache is invalidated so
    /// a narrowed profile binds its agents on their next request.
    pub fn profile_set(
        &self,
        name: &str,
        rules: Vec<ProfileRule>,
    ) -> Result<Profile, GatewayError> {
        if rules.is_empty() {
            return Err(GatewayError::Invalid(
                "a profile needs at least one allow rule".into(),
            ));
        }
        for r in &rules {
            if !self.config.services.contains_key(&r.service) {
                return Err(GatewayError::Invalid(format!(
                    "no service named {} in the config",
                    r.service
                )));
            }
        }
        let profile = self.store.write(|t| {
            let mut p = t
                .profile_by_name(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no profile named {name}")))?;
            let before: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
            p.rules = crate::policy::merge(rules);
            let after: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
            t.put_profile(&p)?;
            t.audit(
                Event::new(ADMIN, "profile.edit", name, "ok")
                    .detail("before", before.join(" "))
                    .detail("allow", after.join(" ")),
            )?;
            Ok(p)
        })?;
        self.principals.invalidate();
        Ok(profile)
    }

    pub fn profiles(&self) -> Result<Vec<Profile>, GatewayError> {
        Ok(self.store.read()?.profiles()?)
    }

    /// Refused while a live agent uses the profile: removing it would widen that agent's
    /// rights to the no-profile default.
    pub fn profile_remove(&self, name: &str) -> Result<(), GatewayError> {
        self.store.write(|t| {
            let p = t
                .profile_by_name(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no profile named {name}")))?;
            if let Some(a) = t
                .agents()?
                .into_iter()
                .find(|a| a.revoked.is_none() && a.profile.as_deref() == Some(&p.id))
            {
                return Err(StoreError::Conflict(format!(
                    "agent {} uses profile {name}; revoke it first",
                    a.name
                )));
            }
            t.remove_profile(&p)?;
            t.audit(Event::new(ADMIN, "profile.remove", name, "ok"))?;
            Ok(())
        })?;
        self.principals.invalidate();
        Ok(())
    }

    /// I11: the agent behind a bearer token, checked on every request. `None` for anything
    /// unknown, malformed or revoked — the caller answers all of them alike.
    /// The principal for `token` if it is in memory: no I/O, so the proxy can ask on its
    /// async path and go to the store (`authenticate_agent`) only on a miss.
    pub fn cached_principal(&self, token: &[u8]) -> Option<Arc<Principal>> {
        // A hit is a token whose SHA-256 an issued agent holds, so it is well formed; the
        // checksum (a second SHA-256) is worth computing only before going to the store.
        if token.len() != agent_token::TOKEN_LEN {
            return None;
        }
        self.principals.get(&agent_token::lookup_digest(token)).1
    }

    pub fn authenticate_agent(&self, token: &[u8]) -> Result<Option<Arc<Principal>>, GatewayError> {
        if !agent_token::well_formed(token) {
            return Ok(None);
        }
        let digest = agent_token::lookup_digest(token);
        let (generation, cached) = self.principals.get(&digest);
        if cached.is_some() {
            return Ok(cached);
        }
        let r = self.store.read()?;
        let Some(agent) = r.agent_by_token_hash(&crate::secret::hex(&digest))? else {
            return Ok(None);
        };
        if agent.revoked.is_some() {
            return Ok(None);
        }
        let Some(user) = r.user(&agent.user_id)? else {
            return Ok(None);
        };
        let profile =
            match &agent.profile {
                Some(id) => Some(r.profile(id)?.ok_or_else(|| {
                    GatewayError::NotFound("the agent's profile is missing".into())
                })?),
                None => None,
            };
        let principal = Arc::new(Principal {
            in_flight: self.principals.in_flight(&agent.id),
            agent,
            user,
            profile,
        });
        self.principals.put(generation, digest, principal.clone());
        Ok(Some(principal))
    }
}

/// A principal for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn principal() -> Principal {
        let now = OffsetDateTime::UNIX_EPOCH;
        Principal {
            agent: Agent {
                id: "a".into(),
                user_id: "u".into(),
                name: "n".into(),
                profile: None,
                token_hash: "h".into(),
                created: now,
                revoked: None,
            },
            user: User {
                id: "u".into(),
                name: "alice".into(),
                created: now,
            },
            profile: None,
            in_flight: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::principal;
    use super::*;

    /// A lookup that read the store before a revocation committed must not cache what it read
    /// after the revocation invalidated the cache (otherwise the revoked agent would live on).
    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_cached() {
        let c = PrincipalCache::default();
        let h = [7u8; 32];
        let (generation, none) = c.get(&h);
        assert!(none.is_none());
        c.invalidate(); // the revocation commits here
        c.put(generation, h, Arc::new(principal()));
        assert!(c.get(&h).1.is_none(), "a stale principal was cached");
        let (fresh, _) = c.get(&h);
        c.put(fresh, h, Arc::new(principal()));
        assert!(c.get(&h).1.is_some());
        c.invalidate();
        assert!(c.get(&h).1.is_none());
    }

    /// The per-agent cap counts every request of the agent: principals made after a cache
    /// invalidation share the count of those made before (requests still in flight).
    #[test]
    fn an_agents_in_flight_count_outlives_cache_invalidation() {
        use std::sync::atomic::Ordering;
        let c = PrincipalCache::default();
        let before = c.in_flight("agent-1");
        before.fetch_add(2, Ordering::SeqCst);
        c.invalidate();
        let after = c.in_flight("agent-1");
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.load(Ordering::SeqCst), 2);
        assert!(!Arc::ptr_eq(&before, &c.in_flight("agent-2")));
    }
}
