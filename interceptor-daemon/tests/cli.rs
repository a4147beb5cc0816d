//! The CLI as a user meets it; no privileges needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_interceptor");

#[test]
fn config_check_accepts_the_example_and_names_the_line_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let example = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(example.status.success());
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, &example.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (2 targets"));

    let example = String::from_utf8_lossy(&example.stdout).into_owned();
    let line = 1 + example
        .lines()
        .position(|l| l.contains("10.244.0.0/16:5432"))
        .expect("the example has a CIDR destination");
    let text = example.replace("10.244.0.0/16:5432", "10.244.0.1/16:5432");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml")
            && err.contains(&format!("line {line},"))
            && err.contains("did you mean `10.244.0.0/16`"),
        "{err}"
    );
}

#[test]
fn run_rejects_an_invalid_config_before_touching_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listener:\n  address: 0.0.0.0:15001\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("unspecified"),
        "{err}"
    );
}

const POLICY_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.example.yaml");

fn policy_test(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["policy", "test", "--policy", POLICY_EXAMPLE, "--json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

#[test]
fn policy_test_explains_decisions_with_exit_codes() {
    let (code, v) = policy_test(&[
        "--identity",
        "shop/orders-api",
        "--target",
        "customers-db",
        "--sql",
        "SELECT name FROM customers",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["action"].as_str(), v["rule"].as_str()),
        (Some("allow"), Some("orders-read"))
    );

    // The literal identity rule is more specific than `shop/*`: it decides.
    let (code, v) = policy_test(&[
        "--identity",
        "shop/orders-api",
        "--target",
        "customers-db",
        "--sql",
        "SELECT * FROM orders",
    ]);
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(0), Some("orders-read")),
        "{v}"
    );
    let (code, v) = policy_test(&[
        "--identity",
        "shop/billing",
        "--target",
        "customers-db",
        "--sql",
        "SELECT * FROM orders",
    ]);
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(0), Some("shop-read-orders")),
        "{v}"
    );

    let (code, v) = policy_test(&[
        "--identity",
        "shop/orders-api",
        "--target",
        "customers-db",
        "--sql",
        "SELECT 1; DELETE FROM public.customers WHERE id = 1",
    ]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rule"], "no-customer-changes");
    assert_eq!(
        v["reason"],
        "customer records are never changed by workloads"
    );
    assert_eq!(v["statements"][1]["kind"], "write");

    // A time-bounded grant: in force only inside its window.
    let ddl = [
        "--identity",
        "shop/migrate",
        "--target",
        "customers-db",
        "--sql",
        "ALTER TABLE orders ADD COLUMN note text",
    ];
    let (code, v) = policy_test(&[&ddl[..], &["--at", "2026-12-01T23:00:00Z"]].concat());
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(0), Some("migration-window")),
        "{v}"
    );
    let (code, v) = policy_test(&[&ddl[..], &["--at", "2026-12-02T03:00:00Z"]].concat());
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(1), Some("default")),
        "{v}"
    );

    // Usage errors exit 2.
    let out = Command::new(BIN)
        .args([
            "policy",
            "test",
            "--policy",
            POLICY_EXAMPLE,
            "--target",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_validate_names_file_line_and_column() {
    let out = Command::new(BIN)
        .args(["policy", "validate", POLICY_EXAMPLE])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (6 rules, default deny)"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-policy.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - id: a\n    action: allow\n    sql: { kinds: [reed] }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-policy.yaml: line 4, column") && err.contains("reed"),
        "{err}"
    );
}

#[test]
fn policy_diff_lists_changed_rules() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(POLICY_EXAMPLE).unwrap();
    let new = text
        .replace("id: shop-read-orders", "id: shop-read-all")
        .replace(
            "\"orders\"] }\n    action: allow\n\n  - id: no-customer",
            "\"orders\", \"invoices\"] }\n    action: allow\n\n  - id: no-customer",
        );
    let candidate = dir.path().join("new.yaml");
    std::fs::write(&candidate, new).unwrap();
    let out = Command::new(BIN)
        .args(["policy", "diff", "--json"])
        .arg(&candidate)
        .args(["--policy", POLICY_EXAMPLE])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["added"], serde_json::json!(["shop-read-all"]));
    assert_eq!(v["removed"], serde_json::json!(["shop-read-orders"]));
    assert_eq!(v["changed"], serde_json::json!(["orders-write"]));
}

#[test]
fn published_policy_schema_is_current() {
    let out = Command::new(BIN)
        .args(["policy", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let published = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.schema.json");
    let current = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("INTERCEPTOR_BLESS").is_some() {
        std::fs::write(published, current.as_bytes()).unwrap();
    }
    let on_disk = std::fs::read_to_string(published).unwrap_or_default();
    assert_eq!(
        on_disk.trim(),
        current.trim(),
        "config/policy.schema.json is stale: rerun with INTERCEPTOR_BLESS=1"
    );
    let v: serde_json::Value = serde_json::from_str(&current).unwrap();
    assert!(v["properties"]["rules"].is_object(), "{v}");
}

#[test]
fn policy_test_explains_column_rules() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("columns.yaml");
    std::fs::write(
        &policy,
        r#"
rules:
  - id: no-ssn
    sql: { columns: ["customers.ssn"] }
    action: deny
  - id: basics
    sql: { kinds: [read], columns: ["customers.id", "customers.name"] }
    action: allow
"#,
    )
    .unwrap();
    let run = |sql: &str| {
        let out = Command::new(BIN)
            .args(["policy", "test", "--json", "--target", "db", "--sql", sql])
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (out.status.code(), v)
    };
    let (code, v) = run("SELECT c.ssn FROM customers c");
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["rule"], "no-ssn");
    assert_eq!(v["reason"], "rule `no-ssn` (deny): column customers.ssn");
    assert_eq!(
        v["statements"][0]["columns"],
        serde_json::json!(["customers.ssn"])
    );
    let (code, v) = run("SELECT id, name FROM customers");
    assert_eq!((code, v["rule"].as_str()), (Some(0), Some("basics")), "{v}");
    let (code, v) = run("SELECT * FROM customers");
    assert_eq!((code, v["rule"].as_str()), (Some(1), Some("no-ssn")), "{v}");
    let (code, v) = run("SELECT email FROM customers");
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(1), Some("default")),
        "{v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("customers.email"),
        "{v}"
    );
}
