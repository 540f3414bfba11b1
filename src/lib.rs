//! Scopegate: a self-hosted MCP OAuth gateway. Agents call tools on people's accounts through
//! it without ever holding those people's credentials.

pub mod admin;
pub mod agent_token;
pub mod cli;
pub mod coarse_timer;
pub mod config;
pub mod console;
pub mod datadir;
pub mod durable;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod lifecycle;
pub mod oauth;
pub mod passphrase;
pub mod policy;
pub mod proxy;
pub mod scopes;
pub mod secret;
pub mod store;
pub mod vault;
pub mod web;
pub mod webhooks;
