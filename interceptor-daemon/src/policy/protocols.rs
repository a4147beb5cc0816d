//! Rule matchers for the non-SQL protocols (Redis commands, HTTP requests).
//!
//! A rule with a `redis:` matcher applies only to Redis commands, one with
//! `http:` only to HTTP requests, one with a non-empty `sql:` only to SQL; a
//! rule with none of them (only identities/targets) applies to every protocol.
//! Precedence is the same as for SQL: any matching deny, else the first
//! matching non-deny rule, else the default.
//!
//! Redis keys are matched conservatively: a deny rule with `keys` matches when
//! *any* key matches; an allow rule with `keys` matches only when the command
//! has at least one key and *all* of them match. For a command whose key
//! positions are unknown every argument counts as a possible key (so a deny
//! rule errs on denying, an allow rule on not allowing).

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, de};

use super::{Action, Context, Decision, NameGlob, Policy, Rule};

/// A case-insensitive glob (Redis command names, HTTP hosts).
#[derive(Debug, Clone)]
pub struct CiGlob {
    pub pattern: String,
    matcher: GlobMatcher,
}

impl schemars::JsonSchema for CiGlob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CaseInsensitiveGlob".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A case-insensitive glob (`CONFIG*`, `api.*`)."
        })
    }
}

impl CiGlob {
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl<'de> Deserialize<'de> for CiGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        let matcher = GlobBuilder::new(&pattern)
            .case_insensitive(true)
            .build()
            .map_err(|e| de::Error::custom(format!("`{pattern}`: not a valid glob: {e}")))?
            .compile_matcher();
        Ok(CiGlob { pattern, matcher })
    }
}

/// `redis: { commands: [GET, "CONFIG*", "CLIENT KILL"], keys: ["session:*"] }`
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisMatch {
    /// Command names (case-insensitive globs), or `NAME SUBCOMMAND` pairs for
    /// container commands (`CONFIG GET`); empty = every command.
    #[serde(default)]
    pub commands: Vec<CiGlob>,
    /// Key globs (case-sensitive); empty = any keys (and keyless commands).
    #[serde(default)]
    pub keys: Vec<NameGlob>,
}

/// A Redis command as the policy sees it.
#[derive(Debug, Clone)]
pub struct RedisOperation<'a> {
    /// Upper-cased command name (`GET`).
    pub command: &'a str,
    /// Upper-cased subcommand of container commands (`GET` for `CONFIG GET`).
    pub subcommand: Option<&'a str>,
    /// The command's keys; every argument when the positions are unknown.
    pub keys: &'a [&'a [u8]],
}

impl RedisMatch {
    fn matches(&self, op: &RedisOperation<'_>, action: Action) -> bool {
        let pair = op.subcommand.map(|s| format!("{} {s}", op.command));
        let command_ok = self.commands.is_empty()
            || self
                .commands
                .iter()
                .any(|g| g.is_match(op.command) || pair.as_deref().is_some_and(|p| g.is_match(p)));
        if !command_ok {
            return false;
        }
        if self.keys.is_empty() {
            return true;
        }
        let key_ok = |k: &&[u8]| {
            let k = String::from_utf8_lossy(k);
            self.keys.iter().any(|g| g.is_match(&k))
        };
        match action {
            Action::Deny => op.keys.iter().any(key_ok),
            _ => !op.keys.is_empty() && op.keys.iter().all(key_ok),
        }
    }
}

/// `http: { methods: [GET], hosts: ["api.*"], paths: ["/v1/orders/*"] }`
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// Methods (case-insensitive); empty = every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host globs (case-insensitive, without port); empty = any host.
    #[serde(default)]
    pub hosts: Vec<CiGlob>,
    /// Path globs over the normalised path without query (`*` crosses `/`);
    /// empty = any path.
    #[serde(default)]
    pub paths: Vec<NameGlob>,
}

/// An HTTP request as the policy sees it.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Host without port (empty when the request names none).
    pub host: &'a str,
    /// Normalised path (dot segments resolved, percent-decoded except `/`),
    /// without the query.
    pub path: &'a str,
}

impl HttpMatch {
    fn matches(&self, r: &HttpRequest<'_>) -> bool {
        (self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(r.method)))
            && (self.hosts.is_empty() || self.hosts.iter().any(|g| g.is_match(r.host)))
            && (self.paths.is_empty() || self.paths.iter().any(|g| g.is_match(r.path)))
    }
}

/// A rule with no protocol-specific matcher: it applies to every protocol.
fn protocol_neutral(r: &Rule) -> bool {
    r.redis.is_none()
        && r.http.is_none()
        && r.sql.kinds.is_empty()
        && r.sql.tables.is_empty()
        && r.sql.functions.is_empty()
        && r.sql.columns.is_empty()
}

impl Policy {
    /// Decides one Redis command.
    pub fn decide_redis(&self, ctx: &Context<'_>, op: &RedisOperation<'_>) -> Decision {
        self.decide_matching(
            ctx,
            |r| match &r.redis {
                Some(m) => m.matches(op, r.action),
                None => protocol_neutral(r),
            },
            "no rule allows this command",
        )
    }

    /// Decides one HTTP request.
    pub fn decide_http(&self, ctx: &Context<'_>, req: &HttpRequest<'_>) -> Decision {
        self.decide_matching(
            ctx,
            |r| match &r.http {
                Some(m) => m.matches(req),
                None => protocol_neutral(r),
            },
            "no rule allows this request",
        )
    }

    fn decide_matching(
        &self,
        ctx: &Context<'_>,
        matches: impl Fn(&Rule) -> bool,
        no_rule: &str,
    ) -> Decision {
        let now = std::time::SystemTime::now();
        let mut approval: Option<&Rule> = None;
        let mut allow: Option<&Rule> = None;
        for r in self
            .rules
            .iter()
            .filter(|r| r.in_force(now) && r.applies_to(ctx) && matches(r))
        {
            match r.action {
                Action::Deny => {
                    return Decision {
                        action: Action::Deny,
                        rule: r.id.clone(),
                        reason: r.reason(),
                    };
                }
                Action::RequireApproval => {
                    approval.get_or_insert(r);
                }
                Action::Allow => {
                    allow.get_or_insert(r);
                }
                // Mask rules shape results; they never allow or deny.
                Action::Mask => {}
            }
        }
        if let Some(r) = approval {
            // Only SQL statements (PostgreSQL, MySQL) can be held for a human;
            // a Redis command or HTTP request a rule holds is denied (fail closed).
            return Decision {
                action: Action::Deny,
                rule: r.id.clone(),
                reason: format!(
                    "{} (needs approval; only SQL statements can be held)",
                    r.reason()
                ),
            };
        }
        match allow {
            Some(r) => Decision {
                action: r.action,
                rule: r.id.clone(),
                reason: r.reason(),
            },
            None => Decision {
                action: self.default,
                rule: "default".into(),
                reason: no_rule.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
default: deny
rules:
  - id: cache-rw
    identities: ["shop/*"]
    redis: { commands: ["GET", "SET", "DEL", "MGET"], keys: ["session:*"] }
    action: allow
  - id: ping
    redis: { commands: ["PING", "HELLO"] }
    action: allow
  - id: no-admin
    redis: { commands: ["FLUSH*", "CONFIG*", "KEYS", "DEBUG"] }
    action: deny
    description: administrative commands are for operators
  - id: no-secret-keys
    redis: { keys: ["secret:*"] }
    action: deny
  - id: orders-api
    http: { methods: [GET], hosts: ["api.*"], paths: ["/v1/orders/*"] }
    action: allow
  - id: no-admin-http
    http: { paths: ["/admin*"] }
    action: deny
  - id: sql-reads
    sql: { kinds: [read] }
    action: allow
"#;

    fn redis(who: &str, command: &str, sub: Option<&str>, keys: &[&str]) -> (Action, String) {
        let p = Policy::parse(POLICY).unwrap();
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let d = p.decide_redis(
            &Context {
                identity: Some(who),
                target: "cache",
            },
            &RedisOperation {
                command,
                subcommand: sub,
                keys: &keys,
            },
        );
        (d.action, d.rule)
    }

    #[test]
    fn redis_rules() {
        use Action::*;
        let r = |a, s: &str| (a, s.to_string());
        assert_eq!(
            redis("shop/a", "GET", None, &["session:1"]),
            r(Allow, "cache-rw")
        );
        assert_eq!(
            redis("shop/a", "MGET", None, &["session:1", "other"]),
            r(Deny, "default"),
            "an allow rule covers a command only if every key is listed"
        );
        assert_eq!(
            redis("other/a", "GET", None, &["session:1"]),
            r(Deny, "default")
        );
        assert_eq!(redis("shop/a", "PING", None, &[]), r(Allow, "ping"));
        assert_eq!(redis("shop/a", "FLUSHALL", None, &[]), r(Deny, "no-admin"));
        assert_eq!(
            redis("shop/a", "CONFIG", Some("GET"), &[]),
            r(Deny, "no-admin")
        );
        assert_eq!(
            redis("shop/a", "DEL", None, &["session:1", "secret:x"]),
            r(Deny, "no-secret-keys"),
            "a deny rule matches on any key"
        );
        // Keyless commands are not covered by allow rules that list keys.
        assert_eq!(redis("shop/a", "SET", None, &[]), r(Deny, "default"));
        // The SQL-only rule does not apply to Redis.
        assert_eq!(redis("shop/a", "TIME", None, &[]), r(Deny, "default"));
    }

    #[test]
    fn subcommand_rules() {
        let p = Policy::parse(
            "rules:\n  - {id: cfg-get, redis: {commands: [\"config get\"]}, action: allow}\n",
        )
        .unwrap();
        let ctx = Context {
            identity: None,
            target: "t",
        };
        let op = |sub| RedisOperation {
            command: "CONFIG",
            subcommand: Some(sub),
            keys: &[],
        };
        assert_eq!(p.decide_redis(&ctx, &op("GET")).action, Action::Allow);
        assert_eq!(p.decide_redis(&ctx, &op("SET")).action, Action::Deny);
    }

    #[test]
    fn http_rules() {
        let p = Policy::parse(POLICY).unwrap();
        let d = |method, host, path| {
            let d = p.decide_http(
                &Context {
                    identity: Some("shop/a"),
                    target: "api",
                },
                &HttpRequest { method, host, path },
            );
            (d.action, d.rule)
        };
        assert_eq!(
            d("GET", "api.shop", "/v1/orders/7"),
            (Action::Allow, "orders-api".into())
        );
        assert_eq!(
            d("get", "API.shop", "/v1/orders/7/items"),
            (Action::Allow, "orders-api".into())
        );
        assert_eq!(d("POST", "api.shop", "/v1/orders/7").1, "default");
        assert_eq!(d("GET", "web.shop", "/v1/orders/7").1, "default");
        assert_eq!(d("GET", "api.shop", "/admin/users").1, "no-admin-http");
    }

    #[test]
    fn protocol_rules_stay_in_their_protocol() {
        let p = Policy::parse(
            "rules:\n  - {id: no-flush, redis: {commands: [FLUSHALL]}, action: deny}\n  - {id: all, identities: [\"ops/*\"], action: allow}\n",
        )
        .unwrap();
        let ctx = Context {
            identity: Some("ops/x"),
            target: "t",
        };
        // The Redis deny rule does not touch SQL; the neutral rule covers all.
        let c = crate::sql::classify("SELECT 1");
        assert_eq!(p.decide_statements(&ctx, &c.statements).rule, "all");
        let op = RedisOperation {
            command: "GET",
            subcommand: None,
            keys: &[b"k"],
        };
        assert_eq!(p.decide_redis(&ctx, &op).rule, "all");
        let req = HttpRequest {
            method: "GET",
            host: "",
            path: "/",
        };
        assert_eq!(p.decide_http(&ctx, &req).rule, "all");
    }
}
