//! `interceptor status`: the running daemon's open connections per identity,
//! target and protocol (from its admin socket) and the kernel counters and
//! redirected connections (from the pinned maps).
//!
//! Sources: `--pin-dir` or `--config` name the pinned maps; the admin socket
//! is `--socket`, else the configuration's (`admin.socket`), else the default
//! path. A socket given explicitly must answer; a derived one that does not is
//! reported and the kernel part still printed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use crate::{
    admin_socket::{AdminRequest, DEFAULT_PATH},
    approvals::cli::call,
    config::Config,
    live::{self, LiveConn},
    redirect::{self, PinnedView},
};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Daemon configuration (its redirect.pin_dir and admin socket are used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The bpffs pin directory directly.
    #[arg(long, conflicts_with = "config")]
    pin_dir: Option<PathBuf>,
    /// The daemon's admin socket (default: the configuration's, else
    /// /run/interceptor/admin.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Open connections from the admin socket, or why there are none.
fn connections(socket: &Path) -> Result<Vec<LiveConn>, String> {
    call(socket, &AdminRequest::Status)
        .map(|r| r.connections.unwrap_or_default())
        .map_err(|e| e.to_string())
}

fn kernel(dir: &Path, json: bool) -> anyhow::Result<Value> {
    let view = PinnedView::open(dir)
        .with_context(|| format!("no running interceptor found at {}", dir.display()))?;
    let counters: serde_json::Map<String, Value> = redirect::stat_names()
        .iter()
        .map(|(i, n)| (n.to_string(), view.stats.get(*i).into()))
        .collect();
    let links = PinnedView::pinned_links(dir);
    let live = view.conns.len();
    if !json {
        println!("pin dir:             {}", dir.display());
        println!(
            "pinned links:        {}",
            if links.is_empty() {
                "none".into()
            } else {
                links.join(", ")
            }
        );
        println!("live connections:    {live}");
        println!("classified cgroups:  {}", view.cgroups);
        for (i, name) in redirect::stat_names() {
            println!("{name:<21}{}", view.stats.get(i));
        }
    }
    Ok(json!({
        "pin_dir": dir,
        "pinned_links": links,
        "live_connections": live,
        "classified_cgroups": view.cgroups,
        "kernel_counters": counters,
    }))
}

fn print_groups(conns: &[LiveConn]) {
    if conns.is_empty() {
        println!("no open connections");
        return;
    }
    println!(
        "{:<32} {:<20} {:<10} CONNECTIONS",
        "IDENTITY", "TARGET", "PROTOCOL"
    );
    for g in live::group(conns) {
        let identity = if g.identity.is_empty() {
            "(unidentified)"
        } else {
            &g.identity
        };
        println!(
            "{:<32} {:<20} {:<10} {}",
            identity, g.target, g.protocol, g.connections
        );
    }
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let cfg = a.config.as_deref().map(Config::load).transpose()?;
    let pin_dir = a
        .pin_dir
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.redirect.pin_dir.clone()));
    let (socket, explicit) = match (&a.socket, cfg.as_ref().and_then(Config::admin_socket)) {
        (Some(s), _) => (s.clone(), true),
        (None, Some(s)) => (s, false),
        // Only the socket can answer: it must.
        (None, None) => (PathBuf::from(DEFAULT_PATH), pin_dir.is_none()),
    };
    let conns = connections(&socket);
    if let (Err(e), true) = (&conns, explicit) {
        anyhow::bail!("{e}");
    }
    let mut out = json!({});
    match &conns {
        Ok(c) => {
            out["connections_by_identity"] = json!(live::group(c));
            out["open_connections"] = json!(c);
            if !a.json {
                print_groups(c);
            }
        }
        Err(e) => {
            out["admin_socket_error"] = e.clone().into();
            if !a.json {
                println!("daemon connections: unavailable ({e})");
            }
        }
    }
    if let Some(dir) = &pin_dir {
        if !a.json && conns.is_ok() {
            println!();
        }
        let k = kernel(dir, a.json)?;
        if let (Value::Object(o), Value::Object(k)) = (&mut out, k) {
            o.extend(k);
        }
    }
    if a.json {
        println!("{out}");
    }
    Ok(())
}
