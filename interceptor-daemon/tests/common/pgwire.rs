//! A PostgreSQL client in a lab pod that sends exactly the messages a test
//! gives it (psql and pgbench cannot reuse a named statement after an error):
//! `interceptor-probe talk` carries the bytes, one exchange per batch, each
//! read up to its ReadyForQuery.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Stdio},
};

use bytes::BytesMut;
use interceptor_daemon::testbed::Pod;
use postgres_protocol::message::frontend;
use serde_json::Value;

use super::PROBE;

pub struct PgWire {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One backend message of a reply.
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// An ErrorResponse's field (`C` SQLSTATE, `M` message).
    pub fn field(&self, code: u8) -> Option<String> {
        self.body
            .split(|b| *b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }
}

impl PgWire {
    /// Connects from `pod` to `addr` and logs in as `user` (trust).
    pub fn connect(pod: &Pod, addr: SocketAddr, user: &str) -> PgWire {
        let mut child = pod
            .command(PROBE)
            .unwrap()
            .args([
                "talk",
                &addr.to_string(),
                // ReadyForQuery: 'Z', length 5, then the status byte.
                "--until-hex",
                "5a00000005",
                "--then",
                "1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = PgWire {
            child,
            stdin,
            stdout,
        };
        let mut b = BytesMut::new();
        frontend::startup_message([("user", user), ("database", "postgres")], &mut b).unwrap();
        let reply = w.exchange(&b);
        assert!(
            reply.iter().any(|m| m.tag == b'Z'),
            "login did not end in ReadyForQuery: {reply:?}"
        );
        w
    }

    /// Sends `bytes` and returns the reply's messages up to ReadyForQuery.
    pub fn exchange(&mut self, bytes: &[u8]) -> Vec<Msg> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(self.stdin, "{hex}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("probe talk printed `{line}`: {e}"));
        let hex = v["received_hex"]
            .as_str()
            .unwrap_or_else(|| panic!("no reply: {v}"));
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut msgs = Vec::new();
        let mut at = 0;
        while at + 5 <= raw.len() {
            let len = u32::from_be_bytes(raw[at + 1..at + 5].try_into().unwrap()) as usize;
            let end = (at + 1 + len).min(raw.len());
            msgs.push(Msg {
                tag: raw[at],
                body: raw[at + 5..end].to_vec(),
            });
            at = end;
        }
        msgs
    }

    /// Parse of a named statement, then Sync.
    pub fn prepare(&mut self, name: &str, sql: &str) -> Vec<Msg> {
        let mut b = BytesMut::new();
        frontend::parse(name, sql, [], &mut b).unwrap();
        frontend::sync(&mut b);
        self.exchange(&b)
    }

    /// Bind (no parameters) + Execute + Sync of a prepared statement.
    pub fn execute(&mut self, name: &str) -> Vec<Msg> {
        self.execute_portal("", Some(name), 0)
    }

    /// Execute of `portal` (bound first to `bind`, if given) for at most
    /// `max_rows` rows (0: all), then Sync.
    pub fn execute_portal(&mut self, portal: &str, bind: Option<&str>, max_rows: i32) -> Vec<Msg> {
        let mut b = BytesMut::new();
        if let Some(statement) = bind {
            frontend::bind(
                portal,
                statement,
                [],
                std::iter::empty::<Option<&[u8]>>(),
                |_, _| Ok(postgres_protocol::IsNull::No),
                [],
                &mut b,
            )
            .map_err(|_| "bind")
            .unwrap();
        }
        frontend::execute(portal, max_rows, &mut b).unwrap();
        frontend::sync(&mut b);
        self.exchange(&b)
    }

    /// A simple Query.
    pub fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).unwrap();
        self.exchange(&b)
    }
}

impl Drop for PgWire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
