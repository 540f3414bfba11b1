//! A blocking client of the admin socket, for the CLI.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::proto::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no scopegate server is running on this data folder ({0} is absent); start `scopegate serve`"
    )]
    NotRunning(String),
    #[error("cannot reach the admin socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin socket: unexpected response ({0})")]
    Protocol(String),
    /// The server's own error message.
    #[error("{0}")]
    Server(String),
}

pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(socket.display().to_string()));
        }
        Err(source) => {
            return Err(ClientError::Connect {
                path: socket.display().to_string(),
                source,
            });
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = zeroize::Zeroizing::new(
        serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?,
    );
    line.push(b'\n');
    // A server that refuses this peer answers without reading; its answer still explains.
    match stream.write_all(&line) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let mut reader = BufReader::new(stream);
    let mut resp = String::new();
    reader.read_line(&mut resp)?;
    let resp: Response =
        serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if !resp.ok {
        return Err(ClientError::Server(
            resp.error.unwrap_or_else(|| "unknown error".into()),
        ));
    }
    serde_json::from_value(resp.data.unwrap_or(serde_json::Value::Null))
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Whether a server answers on this socket (used to choose between the socket and a direct,
/// read-only open of a stopped data folder).
pub fn is_running(socket: &Path) -> bool {
    call::<serde_json::Value>(socket, &Request::Status).is_ok()
}
