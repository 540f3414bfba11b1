//! Admin API messages, shared by the server, the CLI and (later) the console.

use serde::{Deserialize, Serialize, Serializer};

use crate::secret::ApiKey;

/// Largest request line the server reads (an API key is at most 8 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    UserAdd {
        name: String,
    },
    UserList,
    UserRemove {
        name: String,
    },
    UserLink {
        name: String,
    },
    ConnectionList {
        user: Option<String>,
    },
    ConnectionRevoke {
        id: String,
    },
    ApikeySet {
        service: String,
        user: String,
        #[serde(serialize_with = "expose_api_key")]
        key: ApiKey,
    },
    AuditList {
        after: u64,
        limit: usize,
    },
    AgentAdd {
        name: String,
        user: String,
        profile: Option<String>,
    },
    AgentList,
    AgentRevoke {
        name: String,
    },
    ProfileAdd {
        name: String,
        allow: Vec<String>,
    },
    ProfileList,
    ProfileRemove {
        name: String,
    },
    AuditVerify,
    /// Refresh an OAuth connection's access token now (the console's action).
    ConnectionRefresh {
        id: String,
    },
    /// Agents with owner, profile name and last seen (never a token or its hash).
    AgentActivity,
    /// Replace a profile's allow rules (`SERVICE` or `SERVICE:TOOL_GLOB`).
    ProfileSet {
        name: String,
        allow: Vec<String>,
    },
    /// The scope audit: per connection granted, needed, exercised and findings.
    ScopesReport,
}

/// The key crosses the owner-only socket once, from the CLI to the server that seals it.
fn expose_api_key<S: Serializer>(key: &ApiKey, s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(key.expose_secret()) {
        Ok(text) => s.serialize_str(text),
        Err(_) => Err(serde::ser::Error::custom("the API key is not UTF-8")),
    }
}

impl Request {
    /// The operation's name, for logs (never its arguments).
    pub fn op(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::UserAdd { .. } => "user_add",
            Self::UserList => "user_list",
            Self::UserRemove { .. } => "user_remove",
            Self::UserLink { .. } => "user_link",
            Self::ConnectionList { .. } => "connection_list",
            Self::ConnectionRevoke { .. } => "connection_revoke",
            Self::ApikeySet { .. } => "apikey_set",
            Self::AuditList { .. } => "audit_list",
            Self::AuditVerify => "audit_verify",
            Self::AgentAdd { .. } => "agent_add",
            Self::AgentList => "agent_list",
            Self::AgentRevoke { .. } => "agent_revoke",
            Self::ProfileAdd { .. } => "profile_add",
            Self::ProfileList => "profile_list",
            Self::ProfileRemove { .. } => "profile_remove",
            Self::ConnectionRefresh { .. } => "connection_refresh",
            Self::AgentActivity => "agent_activity",
            Self::ProfileSet { .. } => "profile_set",
            Self::ScopesReport => "scopes_report",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub data_dir: String,
    pub listen: String,
    pub users: usize,
    pub connections: usize,
    pub audit_entries: u64,
}
