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
