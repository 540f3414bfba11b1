//! OAuth 2.1 client side: the callback parser, PKCE and state, token responses, providers and
//! their quirks, discovery (RFC 8414 / OIDC), token exchange and revocation (RFC 7009).

pub mod callback;
pub mod client;
pub mod dpop;
pub mod pkce;
pub mod provider;
pub mod token;
