//! `interceptor-probe talk` in a lab pod: a client that sends exactly the
//! bytes a test gives it and returns each reply whole (the wire clients in
//! [`super::pgwire`] and [`super::mywire`] build on it).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
};

use interceptor_daemon::testbed::Pod;
use serde_json::Value;

use super::PROBE;

pub struct Talk {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Talk {
    /// `probe talk` with these arguments (the address, then how a reply ends).
    pub fn spawn(pod: &Pod, args: &[&str]) -> Talk {
        let mut child = pod
            .command(PROBE)
            .unwrap()
            .arg("talk")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Talk {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `bytes` (nothing: `None`, for a server that speaks first) and
    /// returns the reply's bytes.
    pub fn send(&mut self, bytes: Option<&[u8]>) -> Vec<u8> {
        let line = match bytes {
            Some(b) => b.iter().map(|b| format!("{b:02x}")).collect(),
            None => ".".to_string(),
        };
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("probe talk printed `{line}`: {e}"));
        let hex = v["received_hex"]
            .as_str()
            .unwrap_or_else(|| panic!("no reply: {v}"));
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

impl Drop for Talk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
