//! The command line: argument types and dispatch. Admin subcommands are thin clients of the
//! admin socket; `init`, `rekey` and `serve` own the data folder.

mod manage;
mod serve;
mod setup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::datadir::DataDir;

#[derive(Debug, Parser)]
#[command(name = "scopegate", version, about = "Self-hosted MCP OAuth gateway")]
pub struct Cli {
    /// The data folder [default: $XDG_DATA_HOME/scopegate or ~/.local/share/scopegate]
    #[arg(long, global = true, env = "SCOPEGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data folder, the vault and a starter config
    Init(KdfArgs),
    /// Run the gateway
    Serve {
        /// Config file [default: DATA_DIR/scopegate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run in a fresh temporary data folder with a generated passphrase
        #[arg(long)]
        dev: bool,
        /// Override the config's `listen` address (port 0 picks a free port)
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Change the vault passphrase (the server must be stopped)
    Rekey(KdfArgs),
    /// Manage users
    #[command(subcommand)]
    User(UserCmd),
    /// Manage connections to services
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Store API keys for api_key services
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Read and verify the audit log
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Manage agents (the MCP clients that call tools through the gateway)
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Manage permission profiles (which services and tools an agent may use)
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Audit granted scopes against what agents need and use
    #[command(subcommand)]
    Scopes(ScopesCmd),
    /// The admin console (a terminal UI on the running server's admin socket)
    Console {
        /// Scroll lists with the mouse wheel (off by default: capturing the
        /// mouse stops the terminal's own text selection, e.g. of a narrowing link)
        #[arg(long)]
        mouse: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ScopesCmd {
    /// Per connection: granted, needed by allowed tools, exercised, findings and the fix
    Report {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Create an agent for a user; prints its token once, alone on its line
    Add {
        name: String,
        #[arg(long)]
        user: String,
        /// Without a profile the agent may use every service and tool of its user
        #[arg(long)]
        profile: Option<String>,
    },
    /// List agents
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's token at once
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
enum ProfileCmd {
    /// Create a profile: --allow SERVICE or SERVICE:TOOL_GLOB, repeated
    Add {
        name: String,
        #[arg(long, required = true, num_args = 1..)]
        allow: Vec<String>,
    },
    /// List profiles
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a profile no agent uses
    Remove { name: String },
}

#[derive(Debug, Args)]
struct KdfArgs {
    /// Argon2id memory in KiB (at least 19456)
    #[arg(long, default_value_t = crate::vault::KdfParams::DEFAULT.memory_kib)]
    kdf_memory_kib: u32,
    /// Argon2id passes (at least 2)
    #[arg(long, default_value_t = crate::vault::KdfParams::DEFAULT.iterations)]
    kdf_iterations: u32,
    /// Argon2id lanes
    #[arg(long, default_value_t = crate::vault::KdfParams::DEFAULT.parallelism)]
    kdf_parallelism: u32,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Add a user
    Add { name: String },
    /// List users
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user, revoking their connections
    Remove { name: String },
    /// Print a single-use login link (valid 15 minutes) for the user's browser
    Link { name: String },
}

#[derive(Debug, Subcommand)]
enum ConnectionCmd {
    /// List connections
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a connection and delete its sealed credentials
    Revoke { id: String },
    /// Refresh an OAuth connection's tokens now (the same single flight as agents' refreshes)
    Refresh { id: String },
}

#[derive(Debug, Subcommand)]
enum ApikeyCmd {
    /// Store (or rotate) a user's API key for a service; the key is read from stdin
    Set {
        service: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Print audit entries
    List {
        #[arg(long)]
        json: bool,
        /// Keep printing new entries as they are written
        #[arg(long)]
        follow: bool,
        /// Start after this sequence number
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Check the hash chain; exits non-zero naming the first bad entry
    Verify,
}

pub fn run(cli: Cli) -> ExitCode {
    let serving = matches!(cli.command, Command::Serve { .. });
    // The console owns the terminal: its logs would scribble over the screen.
    let quiet = matches!(cli.command, Command::Console { .. });
    if !quiet {
        init_logging(serving);
    }
    let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(DataDir::default_root));
    let result = match cli.command {
        Command::Init(k) => setup::init(&data_dir, k),
        Command::Rekey(k) => setup::rekey(&data_dir, k),
        Command::Serve {
            config,
            dev,
            listen,
        } => serve::serve(data_dir, config, listen, dev),
        Command::User(c) => manage::user(&data_dir, c),
        Command::Connection(c) => manage::connection(&data_dir, c),
        Command::Apikey(c) => manage::apikey(&data_dir, c),
        Command::Audit(c) => manage::audit(&data_dir, c),
        Command::Agent(c) => manage::agent(&data_dir, c),
        Command::Profile(c) => manage::profile(&data_dir, c),
        Command::Scopes(c) => manage::scopes(&data_dir, c),
        Command::Console { mouse } => crate::console::run(&data_dir.socket_path(), mouse),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("scopegate: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}
