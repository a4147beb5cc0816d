//! A PostgreSQL client in a lab pod that sends exactly the messages a test
//! gives it (psql and pgbench cannot reuse a named statement after an error):
//! `interceptor-probe talk` carries the bytes, one exchange per batch, each
//! read up to its ReadyForQuery.

use std::net::SocketAddr;

use bytes::BytesMut;
use interceptor_daemon::testbed::Pod;
use postgres_protocol::message::frontend;

use super::talk::Talk;

pub struct PgWire(Talk);

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

/// Asserts that `reply` holds the interceptor's denial (an ErrorResponse with
/// SQLSTATE 42501) whose message says `says`; `what` names the statement.
pub fn assert_denied(reply: &[Msg], says: &str, what: &str) {
    let e = reply
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("{what} ran: {reply:?}"));
    assert_eq!(e.field(b'C').as_deref(), Some("42501"), "{reply:?}");
    assert!(
        e.field(b'M').unwrap_or_default().contains(says),
        "{reply:?}"
    );
}

impl PgWire {
    /// Connects from `pod` to `addr` and logs in as `user` (trust).
    pub fn connect(pod: &Pod, addr: SocketAddr, user: &str) -> PgWire {
        let mut w = PgWire(Talk::spawn(
            pod,
            &[
                &addr.to_string(),
                // ReadyForQuery: 'Z', length 5, then the status byte.
                "--until-hex",
                "5a00000005",
                "--then",
                "1",
            ],
        ));
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
        let raw = self.0.send(Some(bytes));
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
