//! Admin subcommands: thin clients of the admin socket. `audit list|verify` also read a
//! stopped data folder (or a copy) directly, read-only.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{AgentCmd, ApikeyCmd, AuditCmd, ConnectionCmd, ProfileCmd, ScopesCmd, UserCmd};
use crate::admin::client::{self, call};
use crate::admin::proto::Request;
use crate::datadir::DataDir;
use crate::gateway::ConnectionView;
use crate::secret::ApiKey;
use crate::store::audit::{Entry, Verified};
use crate::store::{OfflineStore, User};

pub fn user(dir: &DataDir, cmd: UserCmd) -> anyhow::Result<()> {
    let socket = dir.socket_path();
    match cmd {
        UserCmd::Add { name } => {
            let u: User = call(&socket, &Request::UserAdd { name })?;
            println!("added user {} ({})", u.name, u.id);
        }
        UserCmd::List { json } => {
            let users: Vec<User> = call(&socket, &Request::UserList)?;
            if json {
                println!("{}", serde_json::to_string(&users)?);
            } else {
                for u in users {
                    println!("{}\t{}\t{}", u.name, u.id, rfc3339(u.created));
                }
            }
        }
        UserCmd::Link { name } => {
            let out: serde_json::Value = call(&socket, &Request::UserLink { name })?;
            // Alone on its line, for scripts.
            println!("{}", out["url"].as_str().unwrap_or_default());
        }
        UserCmd::Remove { name } => {
            call::<serde_json::Value>(&socket, &Request::UserRemove { name: name.clone() })?;
            println!("removed user {name}");
        }
    }
    Ok(())
}

pub fn connection(dir: &DataDir, cmd: ConnectionCmd) -> anyhow::Result<()> {
    let socket = dir.socket_path();
    match cmd {
        ConnectionCmd::List { json, user } => {
            let list: Vec<ConnectionView> = call(&socket, &Request::ConnectionList { user })?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!("ID\tUSER\tSERVICE\tKIND\tSTATUS\tFINGERPRINT\tNOTE");
                for c in list {
                    let note = match (&c.status_reason, c.rotation_due) {
                        (_, true) => "rotation due".to_owned(),
                        (Some(r), false) => crate::store::audit::escape_untrusted(r),
                        (None, false) => String::new(),
                    };
                    println!(
                        "{}\t{}\t{}\t{:?}\t{}\t{}\t{}",
                        c.id,
                        c.user,
                        c.service,
                        c.kind,
                        c.status.as_str(),
                        c.secret_fingerprint.as_deref().unwrap_or("-"),
                        note
                    );
                }
            }
        }
        ConnectionCmd::Revoke { id } => {
            call::<serde_json::Value>(&socket, &Request::ConnectionRevoke { id: id.clone() })?;
            println!("revoked connection {id}");
        }
        ConnectionCmd::Refresh { id } => {
            call::<serde_json::Value>(&socket, &Request::ConnectionRefresh { id: id.clone() })?;
            println!("refreshed connection {id}");
        }
    }
    Ok(())
}

pub fn agent(dir: &DataDir, cmd: AgentCmd) -> anyhow::Result<()> {
    let socket = dir.socket_path();
    match cmd {
        AgentCmd::Add {
            name,
            user,
            profile,
        } => {
            let out: serde_json::Value = call(
                &socket,
                &Request::AgentAdd {
                    name,
                    user,
                    profile,
                },
            )?;
            eprintln!("the agent token is shown once; store it in the MCP client's configuration");
            println!("{}", out["token"].as_str().unwrap_or_default());
        }
        AgentCmd::List { json } => {
            let agents: Vec<crate::store::Agent> = call(&socket, &Request::AgentList)?;
            if json {
                println!("{}", serde_json::to_string(&agents)?);
            } else {
                for a in agents {
                    let state = if a.revoked.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{}\t{}",
                        a.name,
                        a.id,
                        a.profile.as_deref().unwrap_or("-"),
                        state
                    );
                }
            }
        }
        AgentCmd::Revoke { name } => {
            call::<serde_json::Value>(&socket, &Request::AgentRevoke { name: name.clone() })?;
            println!("revoked agent {name}");
        }
    }
    Ok(())
}

pub fn profile(dir: &DataDir, cmd: ProfileCmd) -> anyhow::Result<()> {
    let socket = dir.socket_path();
    match cmd {
        ProfileCmd::Add { name, allow } => {
            let p: crate::store::Profile = call(&socket, &Request::ProfileAdd { name, allow })?;
            println!("added profile {} ({})", p.name, p.id);
        }
        ProfileCmd::List { json } => {
            let profiles: Vec<crate::store::Profile> = call(&socket, &Request::ProfileList)?;
            if json {
                println!("{}", serde_json::to_string(&profiles)?);
            } else {
                for p in profiles {
                    let rules: Vec<String> = p.rules.iter().map(crate::policy::describe).collect();
                    println!("{}\t{}", p.name, rules.join(" "));
                }
            }
        }
        ProfileCmd::Remove { name } => {
            call::<serde_json::Value>(&socket, &Request::ProfileRemove { name: name.clone() })?;
            println!("removed profile {name}");
        }
    }
    Ok(())
}

pub fn apikey(dir: &DataDir, cmd: ApikeyCmd) -> anyhow::Result<()> {
    let ApikeyCmd::Set { service, user } = cmd;
    let key = read_key()?;
    let out: serde_json::Value = call(
        &dir.socket_path(),
        &Request::ApikeySet {
            service: service.clone(),
            user: user.clone(),
            key,
        },
    )?;
    println!(
        "stored the API key for {user} on {service} (connection {}, fingerprint {})",
        out["connection"].as_str().unwrap_or("?"),
        out["fingerprint"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// The key comes from stdin (never argv); on a terminal it is asked for without echo.
fn read_key() -> anyhow::Result<ApiKey> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let k = zeroize::Zeroizing::new(
            rpassword::prompt_password("API key: ").context("cannot read the key")?,
        );
        return Ok(ApiKey::from_input(k.as_bytes().to_vec()));
    }
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    stdin
        .lock()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .context("cannot read the key from stdin")?;
    Ok(ApiKey::from_input(buf.to_vec()))
}

pub fn audit(dir: &DataDir, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify => {
            let v = verify(dir)?;
            println!(
                "audit log intact: {} entries, head {}",
                v.entries, v.head_hash
            );
        }
        AuditCmd::List {
            json,
            follow,
            after,
        } => {
            let mut last = after;
            let mut all = Vec::new();
            loop {
                let batch = audit_page(dir, last)?;
                if let Some(e) = batch.last() {
                    last = e.seq;
                }
                let done = batch.len() < PAGE;
                for e in batch {
                    if json && !follow {
                        all.push(e);
                    } else if json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        println!("{}", e.to_line());
                    }
                }
                if done {
                    if !follow {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            if json && !follow {
                println!("{}", serde_json::to_string(&all)?);
            }
        }
    }
    Ok(())
}

const PAGE: usize = 1000;

fn audit_page(dir: &DataDir, after: u64) -> anyhow::Result<Vec<Entry>> {
    let socket = dir.socket_path();
    if client::is_running(&socket) {
        return Ok(call(&socket, &Request::AuditList { after, limit: PAGE })?);
    }
    Ok(offline(dir)?.audit_after(after, PAGE)?)
}

fn verify(dir: &DataDir) -> anyhow::Result<Verified> {
    let socket = dir.socket_path();
    if client::is_running(&socket) {
        return Ok(call(&socket, &Request::AuditVerify)?);
    }
    // With the passphrase at hand (and the vault beside the store), check the head's HMAC too.
    let key = match crate::passphrase::from_env(crate::passphrase::Purpose::Unlock)? {
        Some(p) if dir.vault_path().exists() => Some(
            crate::vault::Vault::audit_head_key_offline(&dir.vault_path(), &p)
                .context("cannot derive the audit key from the vault")?,
        ),
        _ => None,
    };
    Ok(offline(dir)?.verify_audit(key.as_ref())?)
}

fn offline(dir: &DataDir) -> anyhow::Result<OfflineStore> {
    let path = dir.store_path();
    if !path.exists() {
        bail!(
            "no store at {} (is this a scopegate data folder?)",
            path.display()
        );
    }
    OfflineStore::open(&path).with_context(|| format!("cannot open {} read-only", path.display()))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn scopes(dir: &DataDir, cmd: ScopesCmd) -> anyhow::Result<()> {
    let ScopesCmd::Report { json } = cmd;
    let report: Vec<crate::scopes::ConnectionScopes> =
        call(&dir.socket_path(), &Request::ScopesReport)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let esc = crate::store::audit::escape_untrusted;
    for c in &report {
        println!(
            "{} {}/{} {}{}",
            c.connection,
            esc(&c.user),
            esc(&c.service),
            c.status,
            if c.over_scoped() { " OVER-SCOPED" } else { "" }
        );
        println!("  granted:   {}", esc(&c.granted.join(" ")));
        match &c.needed {
            Some(n) => println!("  needed:    {}", esc(&n.join(" "))),
            None => println!(
                "  needed:    unknown (add [services.{}.tools] to the config)",
                esc(&c.service)
            ),
        }
        for e in &c.exercised {
            println!(
                "  exercised: {} (last {}, {} calls)",
                esc(&e.scope),
                rfc3339(e.last_used),
                e.calls
            );
        }
        for f in &c.findings {
            let instead = if f.instead.is_empty() {
                String::new()
            } else {
                format!(" ({} serves)", esc(&f.instead.join(" ")))
            };
            println!(
                "  finding:   {} {}{instead}",
                esc(&f.scope),
                f.kind.as_str()
            );
        }
        if let (Some(n), Some(url)) = (&c.narrowed, &c.fix_url) {
            println!(
                "  fix:       reconnect asking only for {}: {url}",
                esc(&n.join(" "))
            );
        }
    }
    Ok(())
}
