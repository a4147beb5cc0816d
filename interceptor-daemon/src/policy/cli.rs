//! `interceptor policy ...`: what security engineers use to write and check
//! policy before it enforces anything. Every read command takes `--json`.
//!
//! Exit status of `policy test`: 0 allow, 1 deny, 3 require approval;
//! 2 for usage errors and invalid policies (also `validate`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Action, Context, Policy, Rule, replay, store};
use crate::{config::Config, sql};

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
        /// The SQL text, as the client would send it (several statements allowed).
        #[arg(long)]
        sql: String,
        /// Decide at this time (RFC 3339) instead of now, for time-bounded rules.
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

/// Where a policy comes from: a policy file or a daemon configuration.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// A policy file (`default:` and `rules:` at the top level).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A daemon configuration: its inline policy or its `policy_file`.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl Source {
    fn load(&self) -> Result<Policy, String> {
        match (&self.policy, &self.config) {
            (Some(p), _) => store::load_file(p)
                .map(|(p, _)| p)
                .map_err(|e| e.to_string()),
            (None, Some(c)) => Config::load(c).map(|c| c.policy).map_err(|e| e.to_string()),
            (None, None) => Err("give --policy or --config".into()),
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
            sql,
            at,
            json,
        } => {
            let policy = match source.load() {
                Ok(p) => p,
                Err(e) => return usage(&e),
            };
            let now = match at.as_deref().map(humantime::parse_rfc3339_weak) {
                None => SystemTime::now(),
                Some(Ok(t)) => t,
                Some(Err(e)) => return usage(&format!("--at: not an RFC 3339 time: {e}")),
            };
            test(&policy, identity.as_deref(), &target, &sql, now, json)
        }
        PolicyCommand::Show { source, json } => match source.load() {
            Ok(p) => {
                show(&p, json);
                0
            }
            Err(e) => usage(&e),
        },
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
                    diff(&old, &new, json);
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

/// PostgreSQL statement decisions recorded in an audit log directory.
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
                && r.protocol == Protocol::Postgres
                && !r.operation.starts_with("connection to ")
        })
        .filter_map(|r| {
            let rule = r.rule_id.clone()?;
            let identity = (!r.identity.namespace.is_empty()
                || !r.identity.service_account.is_empty())
            .then(|| format!("{}/{}", r.identity.namespace, r.identity.service_account));
            Some(replay::Observed {
                identity,
                target: r.target,
                operation: r.operation,
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

fn show(p: &Policy, json: bool) {
    if json {
        println!(
            "{}",
            json!({"default": p.default.as_str(),
                   "rules": p.rules.iter().map(rule_json).collect::<Vec<_>>()})
        );
        return;
    }
    println!("default: {}", p.default.as_str());
    println!(
        "{:<24} {:<7} {:<24} {:<16} {:<32} {:<5} WINDOW",
        "RULE", "ACTION", "IDENTITIES", "TARGETS", "SQL", "SPEC"
    );
    for r in &p.rules {
        let sql = format!(
            "{} on {}{}",
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

fn diff(old: &Policy, new: &Policy, json: bool) {
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
                   "default": {"old": old.default.as_str(), "new": new.default.as_str()}})
        );
        return;
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
