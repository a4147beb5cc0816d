//! `interceptor audit ...`: what an auditor and an operator run.
//!
//! The functions return their output and exit status instead of printing, so the
//! binary only wires them and tests can assert the exact text.

use std::path::{Path, PathBuf};

use super::{AuditConfig, keys, verify};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify a log directory or an evidence package (from `audit export`, as the
    /// .tar file or extracted) offline; exit 0 only when everything verifies.
    Verify {
        /// The log directory (a copy is fine: only the segment files are read), or
        /// an evidence package.
        dir: PathBuf,
        /// The node public key to trust (a file with `ed25519:<hex>`, as printed by
        /// `interceptor audit pubkey`). Without it only integrity is checked.
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Print every record as one JSON line, in chain order (reading does not
    /// verify: run `verify` for that).
    Show {
        /// The log directory.
        dir: PathBuf,
    },
    /// Search the access records (through an index in DIR/index, rebuilt as needed).
    Query {
        /// The log directory.
        dir: PathBuf,
        /// Records at or after this time: RFC 3339, a date, or an age (1h, 30m, 2d).
        #[arg(long)]
        since: Option<String>,
        /// Records at or before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        filter: super::review::FilterArgs,
        /// Only the newest N matching records.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// With each record, what the client received in answer (its recorded
        /// responses, as sent: masked); in JSON a `responses` array.
        #[arg(long)]
        responses: bool,
        #[command(flatten)]
        index: super::review::IndexArgs,
    },
    /// Per-identity access review: targets, operations, decisions, rules, approvals.
    Report {
        /// The log directory.
        dir: PathBuf,
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        index: super::review::IndexArgs,
    },
    /// Write an evidence package (tar): the selected records with the segments,
    /// checkpoints and keys to verify them elsewhere (`audit verify PACKAGE`).
    Export {
        /// The log directory.
        dir: PathBuf,
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        filter: super::review::FilterArgs,
        /// The package file to write.
        #[arg(long)]
        out: PathBuf,
        /// The node key that signs the manifest, when it is not `DIR/node.key`.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print the newest access records and recorded responses (as sent to the
    /// client, after masking), and with -f every new one as it is appended.
    Tail {
        /// The log directory.
        dir: PathBuf,
        /// Keep printing records as they are appended.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        /// How many of the newest records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Poll interval in milliseconds while following.
        #[arg(long, default_value_t = 200, hide = true)]
        poll_ms: u64,
    },
    /// Delete the oldest sealed segments beyond an age or size limit, offline
    /// (the daemon does this itself with `audit.retention`). The removal is
    /// recorded as a retention record signed with the node key, so `verify`
    /// accepts the missing segments. Refused while a daemon writes the log.
    Prune {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Remove segments last written longer ago than this (e.g. 30d, 12h).
        #[arg(long)]
        max_age: Option<String>,
        /// Remove the oldest segments while the log is larger than this
        /// (bytes, or with a unit: 500MiB, 2GB).
        #[arg(long)]
        max_bytes: Option<String>,
        /// The node key, when it is not `DIR/node.key`.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The node name for a new segment header (default: this host's name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Replace the node's audit key: the running daemon records a key
    /// rotation signed by the old key and signs from then on with the new one.
    /// Prints the new public key (as `pubkey` does). Asks the daemon through
    /// its admin socket (root only); when no daemon answers there, `--dir`
    /// rotates the key of a log no daemon is writing.
    RotateKey {
        /// The daemon's admin socket.
        #[arg(long, default_value = crate::admin_socket::DEFAULT_PATH)]
        socket: PathBuf,
        /// The human the rotation is logged for, e.g. `--as alice`.
        #[arg(long = "as")]
        as_name: Option<String>,
        /// Offline: the log directory, used only when no daemon answers on the
        /// socket. Refused while another process writes the log.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Offline: the key file, when it is not `DIR/node.key`.
        #[arg(long, requires = "dir")]
        key_file: Option<PathBuf>,
        /// Offline: the node name for a new segment header (default: this host's name).
        #[arg(long, requires = "dir")]
        node: Option<String>,
    },
    /// Print the node's audit public key.
    Pubkey {
        /// The log directory of the node.
        #[arg(long)]
        dir: PathBuf,
        /// The key file, when it is not `DIR/node.key`.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// Text for stdout and stderr, and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Status 1 and `interceptor: error: …` on stderr.
    fn error(e: impl std::fmt::Display) -> Output {
        Output {
            code: 1,
            stdout: String::new(),
            stderr: format!("interceptor: error: {e}\n"),
        }
    }
}

/// Run a command and print its output; returns the exit status.
pub fn run(cmd: AuditCommand) -> u8 {
    let out = match cmd {
        AuditCommand::Verify { dir, pubkey } => verify(&dir, pubkey.as_deref()),
        AuditCommand::Pubkey { dir, key_file } => pubkey(&dir, key_file.as_deref()),
        AuditCommand::Show { dir } => show(&dir),
        AuditCommand::RotateKey {
            socket,
            as_name,
            dir,
            key_file,
            node,
        } => rotate_key(&socket, as_name, dir.as_deref(), key_file.as_deref(), node),
        AuditCommand::Prune {
            dir,
            max_age,
            max_bytes,
            key_file,
            node,
        } => prune(
            &dir,
            max_age.as_deref(),
            max_bytes.as_deref(),
            key_file.as_deref(),
            node,
        ),
        AuditCommand::Query {
            dir,
            since,
            until,
            filter,
            limit,
            json,
            responses,
            index,
        } => super::review::query(
            &dir,
            since.as_deref(),
            until.as_deref(),
            &filter,
            limit,
            super::review::Shape { json, responses },
            &index,
        ),
        AuditCommand::Report {
            dir,
            since,
            until,
            json,
            index,
        } => super::review::report(&dir, &since, until.as_deref(), json, &index),
        AuditCommand::Export {
            dir,
            since,
            until,
            filter,
            out,
            key_file,
        } => super::review::export(
            &dir,
            &since,
            until.as_deref(),
            &filter,
            &out,
            key_file.as_deref(),
        ),
        AuditCommand::Tail {
            dir,
            follow,
            json,
            lines,
            poll_ms,
        } => {
            let stdout = std::io::stdout();
            match super::review::tail(
                &dir,
                follow,
                json,
                lines,
                std::time::Duration::from_millis(poll_ms.max(10)),
                &mut stdout.lock(),
            ) {
                Ok(()) => return 0,
                Err(e) => Output::error(e),
            }
        }
    };
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    out.code
}

/// `audit verify`: one `OK: ...` line (and details) with status 0, or `FAILED: ...`
/// naming the segment file, byte offset and reason with status 1.
pub fn verify(dir: &Path, pubkey_file: Option<&Path>) -> Output {
    let mut stderr = String::new();
    let trusted = match pubkey_file {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|t| keys::parse_public(&t).map_err(|e| format!("{}: {e}", p.display())))
        {
            Ok(k) => Some(k),
            Err(e) => {
                return Output::error(e);
            }
        },
        None => {
            stderr.push_str(
                "warning: no --pubkey given: signatures are checked against the key the log names, \
                 which shows integrity but not who wrote it\n",
            );
            None
        }
    };
    if super::export::is_package(dir) {
        return super::review::verify_package(dir, trusted.as_ref(), stderr);
    }
    match verify::verify_dir(dir, trusted.as_ref()) {
        Ok(r) => {
            let mut s = format!(
                "OK: {} segments, {} records, {} checkpoints verified\n",
                r.segments, r.records, r.checkpoints
            );
            s.push_str(&format!(
                "segments {}..={}, {} access records, {} key rotations, {} recoveries, {} retention events\n",
                r.first_segment, r.last_segment, r.access_records, r.key_rotations, r.recoveries, r.retention_events
            ));
            let signers: Vec<String> = r.signers.iter().map(keys::public_text_bytes).collect();
            s.push_str(&format!("signed by {}\n", signers.join(" -> ")));
            s.push_str(&format!(
                "chain head {}\n",
                super::format::hex(&r.chain_head)
            ));
            if r.responses > 0 {
                s.push_str(&format!("{} recorded responses\n", r.responses));
            }
            if r.first_segment > 0 && r.pruned_segments > 0 {
                s.push_str(&format!(
                    "segments before {} were removed by signed retention records (expected, not a gap)\n",
                    r.first_segment
                ));
            }
            if r.unsigned_tail > 0 {
                s.push_str(&format!(
                    "note: the last {} records are chained but not yet covered by a checkpoint\n",
                    r.unsigned_tail
                ));
            }
            Output {
                code: 0,
                stdout: s,
                stderr,
            }
        }
        Err(e) => Output {
            code: 1,
            stdout: format!("FAILED: {e}\n"),
            stderr,
        },
    }
}

/// Parse a byte size: a number, optionally with a unit (`KB`, `MiB`, `GB`...).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 1073741824, 500MiB, 2GB)"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("`{s}`: unknown size unit `{unit}`")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `audit prune`: apply retention limits to a log no daemon is writing.
pub fn prune(
    dir: &Path,
    max_age: Option<&str>,
    max_bytes: Option<&str>,
    key_file: Option<&Path>,
    node: Option<String>,
) -> Output {
    if max_age.is_none() && max_bytes.is_none() {
        return Output::error("give --max-age and/or --max-bytes");
    }
    match super::writer::list_segments(dir) {
        Ok(s) if !s.is_empty() => {}
        _ => return Output::error(format!("no audit segments in {}", dir.display())),
    }
    let node = node.unwrap_or_else(host_name);
    let mut cfg = AuditConfig::new(dir, node);
    cfg.key_file = key_file.map(Path::to_path_buf);
    if let Some(a) = max_age {
        match humantime::parse_duration(a) {
            Ok(d) => cfg.retention_max_age = Some(d),
            Err(e) => return Output::error(format!("--max-age `{a}`: {e}")),
        }
    }
    if let Some(b) = max_bytes {
        match parse_bytes(b) {
            Ok(n) => cfg.retention_max_bytes = Some(n),
            Err(e) => return Output::error(format!("--max-bytes: {e}")),
        }
    }
    match super::writer::prune(cfg) {
        Ok(None) => Output {
            code: 0,
            stdout: "nothing to remove: the log is within the limits\n".into(),
            stderr: String::new(),
        },
        Ok(Some(r)) => {
            let segs: Vec<String> = r.removed.iter().map(|s| s.segment.to_string()).collect();
            let bytes: u64 = r.removed.iter().map(|s| s.bytes).sum();
            Output {
                code: 0,
                stdout: format!(
                    "removed {} segments ({}; {bytes} bytes): {}\nrecorded as a signed retention record\n",
                    r.removed.len(),
                    segs.join(", "),
                    r.reason
                ),
                stderr: String::new(),
            }
        }
        Err(e) => Output::error(e),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// `audit rotate-key`: through the running daemon, or offline on `dir` when
/// no daemon answers on `socket`. Prints the new public key like `pubkey`.
pub fn rotate_key(
    socket: &Path,
    as_name: Option<String>,
    dir: Option<&Path>,
    key_file: Option<&Path>,
    node: Option<String>,
) -> Output {
    use crate::approvals::cli::{ClientError, call};
    let req = crate::admin_socket::AdminRequest::AuditRotateKey { as_name };
    let e = match call(socket, &req) {
        Ok(r) => {
            return match r.public_key {
                Some(k) => Output {
                    code: 0,
                    stdout: format!("{k}\n"),
                    stderr: "the running daemon rotated its audit key (recorded in the log, signed by the old key)\n".into(),
                },
                None => Output::error("the daemon answered without a public key"),
            };
        }
        Err(e) => e,
    };
    let (ClientError::NotRunning(_), Some(dir)) = (&e, dir) else {
        return match e {
            ClientError::NotRunning(_) => Output::error(format!(
                "{e}; to rotate the key of a log no daemon is writing, give --dir DIR"
            )),
            e => Output::error(e),
        };
    };
    match super::writer::list_segments(dir) {
        Ok(s) if !s.is_empty() => {}
        _ => return Output::error(format!("no audit segments in {}", dir.display())),
    }
    let mut cfg = AuditConfig::new(dir, node.unwrap_or_else(host_name));
    cfg.key_file = key_file.map(Path::to_path_buf);
    match super::writer::rotate_key_offline(cfg) {
        Ok(k) => Output {
            code: 0,
            stdout: format!("{}\n", keys::public_text(&k)),
            stderr: format!(
                "no daemon answers on {}: rotated the key of {} offline (recorded in the log, signed by the old key)\n",
                socket.display(),
                dir.display()
            ),
        },
        Err(e) => Output::error(e),
    }
}

/// `audit pubkey`: the public half of the node key, as one line.
pub fn pubkey(dir: &Path, key_file: Option<&Path>) -> Output {
    let mut cfg = AuditConfig::new(dir, "");
    cfg.key_file = key_file.map(Path::to_path_buf);
    match keys::load(&cfg.key_path()) {
        Ok(k) => Output {
            code: 0,
            stdout: format!("{}\n", keys::public_text(&k.verifying_key())),
            stderr: String::new(),
        },
        Err(e) => Output::error(e),
    }
}

/// `audit show`: every record as a JSON line `{"segment":..,"seq":..,"record":..}`.
pub fn show(dir: &Path) -> Output {
    let fail = |e: String| Output {
        code: 1,
        stdout: String::new(),
        stderr: format!("{e}\n"),
    };
    let mut names: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                super::format::parse_segment_name(&name).map(|n| (n, e.path()))
            })
            .collect(),
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    names.sort();
    let mut stdout = String::new();
    for (segment, path) in names {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        let header = match super::format::decode_header(&data) {
            Ok(h) => h,
            Err((off, why)) => return fail(format!("{} at byte {off}: {why}", path.display())),
        };
        let mut off = header.len;
        while off < data.len() {
            let frame = match super::format::decode_frame(&data[off..]) {
                Ok(f) => f,
                Err(e) => return fail(format!("{} at byte {off}: {}", path.display(), e.reason())),
            };
            let record = match super::record::decode(frame.body) {
                Ok(r) => r,
                Err(e) => return fail(format!("{} at byte {off}: {e}", path.display())),
            };
            let line =
                serde_json::json!({ "segment": segment, "seq": frame.seq, "record": record });
            stdout.push_str(&line.to_string());
            stdout.push('\n');
            off += frame.len;
        }
    }
    Output {
        code: 0,
        stdout,
        stderr: String::new(),
    }
}
