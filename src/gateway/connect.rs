//! Browser login and the OAuth connect flow's state: login links, sessions, pending
//! authorizations (RFC 6749 §10.12 `state`, RFC 7636 PKCE), finished connections. The network
//! half lives in `oauth::client`; the HTTP half in `web`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

use super::{ADMIN, Gateway, GatewayError, SECRET_PREFIX};
use crate::config::ServiceKind;
use crate::oauth::pkce::{lookup_hash, random_token, s256_challenge};
use crate::oauth::token::TokenResponse;
use crate::secret::{SecretBytes, hex};
use crate::store::audit::Event;
use crate::store::{
    Connection, ConnectionKind, ConnectionStatus, LoginLink, PendingAuthorization, ProviderSubject,
    Session, StoreError, User,
};

pub const LOGIN_LINK_TTL: Duration = Duration::minutes(15);
pub const SESSION_TTL: Duration = Duration::hours(12);
/// RFC 9700 §4.7 and the MCP spec: `state` lives at most ten minutes.
pub const PENDING_TTL: Duration = Duration::minutes(10);
pub const PENDING_PREFIX: &str = "pending/";
const MAX_PENDING_PER_SESSION: usize = 8;
const VERIFIER_FIELD: &str = "pkce_verifier";
pub const ACCESS_FIELD: &str = "access_token";
pub const REFRESH_FIELD: &str = "refresh_token";

/// Why a callback is refused. Each changes nothing and makes no token request (I10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    #[error("this sign-in is unknown or was already used; start again from the connect page")]
    UnknownState,
    #[error(
        "this sign-in took longer than ten minutes and expired; start again from the connect page"
    )]
    Expired,
    #[error("this sign-in was started in another browser session; start again from this browser")]
    OtherSession,
    #[error(
        "the response did not come from the expected authorization server (iss mismatch); it was ignored"
    )]
    IssuerMismatch,
    #[error(
        "the authorization server did not identify itself (iss missing) although it promised to; the response was ignored"
    )]
    IssuerMissing,
}

/// Where a new authorization goes and what it asks for.
#[derive(Debug, Clone, Copy)]
pub struct FlowTarget<'a> {
    pub service: &'a str,
    /// The issuer `iss` must equal (RFC 9207), when known.
    pub issuer: Option<&'a str>,
    /// The server advertised RFC 9207, so `iss` may not be missing.
    pub iss_required: bool,
    pub scopes: &'a [String],
    pub redirect_uri: &'a str,
    /// Bind the tokens to a new DPoP key (RFC 9449).
    pub dpop: bool,
}

/// What the browser needs to go to the provider.
pub struct Begun {
    pub state: SecretBytes,
    pub code_challenge: String,
    /// The DPoP key's thumbprint, for `dpop_jkt` (RFC 9449 §10), when the flow uses DPoP.
    pub dpop_jkt: Option<String>,
}

/// The sealed secrets of a spent pending authorization.
pub struct PendingSecrets {
    pub verifier: SecretBytes,
    /// The DPoP private key (PKCS#8) the code is to be exchanged with, when the flow uses it.
    pub dpop_key: Option<SecretBytes>,
}

impl Gateway {
    pub fn login_link(&self, name: &str) -> Result<SecretBytes, GatewayError> {
        let token = random_token();
        self.store.write(|t| {
            let user = t
                .user_by_name(name)?
                .ok_or_else(|| StoreError::NotFound(format!("no user named {name}")))?;
            t.put_login_link(
                &lookup_hash(token.expose_secret()),
                &LoginLink {
                    user_id: user.id.clone(),
                    expires: t.now + LOGIN_LINK_TTL,
                },
            )?;
            t.audit(Event::new(ADMIN, "user.link", name, "ok"))?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Spends a login link (once) and opens a browser session.
    pub fn login(&self, link_token: &[u8]) -> Result<(SecretBytes, User), GatewayError> {
        let session = random_token();
        let user = self.store.write(|t| {
            let invalid = || {
                StoreError::NotFound(
                    "this login link is unknown, already used or expired; ask for a new one".into(),
                )
            };
            let link = t
                .take_login_link(&lookup_hash(link_token))?
                .ok_or_else(invalid)?;
            if link.expires <= t.now {
                return Err(invalid());
            }
            let user = t.user_by_id(&link.user_id)?.ok_or_else(invalid)?;
            t.put_session(
                &lookup_hash(session.expose_secret()),
                &Session {
                    user_id: user.id.clone(),
                    created: t.now,
                    expires: t.now + SESSION_TTL,
                },
            )?;
            t.audit(Event::new(&user.name, "user.login", &user.name, "ok"))?;
            Ok(user)
        })?;
        Ok((session, user))
    }

    pub fn session_user(&self, session: &[u8]) -> Result<Option<User>, GatewayError> {
        let r = self.store.read()?;
        let Some(s) = r.session(&lookup_hash(session))? else {
            return Ok(None);
        };
        if s.expires <= OffsetDateTime::now_utc() {
            return Ok(None);
        }
        Ok(r.user(&s.user_id)?)
    }

    pub fn logout(&self, session: &[u8]) -> Result<(), GatewayError> {
        self.store.write(|t| {
            let s = t.delete_session(&lookup_hash(session))?;
            t.audit(Event::new(
                "browser",
                "user.logout",
                s.as_ref().map_or("-", |s| s.user_id.as_str()),
                "ok",
            ))?;
            Ok(())
        })?;
        Ok(())
    }

    /// The CSRF token for a session's forms: an HMAC of the session id under a vault-derived
    /// key, so nothing extra is stored and no other session's token matches.
    pub fn csrf_token(&self, session: &[u8]) -> String {
        let key = self.vault.derived_key(b"scopegate/v1/csrf");
        #[allow(clippy::expect_used)] // invariant: HMAC-SHA256 accepts keys of any length.
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_slice()).expect("hmac key");
        mac.update(session);
        hex(&mac.finalize().into_bytes())
    }

    pub fn csrf_ok(&self, session: &[u8], presented: &str) -> bool {
        let want = self.csrf_token(session);
        want.len() == presented.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                want.as_bytes(),
                presented.as_bytes(),
            ))
    }

    /// Creates a pending authorization: a 256-bit `state` (stored hashed, single use, bound to
    /// this browser session, ten minutes) and a PKCE S256 verifier sealed in the vault.
    pub fn begin_connect(
        &self,
        user: &User,
        session: &[u8],
        target: &FlowTarget<'_>,
    ) -> Result<Begun, GatewayError> {
        let FlowTarget {
            service,
            issuer,
            iss_required,
            scopes,
            redirect_uri,
            dpop,
        } = *target;
        let state = random_token();
        let verifier = random_token();
        let mut stale = Vec::new();
        let record = format!("{PENDING_PREFIX}{}", uuid::Uuid::new_v4());
        // The connection's DPoP key is made now, so the code itself can be bound to it.
        let dpop_key = if dpop {
            Some(crate::oauth::dpop::generate().map_err(|e| GatewayError::Invalid(e.to_string()))?)
        } else {
            None
        };
        let dpop_jkt = dpop_key
            .as_ref()
            .map(|k| crate::oauth::dpop::thumbprint_of(k.expose_secret()))
            .transpose()
            .map_err(|e| GatewayError::Invalid(e.to_string()))?;
        let mut items: Vec<(&str, &str, &[u8])> =
            vec![(&record, VERIFIER_FIELD, verifier.expose_secret())];
        if let Some(k) = &dpop_key {
            items.push((&record, crate::oauth::dpop::KEY_FIELD, k.expose_secret()));
        }
        self.vault.put_many(&items)?;
        let pending = PendingAuthorization {
            state_hash: lookup_hash(state.expose_secret()),
            user_id: user.id.clone(),
            service: service.to_owned(),
            browser_session_hash: lookup_hash(session),
            verifier_record: record.clone(),
            issuer: issuer.map(str::to_owned),
            iss_required,
            scopes: scopes.to_vec(),
            redirect_uri: redirect_uri.to_owned(),
            expires: OffsetDateTime::now_utc() + PENDING_TTL,
        };
        let written = self.store.write(|t| {
            // Bounded: expired sign-ins go, and one browser session holds a few at most.
            let (expired, _) = t.purge_expired()?;
            stale.extend(expired);
            if t.pending_for_session(&pending.browser_session_hash)? >= MAX_PENDING_PER_SESSION {
                return Err(StoreError::Conflict(
                    "too many sign-ins in progress in this browser; finish or wait for one".into(),
                ));
            }
            t.put_pending(&pending)?;
            t.audit(
                Event::new(&user.name, "oauth.begin", service, "ok")
                    .detail("scopes", scopes.join(" ")),
            )?;
            Ok(())
        });
        for r in &stale {
            let _ = self.vault.delete_record(r);
        }
        if let Err(e) = written {
            if !matches!(e, StoreError::CommitUncertain(_)) {
                let _ = self.vault.delete_record(&record);
            }
            return Err(e.into());
        }
        Ok(Begun {
            state,
            code_challenge: s256_challenge(verifier.expose_secret()),
            dpop_jkt,
        })
    }

    /// Checks a callback's `state` and `iss` without changing anything (I8, I9, I10).
    pub fn check_callback(
        &self,
        state: &str,
        session: Option<&[u8]>,
        iss: Option<&str>,
        iss_required: bool,
    ) -> Result<PendingAuthorization, CallbackRefusal> {
        let r = self
            .store
            .read()
            .map_err(|_| CallbackRefusal::UnknownState)?;
        let pending = r
            .pending(&lookup_hash(state.as_bytes()))
            .ok()
            .flatten()
            .ok_or(CallbackRefusal::UnknownState)?;
        if pending.expires <= OffsetDateTime::now_utc() {
            return Err(CallbackRefusal::Expired);
        }
        let same_session = session.is_some_and(|s| {
            let h = lookup_hash(s);
            bool::from(subtle::ConstantTimeEq::ct_eq(
                h.as_bytes(),
                pending.browser_session_hash.as_bytes(),
            ))
        });
        if !same_session {
            return Err(CallbackRefusal::OtherSession);
        }
        // RFC 9207 §2.4: compare by simple string comparison; a present `iss` must match even
        // when the server did not advertise it.
        match (iss, pending.issuer.as_deref()) {
            (Some(got), Some(want)) if got != want => return Err(CallbackRefusal::IssuerMismatch),
            (Some(_), None) => return Err(CallbackRefusal::IssuerMismatch),
            (None, _) if iss_required => return Err(CallbackRefusal::IssuerMissing),
            _ => {}
        }
        Ok(pending)
    }

    /// Spends the pending authorization (once: a concurrent second callback finds it gone)
    /// and returns its verifier and DPoP key.
    pub fn consume_pending(
        &self,
        pending: &PendingAuthorization,
        actor: &str,
        outcome: &str,
    ) -> Result<Option<PendingSecrets>, GatewayError> {
        let taken = self.store.write(|t| {
            let p = t.take_pending(&pending.state_hash)?;
            t.audit(Event::new(
                actor,
                "oauth.callback",
                &pending.service,
                outcome,
            ))?;
            Ok(p)
        })?;
        let Some(p) = taken else { return Ok(None) };
        let verifier = self.vault.get(&p.verifier_record, VERIFIER_FIELD)?;
        let dpop_key = self
            .vault
            .get(&p.verifier_record, crate::oauth::dpop::KEY_FIELD)?;
        let _ = self.vault.delete_record(&p.verifier_record);
        Ok(verifier.map(|verifier| PendingSecrets { verifier, dpop_key }))
    }

    /// Seals the tokens and records the connection (replacing the user's earlier one for the
    /// service), in the write order of the module comment of `gateway`. `dpop_key`: the key
    /// the tokens were requested with; it is sealed beside them, since refreshing needs it.
    pub fn finish_connect(
        &self,
        user: &User,
        pending: &PendingAuthorization,
        tokens: &TokenResponse,
        granted: Vec<String>,
        dpop_key: Option<&SecretBytes>,
    ) -> Result<Connection, GatewayError> {
        let record = format!("{SECRET_PREFIX}{}", uuid::Uuid::new_v4());
        let mut items: Vec<(&str, &str, &[u8])> =
            vec![(&record, ACCESS_FIELD, tokens.access_token.expose_secret())];
        if let Some(rt) = &tokens.refresh_token {
            items.push((&record, REFRESH_FIELD, rt.expose_secret()));
        }
        if let Some(k) = dpop_key {
            items.push((&record, crate::oauth::dpop::KEY_FIELD, k.expose_secret()));
        }
        let dpop_jkt = bound_to(tokens, dpop_key)?;
        self.vault.put_many(&items)?;
        let fingerprint = self.vault.fingerprint(tokens.access_token.expose_secret());
        let result = self.store.write(|t| {
            let existing = t.live_connection(&user.id, &pending.service)?;
            let old = existing.as_ref().and_then(|c| c.secret_record.clone());
            let conn = Connection {
                id: existing.map_or_else(|| uuid::Uuid::now_v7().to_string(), |c| c.id),
                user_id: user.id.clone(),
                service: pending.service.clone(),
                kind: ConnectionKind::Oauth,
                status: ConnectionStatus::Active,
                status_reason: None,
                secret_record: Some(record.clone()),
                secret_fingerprint: Some(fingerprint.clone()),
                scopes: granted.clone(),
                created: t.now,
                updated: t.now,
                secret_set_at: Some(t.now),
                access_expires: tokens
                    .expires_in
                    .map(|s| t.now + Duration::seconds(s as i64)),
                issuer: pending.issuer.clone(),
                strikes: 0,
                last_refresh: None,
                refresh: Default::default(),
                subject: self.subject_of(&pending.service, tokens),
                dpop_jkt: dpop_jkt.clone(),
            };
            t.put_connection(&conn)?;
            t.audit(
                Event::new(&user.name, "oauth.connect", &conn.id, "ok")
                    .detail("service", &pending.service)
                    .detail("scopes", granted.join(" "))
                    .detail(
                        "refresh_token",
                        if tokens.refresh_token.is_some() {
                            "yes"
                        } else {
                            "no"
                        },
                    )
                    .detail("token", &fingerprint)
                    .detail("dpop", dpop_jkt.as_deref().unwrap_or("no")),
            )?;
            Ok((conn, old))
        });
        match result {
            Ok((conn, old)) => {
                if let Some(old) = old {
                    let _ = self.vault.delete_record(&old);
                }
                Ok(conn)
            }
            Err(e @ StoreError::CommitUncertain(_)) => Err(e.into()),
            Err(e) => {
                let _ = self.vault.delete_record(&record);
                Err(e.into())
            }
        }
    }

    /// The provider's ids for the account, from the token response (I18: revocation events
    /// name accounts by these).
    fn subject_of(&self, service: &str, tokens: &TokenResponse) -> Option<ProviderSubject> {
        let provider = match &self.config.services.get(service)?.kind {
            ServiceKind::Oauth { provider, .. } => provider.clone(),
            ServiceKind::ApiKey { .. } => return None,
        };
        Some(ProviderSubject {
            provider,
            team: tokens.team.clone(),
            id: tokens.subject.clone()?,
        })
    }

    /// The sealed tokens of a live connection, for revocation at the provider.
    pub fn connection_tokens(
        &self,
        conn: &Connection,
    ) -> Result<(Option<SecretBytes>, Option<SecretBytes>), GatewayError> {
        let Some(r) = &conn.secret_record else {
            return Ok((None, None));
        };
        Ok((
            self.vault.get(r, ACCESS_FIELD)?,
            self.vault.get(r, REFRESH_FIELD)?,
        ))
    }

    pub fn live_connection(
        &self,
        user_id: &str,
        service: &str,
    ) -> Result<Option<Connection>, GatewayError> {
        Ok(self.store.read()?.live_connection(user_id, service)?)
    }
}

/// The thumbprint of the key the tokens are bound to: only when the server says so with
/// `token_type` DPoP (RFC 9449 §5). A server that answers Bearer although DPoP was asked has
/// not bound them; they are then used as Bearer tokens, as that server expects.
pub fn bound_to(
    tokens: &TokenResponse,
    dpop_key: Option<&SecretBytes>,
) -> Result<Option<String>, GatewayError> {
    match (
        tokens.token_type == crate::oauth::token::TokenType::DPoP,
        dpop_key,
    ) {
        (true, Some(k)) => crate::oauth::dpop::thumbprint_of(k.expose_secret())
            .map(Some)
            .map_err(|e| GatewayError::Invalid(e.to_string())),
        // A DPoP token we hold no key for could never be used: refuse it rather than store it.
        (true, None) => Err(GatewayError::Invalid(
            "the provider issued a DPoP-bound token although no DPoP proof was sent".into(),
        )),
        (false, _) => Ok(None),
    }
}
