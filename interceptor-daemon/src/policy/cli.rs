//! `interceptor policy ...`: what security engineers use to write and check
//! policy before it enforces anything, and to change the policy of the
//! running daemon (`apply`, `rollback`, `history`, through its admin socket).
//! Every read command takes `--json`.
//!
//! `show`, `diff` and `test` read the policy from `--policy FILE`, from
//! `--config FILE` (the running daemon's policy when that configuration's
//! admin socket answers, else the configuration's own), or from the running
//! daemon (`--socket`, default [`crate::admin_socket::DEFAULT_PATH`]) when
//! neither is given.
//!
//! Exit status of `policy test`: 0 allow, 1 deny, 3 require approval;
//! 2 for usage errors and invalid policies (also `validate` and `apply`);
//! `apply`, `rollback`, `history`: 1 when the daemon refuses or is unreachable.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{
    Action, Context, Decision, Policy, Rule,
    control::VersionInfo,
    protocols::{HttpRequest, RedisOperation},
    replay, store,
};
use crate::{
    admin_socket::{AdminRequest, AdminResponse, DEFAULT_PATH},
    approvals::cli::{ClientError, SocketArg, call},
    config::Config,
    sql,
};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy file: exit 0 when valid, 2 (with file, line and column) when not.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Decide one operation against a policy and explain the decision
    /// (exit 0 allow, 1 deny, 3 require approval, 2 usage error).
    Test {
        #[command(flatten)]
        source: Source,
        /// `namespace/service-account`; omitted: an unidentified client.
        #[arg(long)]
        identity: Option<String>,
        /// Target name as in the configuration.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        op: Operation,
        /// The request's Host (for `--http`), without port.
        #[arg(long)]
        host: Option<String>,
        /// Decide at this time (RFC 3339) instead of now, for time-bounded rules
        /// (`--sql` only).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the rules of a policy in precedence terms.
    Show {
        #[command(flatten)]
        source: Source,
        #[arg(long)]
        json: bool,
    },
    /// Rules a candidate policy adds, removes or changes (by rule id).
    Diff {
        /// The candidate policy file.
        file: PathBuf,
        /// The policy to compare against (what enforces now).
        #[command(flatten)]
        against: Source,
        #[arg(long)]
        json: bool,
    },
    /// Print the policy's JSON Schema.
    Schema,
    /// Install a policy file in the running daemon as a new version (root
    /// only): validated by the daemon (exit 2 with file:line:column when
    /// invalid; the old policy keeps enforcing), recorded with you as actor.
    Apply {
        file: PathBuf,
        /// The human the change is recorded for, e.g. `--as alice`.
        #[arg(long = "as")]
        as_name: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// The running daemon's policy versions: version, time, actor, source, digest.
    History {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Apply an earlier version's text again, as a new version (root only).
    Rollback {
        version: u64,
        #[arg(long = "as")]
        as_name: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Replay the statements recorded in an audit log against a candidate
    /// policy: what would newly be denied or allowed, per identity and rule.
    Simulate {
        /// The candidate policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The audit log directory.
        #[arg(long)]
        audit: PathBuf,
        /// Only records from this time on: RFC 3339 or an age such as `24h`.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Propose the least-privilege policy (YAML) that allows exactly what each
    /// identity was seen doing in an audit log.
    Learn {
        /// The audit log directory.
        #[arg(long)]
        audit: PathBuf,
        /// Only records from this time on: RFC 3339 or an age such as `7d`.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Where a policy comes from: a policy file, a daemon configuration, or the
/// running daemon.
#[derive(Args, Debug)]
#[group(required = false, multiple = false)]
pub struct Source {
    /// A policy file (`default:` and `rules:` at the top level).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A daemon configuration: the running daemon's policy if its admin
    /// socket answers, else the configuration's inline policy or `policy_file`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The running daemon's admin socket (the default source, at
    /// /run/interceptor/admin.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// The operation `policy test` decides: exactly one of them.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Operation {
    /// The SQL text, as the client would send it (several statements allowed).
    #[arg(long)]
    sql: Option<String>,
    /// An HTTP request line without version: `'GET /v1/orders?id=1'`.
    #[arg(long)]
    http: Option<String>,
    /// A Redis command as redis-cli would send it inline: `'GET session:1'`
    /// (arguments split on spaces, quotes as redis-server reads them).
    #[arg(long)]
    redis: Option<String>,
}

/// A policy and, when it came from the daemon, the version in force.
struct Loaded {
    policy: Policy,
    running: Option<VersionInfo>,
}

/// The running daemon's policy in force.
fn running(socket: &Path) -> Result<Loaded, ClientError> {
    let resp = call(socket, &AdminRequest::PolicyShow)?;
    let info = resp
        .policy
        .ok_or_else(|| ClientError::Answer("no policy in the answer".into()))?;
    let policy = Policy::parse(info.text.as_deref().unwrap_or(""))
        .map_err(|e| ClientError::Answer(format!("the daemon's policy: {e}")))?;
    Ok(Loaded {
        policy,
        running: Some(info),
    })
}

impl Source {
    fn load(&self) -> Result<Loaded, String> {
        let offline = |policy| Loaded {
            policy,
            running: None,
        };
        match (&self.policy, &self.config, &self.socket) {
            (Some(p), _, _) => store::load_file(p)
                .map(|(p, _)| offline(p))
                .map_err(|e| e.to_string()),
            (None, Some(c), _) => {
                let cfg = Config::load(c).map_err(|e| e.to_string())?;
                if let Some(socket) = cfg.admin_socket() {
                    match running(&socket) {
                        Ok(l) => return Ok(l),
                        Err(e) => eprintln!(
                            "interceptor: note: the configuration's policy, not the running daemon's ({e})"
                        ),
                    }
                }
                Ok(offline(cfg.policy))
            }
            (None, None, socket) => running(socket.as_deref().unwrap_or(Path::new(DEFAULT_PATH)))
                .map_err(|e| {
                    format!("{e}; or give the policy with --policy FILE or --config FILE")
                }),
        }
    }
}

/// Runs a policy command; returns the exit status.
pub fn run(cmd: PolicyCommand) -> u8 {
    match cmd {
        PolicyCommand::Validate { file, json } => validate(&file, json),
        PolicyCommand::Test {
            source,
            identity,
            target,
            op,
            host,
            at,
            json,
        } => {
            if at.is_some() && op.sql.is_none() {
                return usage("--at applies to --sql only");
            }
            if host.is_some() && op.http.is_none() {
                return usage("--host applies to --http only");
            }
            let now = match at.as_deref().map(humantime::parse_rfc3339_weak) {
                None => SystemTime::now(),
                Some(Ok(t)) => t,
                Some(Err(e)) => return usage(&format!("--at: not an RFC 3339 time: {e}")),
            };
            let policy = match source.load() {
                Ok(p) => p.policy,
                Err(e) => return usage(&e),
            };
            let ctx = Context {
                identity: identity.as_deref(),
                target: &target,
            };
            match (&op.sql, &op.http, &op.redis) {
                (Some(sql), _, _) => test(&policy, identity.as_deref(), &target, sql, now, json),
                (None, Some(line), _) => match test_http(&policy, &ctx, line, host.as_deref()) {
                    Ok((d, operation)) => report(&d, &ctx, &operation, json),
                    Err(e) => usage(&e),
                },
                (None, None, Some(cmd)) => match test_redis(&policy, &ctx, cmd) {
                    Ok((d, operation)) => report(&d, &ctx, &operation, json),
                    Err(e) => usage(&e),
                },
                (None, None, None) => usage("give --sql, --http or --redis"),
            }
        }
        PolicyCommand::Show { source, json } => match source.load() {
            Ok(p) => {
                show(&p.policy, p.running.as_ref(), json);
                0
            }
            Err(e) => usage(&e),
        },
        PolicyCommand::Apply {
            file,
            as_name,
            socket,
            json,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return usage(&format!("{}: cannot read: {e}", file.display())),
            };
            let req = AdminRequest::PolicyApply {
                text,
                path: Some(file.display().to_string()),
                as_name,
            };
            admin(&socket.socket, &req, json, |r| {
                match (&r.policy, r.unchanged) {
                    (Some(v), true) => println!(
                        "unchanged: version {} (sha256 {}) already enforces this policy",
                        v.version,
                        short(&v.digest)
                    ),
                    (Some(v), false) => println!(
                        "applied: policy version {} (sha256 {}) by {}",
                        v.version,
                        short(&v.digest),
                        v.actor
                    ),
                    (None, _) => println!("applied"),
                }
            })
        }
        PolicyCommand::Rollback {
            version,
            as_name,
            socket,
            json,
        } => admin(
            &socket.socket,
            &AdminRequest::PolicyRollback { version, as_name },
            json,
            |r| match (&r.policy, r.unchanged) {
                (Some(v), true) => println!(
                    "unchanged: version {version}'s policy already enforces (as version {})",
                    v.version
                ),
                (Some(v), false) => println!(
                    "rolled back: version {version}'s policy enforces as version {} (by {})",
                    v.version, v.actor
                ),
                (None, _) => println!("rolled back"),
            },
        ),
        PolicyCommand::History { socket, json } => {
            admin(&socket.socket, &AdminRequest::PolicyHistory, json, |r| {
                print_history(r.versions.as_deref().unwrap_or_default())
            })
        }
        PolicyCommand::Diff {
            file,
            against,
            json,
        } => {
            let new = match store::load_file(&file) {
                Ok((p, _)) => p,
                Err(e) => return usage(&e.to_string()),
            };
            match against.load() {
                Ok(old) => {
                    diff(&old.policy, old.running.as_ref(), &new, json);
                    0
                }
                Err(e) => usage(&e),
            }
        }
        PolicyCommand::Schema => {
            println!("{}", schema());
            0
        }
        PolicyCommand::Simulate {
            policy,
            audit,
            since,
            json,
        } => {
            let candidate = match store::load_file(&policy) {
                Ok((p, _)) => p,
                Err(e) => return usage(&e.to_string()),
            };
            let observed = match observed(&audit, since.as_deref()) {
                Ok(o) => o,
                Err(e) => return usage(&e),
            };
            let sim = replay::simulate(&candidate, &observed, SystemTime::now());
            print_simulation(&sim, json);
            0
        }
        PolicyCommand::Learn { audit, since } => match observed(&audit, since.as_deref()) {
            Ok(o) => {
                print!("{}", replay::learn(&o));
                0
            }
            Err(e) => usage(&e),
        },
    }
}

/// `--since`: an RFC 3339 time or an age (`90m`, `24h`, `7d`).
pub fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s)
        .map_err(|e| format!("--since `{s}`: neither an RFC 3339 time nor an age: {e}"))?;
    SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| format!("--since `{s}`: too far back"))
}

/// PostgreSQL and MySQL statement decisions recorded in an audit log directory.
fn observed(dir: &Path, since: Option<&str>) -> Result<Vec<replay::Observed>, String> {
    use crate::audit::{Decision as Recorded, Protocol, Record};
    let since_ns = match since {
        None => 0,
        Some(s) => parse_since(s)?
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let records =
        crate::audit::verify::read_records(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(records
        .into_iter()
        .filter_map(|(_, _, r)| match r {
            Record::Access(a) => Some(a),
            _ => None,
        })
        .filter(|r| {
            r.time_ns >= since_ns
                && matches!(r.protocol, Protocol::Postgres | Protocol::Mysql)
                && !r.operation.starts_with("connection to ")
        })
        .filter_map(|r| {
            let rule = r.rule_id.clone()?;
            // Refusals no policy decides (a MySQL command the proxy cannot
            // vouch for) are not statements to replay.
            if rule == "protocol" {
                return None;
            }
            let dialect = match r.protocol {
                Protocol::Mysql => replay::Dialect::Mysql,
                _ => replay::Dialect::Postgres,
            };
            let identity = (!r.identity.namespace.is_empty()
                || !r.identity.service_account.is_empty())
            .then(|| format!("{}/{}", r.identity.namespace, r.identity.service_account));
            Some(replay::Observed {
                identity,
                target: r.target,
                operation: r.operation,
                dialect,
                ran: matches!(
                    r.decision,
                    Recorded::Allow | Recorded::AllowMasked | Recorded::Approved
                ),
                rule,
            })
        })
        .collect())
}

fn print_simulation(sim: &replay::Simulation, json: bool) {
    if json {
        println!("{}", serde_json::to_string(sim).unwrap_or_default());
        return;
    }
    println!(
        "{} statements replayed: {} unchanged, {} decided by another rule, {} newly denied, {} newly allowed",
        sim.statements, sim.unchanged, sim.rule_changed, sim.newly_denied, sim.newly_allowed
    );
    if sim.not_replayable > 0 {
        println!(
            "{} recorded without their text (<unparsable statement>): not re-decided, their recorded outcome stands",
            sim.not_replayable
        );
    }
    for c in &sim.changes {
        println!(
            "{:<13} {:>5}x  {} on {}: {}  (was {} by {}, now {} by {})",
            if c.now == "deny" {
                "NEWLY DENIED"
            } else {
                "NEWLY ALLOWED"
            },
            c.count,
            c.identity.as_deref().unwrap_or("(unidentified)"),
            c.target,
            c.operation,
            c.was,
            c.was_rule,
            c.now,
            c.now_rule
        );
    }
}

fn usage(e: &str) -> u8 {
    eprintln!("interceptor: {e}");
    2
}

/// The policy's JSON Schema (draft 2020-12), as published in
/// `config/policy.schema.json`.
pub fn schema() -> String {
    let s = schemars::schema_for!(Policy);
    serde_json::to_string_pretty(&s).unwrap_or_default()
}

fn validate(file: &Path, json: bool) -> u8 {
    match store::load_file(file) {
        Ok((p, digest)) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": true, "file": file, "rules": p.rules.len(),
                           "default": p.default.as_str(), "digest": digest})
                );
            } else {
                println!(
                    "{}: valid ({} rules, default {})",
                    file.display(),
                    p.rules.len(),
                    p.default.as_str()
                );
            }
            0
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": false, "file": file, "error": e.to_string()})
                );
            } else {
                eprintln!("{e}");
            }
            2
        }
    }
}

fn statement_json(s: &sql::StatementInfo, text: &str) -> Value {
    json!({
        "text": text.get(s.span.clone()).unwrap_or("").trim(),
        "kind": format!("{:?}", s.kind).to_lowercase(),
        "tables": s.tables.iter().map(|t| t.table.parts.join(".")).collect::<Vec<_>>(),
        "columns": s.columns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "functions": s.functions.iter().map(|f| f.parts.join(".")).collect::<Vec<_>>(),
        "flags": s.flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>(),
        "error": s.error,
    })
}

fn test(
    policy: &Policy,
    identity: Option<&str>,
    target: &str,
    text: &str,
    now: SystemTime,
    json: bool,
) -> u8 {
    let c = sql::classify(text);
    let ctx = Context { identity, target };
    let d = policy.decide_statements_at(&ctx, &c.statements, now);
    if json {
        println!(
            "{}",
            json!({
                "action": d.action.as_str(),
                "rule": d.rule,
                "reason": d.reason,
                "identity": identity,
                "target": target,
                "statements": c.statements.iter().map(|s| statement_json(s, text)).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("{}  rule {}: {}", d.action.as_str(), d.rule, d.reason);
        for (i, s) in c.statements.iter().enumerate() {
            let v = statement_json(s, text);
            println!(
                "  statement {}: {} on [{}]{}",
                i + 1,
                v["kind"].as_str().unwrap_or(""),
                s.tables
                    .iter()
                    .map(|t| t.table.parts.join("."))
                    .collect::<Vec<_>>()
                    .join(", "),
                s.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    exit_for(d.action)
}

/// `policy test` exit status for an action.
pub fn exit_for(a: Action) -> u8 {
    match a {
        Action::Allow | Action::Mask => 0,
        Action::Deny => 1,
        Action::RequireApproval => 3,
    }
}

fn globs(g: &[super::NameGlob]) -> Vec<String> {
    g.iter().map(|g| g.pattern.clone()).collect()
}

fn rule_json(r: &Rule) -> Value {
    json!({
        "id": r.id,
        "action": r.action.as_str(),
        "identities": globs(&r.identities),
        "targets": globs(&r.targets),
        "sql": {
            "kinds": r.sql.kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect::<Vec<_>>(),
            "tables": globs(&r.sql.tables),
            "functions": globs(&r.sql.functions),
            "columns": r.sql.columns.iter().map(|c| c.pattern.clone()).collect::<Vec<_>>(),
            "risky": r.sql.risky,
        },
        "valid_from": r.valid_from.map(|t| t.to_string()),
        "valid_until": r.valid_until.map(|t| t.to_string()),
        "specificity": r.specificity(),
        "description": r.description,
    })
}

fn or_any(v: &[String]) -> String {
    if v.is_empty() {
        "*".into()
    } else {
        v.join(",")
    }
}

/// `version`, without the text, for JSON output.
fn version_json(v: Option<&VersionInfo>) -> Value {
    v.map(|v| {
        json!({"version": v.version, "time": v.time, "actor": v.actor,
               "source": v.source, "digest": v.digest})
    })
    .unwrap_or(Value::Null)
}

fn version_line(v: &VersionInfo) -> String {
    format!(
        "running policy version {} (sha256 {}) since {} by {}, source {}",
        v.version,
        short(&v.digest),
        v.time,
        v.actor,
        v.source
    )
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn show(p: &Policy, running: Option<&VersionInfo>, json: bool) {
    if json {
        println!(
            "{}",
            json!({"default": p.default.as_str(),
                   "rules": p.rules.iter().map(rule_json).collect::<Vec<_>>(),
                   "running": version_json(running)})
        );
        return;
    }
    if let Some(v) = running {
        println!("{}", version_line(v));
    }
    println!("default: {}", p.default.as_str());
    println!(
        "{:<24} {:<7} {:<24} {:<16} {:<32} {:<5} WINDOW",
        "RULE", "ACTION", "IDENTITIES", "TARGETS", "SQL", "SPEC"
    );
    for r in &p.rules {
        let sql = format!(
            "{} on {}{}{}",
            or_any(
                &r.sql
                    .kinds
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect::<Vec<_>>()
            ),
            or_any(&globs(&r.sql.tables)),
            if r.sql.functions.is_empty() {
                String::new()
            } else {
                format!(" fn {}", globs(&r.sql.functions).join(","))
            },
            if r.sql.columns.is_empty() {
                String::new()
            } else {
                let cols: Vec<&str> = r.sql.columns.iter().map(|c| c.pattern.as_str()).collect();
                format!(" columns {}", cols.join(","))
            }
        );
        let window = match (r.valid_from, r.valid_until) {
            (None, None) => "always".to_string(),
            (f, u) => format!(
                "{} .. {}",
                f.map(|t| t.to_string()).unwrap_or_default(),
                u.map(|t| t.to_string()).unwrap_or_default()
            ),
        };
        println!(
            "{:<24} {:<7} {:<24} {:<16} {:<32} {:<5} {}",
            r.id,
            r.action.as_str(),
            or_any(&globs(&r.identities)),
            or_any(&globs(&r.targets)),
            sql,
            r.specificity(),
            window
        );
    }
}

fn diff(old: &Policy, running: Option<&VersionInfo>, new: &Policy, json: bool) {
    let o: BTreeMap<&str, Value> = old
        .rules
        .iter()
        .map(|r| (r.id.as_str(), rule_json(r)))
        .collect();
    let n: BTreeMap<&str, Value> = new
        .rules
        .iter()
        .map(|r| (r.id.as_str(), rule_json(r)))
        .collect();
    let added: Vec<&str> = n.keys().filter(|k| !o.contains_key(*k)).copied().collect();
    let removed: Vec<&str> = o.keys().filter(|k| !n.contains_key(*k)).copied().collect();
    let changed: Vec<&str> = n
        .iter()
        .filter(|(k, v)| o.get(*k).is_some_and(|ov| ov != *v))
        .map(|(k, _)| *k)
        .collect();
    let default_changed = old.default != new.default;
    if json {
        println!(
            "{}",
            json!({"added": added, "removed": removed, "changed": changed,
                   "default": {"old": old.default.as_str(), "new": new.default.as_str()},
                   "against": version_json(running)})
        );
        return;
    }
    if let Some(v) = running {
        println!("against the {}", version_line(v));
    }
    if default_changed {
        println!(
            "~ default: {} -> {}",
            old.default.as_str(),
            new.default.as_str()
        );
    }
    for k in &added {
        println!("+ {k}: {}", n[k]);
    }
    for k in &removed {
        println!("- {k}: {}", o[k]);
    }
    for k in &changed {
        println!("~ {k}:\n    was {}\n    now {}", o[k], n[k]);
    }
    if added.is_empty() && removed.is_empty() && changed.is_empty() && !default_changed {
        println!("no changes");
    }
}

/// One admin socket exchange for `apply`, `rollback`, `history`: exit 0 with
/// `print` (or the answer as JSON), 2 when the policy is invalid, 1 otherwise.
fn admin(socket: &Path, req: &AdminRequest, json: bool, print: impl Fn(&AdminResponse)) -> u8 {
    match call(socket, req) {
        Ok(r) => {
            if json {
                let v = match (&r.versions, &r.policy) {
                    (Some(vs), _) => serde_json::to_value(vs),
                    (None, Some(p)) => serde_json::to_value(p).map(|mut v| {
                        v["unchanged"] = r.unchanged.into();
                        v
                    }),
                    (None, None) => Ok(Value::Null),
                };
                println!("{}", v.unwrap_or_default());
            } else {
                print(&r);
            }
            0
        }
        Err(e) => {
            eprintln!("interceptor: {e}");
            // The daemon's answer says whether the text itself was at fault.
            let invalid = matches!(&e, ClientError::Refused(m) if is_invalid(req, m));
            if invalid { 2 } else { 1 }
        }
    }
}

/// Whether a refusal of an apply is the daemon's validation error (it starts
/// with the file name the CLI sent).
fn is_invalid(req: &AdminRequest, message: &str) -> bool {
    match req {
        AdminRequest::PolicyApply { path: Some(p), .. } => message.starts_with(&format!("{p}: ")),
        _ => false,
    }
}

fn print_history(vs: &[VersionInfo]) {
    if vs.is_empty() {
        println!("no policy versions recorded");
        return;
    }
    println!(
        "{:<8} {:<21} {:<28} {:<32} DIGEST",
        "VERSION", "TIME", "ACTOR", "SOURCE"
    );
    for v in vs {
        println!(
            "{:<8} {:<21} {:<28} {:<32} {}",
            v.version,
            v.time,
            v.actor,
            v.source,
            short(&v.digest)
        );
    }
}

/// Decides an HTTP request line (`METHOD target`) the way the HTTP handler
/// does: the same head parser, host and path normalisation.
fn test_http(
    policy: &Policy,
    ctx: &Context<'_>,
    line: &str,
    host: Option<&str>,
) -> Result<(Decision, String), String> {
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("--http `{line}`: expected `METHOD /path`"));
    };
    let host_header = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let head = format!("{method} {target} HTTP/1.1\r\n{host_header}\r\n");
    let parsed = crate::protocol::http::parse_request(head.as_bytes())
        .map_err(|e| format!("--http `{line}`: {e}"))?
        .ok_or_else(|| format!("--http `{line}`: not a complete request line"))?;
    let (host, path) = parsed.host_and_path();
    let req = HttpRequest {
        method: parsed.method,
        host: &host,
        path: &path,
    };
    Ok((
        policy.decide_http(ctx, &req),
        format!("{} {host} {path}", parsed.method),
    ))
}

/// Decides a Redis command the way the Redis handler does: the same
/// argument splitting, subcommands and key positions.
fn test_redis(
    policy: &Policy,
    ctx: &Context<'_>,
    command: &str,
) -> Result<(Decision, String), String> {
    use crate::protocol::redis::{command_keys, has_subcommand, parse_command};
    let line = format!("{}\r\n", command.trim());
    let cmd = parse_command(line.as_bytes())
        .map_err(|e| format!("--redis `{command}`: {e}"))?
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("--redis `{command}`: expected `COMMAND key ...`"))?;
    let name = cmd.name();
    let sub = if has_subcommand(&name) {
        cmd.arg_upper(1)
    } else {
        None
    };
    let keys = command_keys(&cmd);
    let op = RedisOperation {
        command: &name,
        subcommand: sub.as_deref(),
        keys: &keys.keys,
    };
    let described = format!(
        "{}{} [{}]",
        name,
        sub.as_deref().map(|s| format!(" {s}")).unwrap_or_default(),
        keys.keys
            .iter()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((policy.decide_redis(ctx, &op), described))
}

/// Prints a non-SQL decision like `test` does; returns its exit status.
fn report(d: &Decision, ctx: &Context<'_>, operation: &str, json: bool) -> u8 {
    if json {
        println!(
            "{}",
            json!({"action": d.action.as_str(), "rule": d.rule, "reason": d.reason,
                   "identity": ctx.identity, "target": ctx.target, "operation": operation})
        );
    } else {
        println!("{}  rule {}: {}", d.action.as_str(), d.rule, d.reason);
        println!("  operation: {operation}");
    }
    exit_for(d.action)
}
