//! The typed records of `scopegate.redb`. Metadata only: nothing here is secret, not even
//! ciphertext (sealed values live in the vault, reached through `Connection::secret_record`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    Oauth,
    ApiKey,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    Refreshing,
    NeedsReauth,
    Revoked,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Refreshing => "refreshing",
            Self::NeedsReauth => "needs_reauth",
            Self::Revoked => "revoked",
        }
    }

    /// Whether this connection may still hold sealed values in the vault.
    pub fn holds_secrets(self) -> bool {
        matches!(self, Self::Active | Self::Refreshing)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    pub user_id: String,
    pub service: String,
    pub kind: ConnectionKind,
    pub status: ConnectionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The vault record holding this connection's sealed values. A new record per key or
    /// token set, so a replaced value is swapped in by one store commit (see `gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_record: Option<String>,
    /// Keyed fingerprint of the current secret (`Vault::fingerprint`), never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
    /// When the current secret was stored (API-key rotation policy).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub secret_set_at: Option<OffsetDateTime>,
    /// When the current access token expires (OAuth), if the provider said.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub access_expires: Option<OffsetDateTime>,
    /// The authorization server that issued the tokens (RFC 9207 issuer), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Consecutive definitive refresh rejections (three mean `needs_reauth`).
    #[serde(default)]
    pub strikes: u32,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_refresh: Option<OffsetDateTime>,
    /// Where the token lifecycle stands (in-flight marker, transient failures).
    #[serde(default, skip_serializing_if = "RefreshState::is_clear")]
    pub refresh: RefreshState,
    /// Who the account is at the provider, so its revocation events find this connection (I18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<ProviderSubject>,
    /// The RFC 7638 thumbprint of the DPoP key the current tokens are bound to (RFC 9449);
    /// `None`: Bearer tokens. A bound token is only ever sent with a proof of that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// The token lifecycle's durable state for one connection (I16, I17).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshState {
    /// Set (durably) before a token request goes out and cleared with its result: found set
    /// at start-up, it means a refresh's outcome was lost, so the provider may already have
    /// rotated the stored refresh token.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub in_flight_since: Option<OffsetDateTime>,
    /// Consecutive transient failures (network, 5xx, 429); never strikes.
    #[serde(default)]
    pub transient_failures: u32,
    /// The last transient failure, while the connection is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Not before this time (backoff, or the provider's Retry-After).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub retry_at: Option<OffsetDateTime>,
    /// The vault record the in-flight refresh seals its answer under, chosen before the
    /// request: after a crash between the vault's commit and the store's, start-up finds the
    /// rotated tokens there and adopts them instead of replaying the old refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_record: Option<String>,
    /// When this API key was flagged overdue for rotation in the audit log (once per key).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub rotation_flagged: Option<OffsetDateTime>,
}

impl RefreshState {
    pub fn is_clear(&self) -> bool {
        *self == Self::default()
    }
}

/// The provider's own ids for the account behind a connection: a GitHub user id, a Slack team
/// and user id, an OpenID Connect `sub`. Identifiers, not credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderSubject {
    /// The config's provider name at connect time.
    pub provider: String,
    /// Slack workspace (`team.id`), for `app_uninstalled` and per-team user ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub profile: Option<String>,
    /// SHA-256 of the agent token, hex; the token itself is shown once and never stored.
    pub token_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProfileRule {
    pub service: String,
    /// Tool-name globs; empty means every tool of the service.
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub id: String,
    pub name: String,
    pub rules: Vec<ProfileRule>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// An OAuth authorization in progress, keyed by the SHA-256 of its `state`. The PKCE
/// verifier is not here: it is sealed in the vault under `verifier_record`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingAuthorization {
    pub state_hash: String,
    pub user_id: String,
    pub service: String,
    pub browser_session_hash: String,
    pub verifier_record: String,
    pub issuer: Option<String>,
    /// The server advertised RFC 9207: a callback without `iss` is refused.
    #[serde(default)]
    pub iss_required: bool,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

/// A single-use login link, keyed by the SHA-256 of its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginLink {
    pub user_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

/// A browser session, keyed by the SHA-256 of its cookie value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}
