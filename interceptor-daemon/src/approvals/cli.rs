//! `interceptor approvals ...`: operators list, approve and deny held
//! operations of the running daemon through its admin socket.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};

use super::{Request, Scope};
use crate::admin_socket::{AdminRequest, AdminResponse, DEFAULT_PATH, needs_root};

#[derive(Args, Debug)]
pub struct SocketArg {
    /// The daemon's admin socket.
    #[arg(long, default_value = DEFAULT_PATH)]
    pub socket: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Requests waiting for a decision (with --all, every request kept).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Let a held operation run; with --for, also later matching ones until the grant expires.
    Approve {
        id: String,
        /// Grant length, e.g. `90s`, `15m`, `1h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_: Option<Duration>,
        /// What the grant covers (needs --for): the same statement text, or
        /// anything the same rule holds on the target.
        #[arg(long, value_enum, requires = "for_")]
        scope: Option<Scope>,
        /// The human the decision is recorded for, e.g. `--as alice`.
        #[arg(long = "as")]
        as_name: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Refuse a held operation; the client gets an error with the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long = "as")]
        as_name: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the interceptor daemon is not running, or serves no admin socket at {0} (give --socket, or configure `approvals` / `admin.socket`)"
    )]
    NotRunning(PathBuf),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon sent an unreadable answer: {0}")]
    Answer(String),
    #[error("{0}")]
    Refused(String),
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// One request/response exchange with the daemon.
pub fn call(socket: &Path, req: &AdminRequest) -> Result<AdminResponse, ClientError> {
    let io_err = |source| ClientError::Io {
        path: socket.into(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.into())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(needs_root(euid())),
        _ => io_err(e),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Answer(e.to_string()))?;
    line.push(b'\n');
    // A refused caller is answered without the daemon reading the request:
    // the write may then fail while the answer is already waiting.
    let written = s.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(s).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io_err)?;
        read.map_err(io_err)?;
    }
    let resp: AdminResponse =
        serde_json::from_str(&answer).map_err(|e| ClientError::Answer(e.to_string()))?;
    match resp.error {
        Some(e) if !resp.ok => Err(ClientError::Refused(e)),
        _ => Ok(resp),
    }
}

fn age(created_ns: u64) -> String {
    let now = crate::audit::record::now_ns();
    let secs = now.saturating_sub(created_ns) / 1_000_000_000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn print_table(rs: &[Request]) {
    if rs.is_empty() {
        println!("no approval requests");
        return;
    }
    println!(
        "{:<10} {:<10} {:<10} {:<24} {:<16} {:<20} STATEMENT",
        "ID", "STATE", "AGE", "IDENTITY", "TARGET", "RULE"
    );
    for r in rs {
        println!(
            "{:<10} {:<10} {:<10} {:<24} {:<16} {:<20} {}",
            r.id,
            r.state.as_str(),
            age(r.created_ns),
            r.identity,
            r.target,
            r.rule,
            r.operation
        );
    }
}

/// Runs a command; returns the exit code (0 ok, 1 refused or failed).
pub fn run(cmd: ApprovalsCommand) -> u8 {
    match execute(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("interceptor: {e}");
            1
        }
    }
}

fn execute(cmd: ApprovalsCommand) -> Result<(), ClientError> {
    match cmd {
        ApprovalsCommand::List { json, all, socket } => {
            let resp = call(&socket.socket, &AdminRequest::List { all })?;
            let rs = resp.requests.unwrap_or_default();
            if json {
                let text =
                    serde_json::to_string(&rs).map_err(|e| ClientError::Answer(e.to_string()))?;
                println!("{text}");
            } else {
                print_table(&rs);
            }
        }
        ApprovalsCommand::Approve {
            id,
            for_,
            scope,
            as_name,
            socket,
        } => {
            let resp = call(
                &socket.socket,
                &AdminRequest::Approve {
                    id,
                    for_secs: for_.map(|d| d.as_secs().max(1)),
                    scope,
                    as_name,
                },
            )?;
            if let Some(r) = resp.request {
                match &r.grant {
                    Some(g) => println!(
                        "approved {} by {}; grant (scope {}) for {} until it expires",
                        r.id,
                        r.decided_by.as_deref().unwrap_or("?"),
                        match g.scope {
                            Scope::Statement => "statement",
                            Scope::Target => "target",
                        },
                        r.identity
                    ),
                    None => println!(
                        "approved {} by {}",
                        r.id,
                        r.decided_by.as_deref().unwrap_or("?")
                    ),
                }
            }
        }
        ApprovalsCommand::Deny {
            id,
            reason,
            as_name,
            socket,
        } => {
            let resp = call(
                &socket.socket,
                &AdminRequest::Deny {
                    id,
                    reason,
                    as_name,
                },
            )?;
            if let Some(r) = resp.request {
                println!(
                    "denied {} by {}",
                    r.id,
                    r.decided_by.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}
