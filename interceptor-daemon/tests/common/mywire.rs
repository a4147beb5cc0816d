//! A MySQL client in a lab pod that speaks the binary protocol
//! (`COM_STMT_PREPARE` / `EXECUTE` / `CLOSE`), which the `mariadb` command
//! line client never uses: `interceptor-probe talk` carries the packets, each
//! reply read until the server is quiet. Logs in as `root` without a
//! password (a server started without grant tables).

use std::net::SocketAddr;

use interceptor_daemon::testbed::Pod;

use super::talk::Talk;

pub struct MyWire(Talk);

/// An answer: its packets' payloads.
pub type Reply = Vec<Vec<u8>>;

/// An ERR packet's message, if `reply` starts with one.
pub fn error(reply: &Reply) -> Option<String> {
    let p = reply.first().filter(|p| p.first() == Some(&0xff))?;
    Some(String::from_utf8_lossy(p.get(3..).unwrap_or_default()).into_owned())
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
    v.extend_from_slice(payload);
    v
}

impl MyWire {
    /// Connects from `pod` to `addr` and logs in to database `db`.
    pub fn connect(pod: &Pod, addr: SocketAddr, db: &str) -> MyWire {
        let mut w = MyWire(Talk::spawn(pod, &[&addr.to_string(), "--quiet-ms", "300"]));
        let greeting = w.send(None);
        assert_eq!(
            greeting.first().and_then(|p| p.first()),
            Some(&10),
            "{greeting:?}"
        );
        // HandshakeResponse41: protocol 4.1, secure connection, a database,
        // an auth plugin; no CLIENT_DEPRECATE_EOF (EOF packets end rows).
        let caps: u32 = 0x0200 | 0x8000 | 0x0008 | 0x8_0000;
        let mut r = caps.to_le_bytes().to_vec();
        r.extend_from_slice(&(16u32 << 20).to_le_bytes());
        r.push(33);
        r.extend_from_slice(&[0; 23]);
        r.extend_from_slice(b"root\0\0");
        r.extend_from_slice(db.as_bytes());
        r.extend_from_slice(b"\0mysql_native_password\0");
        let ok = w.send(Some(&packet(1, &r)));
        assert_eq!(
            ok.first().and_then(|p| p.first()),
            Some(&0),
            "login: {ok:?}"
        );
        w
    }

    /// Sends `bytes` (nothing: `None`) and returns the packets of the reply.
    fn send(&mut self, bytes: Option<&[u8]>) -> Reply {
        let raw = self.0.send(bytes);
        let mut packets = Vec::new();
        let mut at = 0;
        while at + 4 <= raw.len() {
            let len = usize::from(raw[at])
                | usize::from(raw[at + 1]) << 8
                | usize::from(raw[at + 2]) << 16;
            let end = (at + 4 + len).min(raw.len());
            packets.push(raw[at + 4..end].to_vec());
            at = end;
        }
        packets
    }

    /// A command (sequence 0) with this payload.
    pub fn command(&mut self, payload: &[u8]) -> Reply {
        self.send(Some(&packet(0, payload)))
    }

    /// The next reply, for a command whose answer did not come at once (a
    /// held one): read until something arrives, for up to 10 s.
    pub fn next_reply(&mut self) -> Reply {
        let start = std::time::Instant::now();
        loop {
            let r = self.send(None);
            if !r.is_empty() {
                return r;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no reply"
            );
        }
    }

    /// `COM_QUERY`.
    pub fn query(&mut self, sql: &str) -> Reply {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.command(&p)
    }

    /// `COM_STMT_PREPARE`: the statement id, or the error message.
    pub fn prepare(&mut self, sql: &str) -> Result<u32, String> {
        let mut p = vec![0x16];
        p.extend_from_slice(sql.as_bytes());
        let r = self.command(&p);
        if let Some(e) = error(&r) {
            return Err(e);
        }
        let ok = r.first().filter(|p| p.first() == Some(&0) && p.len() >= 5);
        let ok = ok.unwrap_or_else(|| panic!("not a prepare's OK: {r:?}"));
        Ok(u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]))
    }

    /// `COM_STMT_EXECUTE` of a statement without parameters.
    pub fn execute(&mut self, id: u32) -> Reply {
        let mut p = vec![0x17];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        self.command(&p)
    }

    /// `COM_STMT_CLOSE` (the server does not answer).
    pub fn close(&mut self, id: u32) {
        let mut p = vec![0x19];
        p.extend_from_slice(&id.to_le_bytes());
        let r = self.command(&p);
        assert!(r.is_empty(), "an answer to COM_STMT_CLOSE: {r:?}");
    }
}
