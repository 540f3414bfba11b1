//! The admin API on `DATA_DIR/admin.sock`: one JSON request line, one JSON response line.
//! The socket is mode 0600 inside a 0700 folder, and the server also checks the peer's uid
//! (SO_PEERCRED), so only the owner of the data folder can administer it.

pub mod client;
pub mod proto;
pub mod server;
