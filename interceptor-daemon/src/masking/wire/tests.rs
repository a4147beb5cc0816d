//! A session's two halves driven with real protocol bytes: client messages
//! into the feed, server answers through the masker, and the output parsed
//! back with the framer (so every rewritten length is checked).

use super::*;
use crate::protocol::postgres::{BackendMessage, Direction, FieldDescription, Framer, Progress};

const CUSTOMERS: u32 = 16400;
const ORDERS: u32 = 16410;
const VIEW: u32 = 16420;
const TEXT: u32 = 25;
const INT4: u32 = 23;

fn plan(yaml: &[&str]) -> MaskPlan {
    MaskPlan::of_yaml(yaml)
}

fn key() -> MaskKey {
    MaskKey::from_bytes([9; 32])
}

fn field(
    name: &str,
    table_oid: u32,
    column: i16,
    type_oid: u32,
    format: i16,
) -> FieldDescription<'_> {
    FieldDescription {
        name,
        table_oid,
        column,
        type_oid,
        type_size: -1,
        type_modifier: -1,
        format,
    }
}

fn t(fields: &[FieldDescription<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    build::row_description(&mut out, fields.iter().copied()).unwrap();
    out
}

fn d(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    build::data_row(&mut out, values.iter().copied()).unwrap();
    out
}

fn c(tag: &str) -> Vec<u8> {
    let mut out = Vec::new();
    build::command_complete(&mut out, tag).unwrap();
    out
}

fn z() -> Vec<u8> {
    let mut out = Vec::new();
    build::ready_for_query(&mut out, crate::protocol::postgres::TransactionStatus::Idle);
    out
}

/// The catalog answer: customers(id int, name text, email text, ssn text),
/// orders(id, note), view v_contacts(contact) over customers.email.
fn catalog_answer() -> Vec<u8> {
    let mut b = t(&[field("?column?", 0, 0, TEXT, 0)]);
    let cols = [
        (CUSTOMERS, "1", "customers", "id"),
        (CUSTOMERS, "2", "customers", "name"),
        (CUSTOMERS, "3", "customers", "email"),
        (CUSTOMERS, "4", "customers", "ssn"),
        (ORDERS, "1", "orders", "id"),
        (ORDERS, "2", "orders", "note"),
        (VIEW, "1", "v_contacts", "contact"),
    ];
    for (oid, att, rel, col) in cols {
        let oid = oid.to_string();
        b.extend(d(&[
            Some(b"c"),
            Some(oid.as_bytes()),
            Some(att.as_bytes()),
            Some(b"public"),
            Some(rel.as_bytes()),
            Some(col.as_bytes()),
        ]));
    }
    let (v, cu) = (VIEW.to_string(), CUSTOMERS.to_string());
    b.extend(d(&[
        Some(b"d"),
        Some(v.as_bytes()),
        Some(cu.as_bytes()),
        Some(b"3"),
        Some(b""),
        Some(b""),
    ]));
    b.extend(c("SELECT 8"));
    b.extend(z());
    b
}

struct Session {
    feed: Feed,
    masker: ResultMasker,
}

impl Session {
    fn new(p: MaskPlan) -> Session {
        let (feed, masker) = session(p, key()).unwrap();
        Session { feed, masker }
    }

    /// Client bytes through the feed; returns what goes upstream.
    fn client(&mut self, bytes: &[u8]) -> Vec<u8> {
        let framer = Framer::new(Direction::Frontend);
        let mut buf = bytes;
        let mut out = Vec::new();
        while let Ok(Progress::Complete(f)) = framer.next(buf) {
            self.feed.on_frontend(&f, &mut out);
            out.extend_from_slice(f.raw);
            if matches!(f.tag, b'Q' | b'S') {
                self.feed.end_batch();
            }
            buf = &buf[f.len()..];
        }
        assert!(buf.is_empty());
        out
    }

    /// Server bytes through the masker; returns what reaches the client.
    fn server(&mut self, bytes: &[u8]) -> Vec<u8> {
        let framer = Framer::new(Direction::Backend);
        let mut buf = bytes;
        let mut out = Vec::new();
        while let Progress::Complete(f) = framer.next(buf).unwrap() {
            if self.masker.on_backend(&f, &mut out).unwrap() == Verdict::Forward {
                out.extend_from_slice(f.raw);
            }
            buf = &buf[f.len()..];
        }
        assert!(buf.is_empty());
        out
    }

    /// A simple query and its answer (after the catalog, sent with the first).
    fn query(&mut self, sql: &str, answer: &[u8]) -> Vec<u8> {
        let mut q = Vec::new();
        build::query(&mut q, sql).unwrap();
        let up = self.client(&q);
        if up.len() > q.len() {
            // The catalog query went first; the server answers it first.
            assert!(up.ends_with(&q));
            assert!(
                self.server(&catalog_answer()).is_empty(),
                "catalog answer leaked"
            );
        }
        self.server(answer)
    }
}

/// The DataRow values of a client-bound byte stream (framed and parsed
/// back: lengths must be exact).
fn rows(bytes: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    let framer = Framer::new(Direction::Backend);
    let mut buf = bytes;
    let mut rows = Vec::new();
    while !buf.is_empty() {
        let Progress::Complete(f) = framer.next(buf).unwrap() else {
            panic!("truncated output")
        };
        if let BackendMessage::DataRow(v) = BackendMessage::parse(&f).unwrap() {
            rows.push(v.iter().map(|x| x.map(<[u8]>::to_vec)).collect());
        }
        buf = &buf[f.len()..];
    }
    rows
}

fn s(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

const PII: &str = "{columns: [customers.email, '*.ssn'], strategy: hash}";

fn answer(fields: &[FieldDescription<'_>], data: &[&[Option<&[u8]>]]) -> Vec<u8> {
    let mut a = t(fields);
    for r in data {
        a.extend(d(r));
    }
    a.extend(c("SELECT"));
    a.extend(z());
    a
}

#[test]
fn plain_masked_columns_are_masked_by_oid_whatever_their_alias() {
    let mut sess = Session::new(plan(&[PII]));
    let pseudonym = key().pseudonym(b"ada@example.com");
    let a = answer(
        &[
            field("id", CUSTOMERS, 1, INT4, 0),
            field("e", CUSTOMERS, 3, TEXT, 0),
            field("name", CUSTOMERS, 2, TEXT, 0),
        ],
        &[
            &[Some(b"1"), Some(b"ada@example.com"), Some(b"Ada")],
            &[Some(b"2"), None, Some(b"Grace")],
        ],
    );
    let out = sess.query("SELECT id, email AS e, name FROM customers", &a);
    let r = rows(&out);
    assert_eq!(s(&r[0][1]), Some(pseudonym));
    assert_eq!(s(&r[0][0]).as_deref(), Some("1"));
    assert_eq!(s(&r[0][2]).as_deref(), Some("Ada"));
    assert_eq!(r[1][1], None, "NULL stays NULL");
    // The unmasked second row went through byte for byte.
    let row2 = d(&[Some(b"2"), None, Some(b"Grace")]);
    assert!(out.windows(row2.len()).any(|w| w == row2.as_slice()));

    // A result without masked columns arrives byte-identical.
    let a = answer(
        &[
            field("id", ORDERS, 1, INT4, 0),
            field("note", ORDERS, 2, TEXT, 0),
        ],
        &[&[Some(b"7"), Some(b"ada@example.com is in a note")]],
    );
    assert_eq!(sess.query("SELECT id, note FROM orders", &a), a);
}

#[test]
fn expressions_over_masked_columns_are_masked_whole() {
    let mut sess = Session::new(plan(&[PII]));
    let one = |sess: &mut Session, sql: &str, f: FieldDescription<'_>, v: &[u8]| {
        let out = sess.query(sql, &answer(&[f], &[&[Some(v)]]));
        rows(&out).remove(0).remove(0)
    };
    let red = key().pseudonym(b"ADA@EXAMPLE.COM");
    // (sql, type oid, format, server value, what the client gets)
    type Case<'a> = (&'a str, u32, i16, &'a [u8], Option<String>);
    let cases: &[Case<'_>] = &[
        (
            "SELECT upper(email) FROM customers",
            TEXT,
            0,
            b"ADA@EXAMPLE.COM",
            Some(red.clone()),
        ),
        // bytea, text format: hex of the pseudonym; binary: its bytes.
        (
            "SELECT email::bytea FROM customers",
            17,
            0,
            b"\\x61646140",
            Some(format!(
                "\\x{}",
                key()
                    .pseudonym(b"\\x61646140")
                    .bytes()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )),
        ),
        (
            "SELECT row_to_json(c) FROM customers c",
            114,
            0,
            br#"{"id":1,"email":"ada@example.com"}"#,
            Some(format!(
                "\"{}\"",
                key().pseudonym(br#"{"id":1,"email":"ada@example.com"}"#)
            )),
        ),
        (
            "SELECT (SELECT email FROM customers LIMIT 1)",
            TEXT,
            0,
            b"ada@example.com",
            Some(key().pseudonym(b"ada@example.com")),
        ),
        // A non-text type is nulled (a pseudonym would not decode as int).
        ("SELECT length(email) FROM customers", INT4, 0, b"15", None),
        // Not built on a masked column: untouched.
        (
            "SELECT upper(name) FROM customers",
            TEXT,
            0,
            b"ADA",
            Some("ADA".into()),
        ),
    ];
    for (sql, ty, fmt, v, want) in cases {
        let got = one(&mut sess, sql, field("x", 0, 0, *ty, *fmt), v);
        assert_eq!(s(&got), *want, "{sql}");
    }
    // Binary formats: bytea carries the pseudonym's bytes; int4 becomes NULL;
    // jsonb keeps its version byte.
    let got = one(
        &mut sess,
        "SELECT email::bytea FROM customers",
        field("x", 0, 0, 17, 1),
        b"ada@x.io",
    );
    assert_eq!(s(&got), Some(key().pseudonym(b"ada@x.io")));
    let got = one(
        &mut sess,
        "SELECT length(email) FROM customers",
        field("x", 0, 0, INT4, 1),
        &[0, 0, 0, 15],
    );
    assert_eq!(got, None);
    let got = one(
        &mut sess,
        "SELECT to_jsonb(c) FROM customers c",
        field("x", 0, 0, 3802, 1),
        b"\x01{\"a\":1}",
    );
    let want = format!("\x01\"{}\"", key().pseudonym(b"{\"a\":1}"));
    assert_eq!(s(&got), Some(want));
}

#[test]
fn views_over_masked_columns_are_masked() {
    let mut sess = Session::new(plan(&[PII]));
    let a = answer(
        &[field("contact", VIEW, 1, TEXT, 0)],
        &[&[Some(b"ada@example.com")]],
    );
    let out = sess.query("SELECT * FROM v_contacts", &a);
    assert_eq!(
        s(&rows(&out)[0][0]),
        Some(key().pseudonym(b"ada@example.com"))
    );
    // Renamed through the view, then wrapped in an expression.
    let a = answer(&[field("l", 0, 0, TEXT, 0)], &[&[Some(b"ada@example.com")]]);
    let out = sess.query("SELECT lower(contact) AS l FROM v_contacts", &a);
    assert_eq!(
        s(&rows(&out)[0][0]),
        Some(key().pseudonym(b"ada@example.com"))
    );
}

#[test]
fn detectors_scan_every_text_value() {
    let mut sess = Session::new(plan(&[
        "{detectors: [email, card, jwt, aws_key, private_key, bearer], strategy: partial, keep_last: 4}",
        "{regex: ['(?i)secret-[a-z0-9]+'], strategy: redact}",
    ]));
    // Detector-only sessions need no catalog: nothing is injected.
    let mut q = Vec::new();
    build::query(&mut q, "SELECT note FROM orders").unwrap();
    assert_eq!(sess.client(&q), q);
    let values: &[(&[u8], Option<&str>)] = &[
        (b"card 4111 1111 1111 1111 ok", Some("card ****1111 ok")),
        (b"order 1234567812345678", Some("order 1234567812345678")),
        (b"mail ada@example.com", Some("mail ****.com")),
        (b"AKIAIOSFODNN7EXAMPLE", Some("****MPLE")),
        (b"Bearer abcdefgh12345678", Some("****5678")),
        (b"x SECRET-42 y", Some("x [redacted] y")),
        (
            b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            Some("****----"),
        ),
    ];
    let data: Vec<Vec<Option<&[u8]>>> = values
        .iter()
        .map(|(v, _)| vec![Some(*v), Some(&b"7"[..])])
        .collect();
    let data: Vec<&[Option<&[u8]>]> = data.iter().map(Vec::as_slice).collect();
    let a = answer(
        &[
            field("note", ORDERS, 2, TEXT, 0),
            field("id", ORDERS, 1, INT4, 0),
        ],
        &data,
    );
    let out = sess.server(&a);
    for (r, (_, want)) in rows(&out).iter().zip(values) {
        assert_eq!(s(&r[0]).as_deref(), *want);
        assert_eq!(
            s(&r[1]).as_deref(),
            Some("7"),
            "non-text columns are not scanned"
        );
    }
    // JSON stays valid JSON.
    let a = answer(
        &[field("j", 0, 0, 114, 0)],
        &[&[Some(br#"{"m":"ada@example.com"}"#)]],
    );
    let out = sess.server(&a);
    assert_eq!(s(&rows(&out)[0][0]).as_deref(), Some(r#"{"m":"****.com"}"#));
}

#[test]
fn rows_without_a_layout_from_masked_relations_are_nulled() {
    let mut sess = Session::new(plan(&[PII]));
    // Extended protocol: Bind + Execute of a statement described earlier
    // (no RowDescription in this batch).
    sess.query(
        "SELECT 1",
        &answer(&[field("?column?", 0, 0, INT4, 0)], &[&[Some(b"1")]]),
    );
    let mut up = Vec::new();
    // Parse "s1", Bind, Execute, Sync.
    let parse = |name: &str, sql: &str| {
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        let mut m = vec![b'P'];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend(body);
        m
    };
    up.extend(parse("s1", "SELECT email FROM customers"));
    up.extend_from_slice(b"B\0\0\0\x0e\0s1\0\0\0\0\0\0\0"); // portal "", stmt s1
    up.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
    up.extend_from_slice(b"S\0\0\0\x04");
    sess.client(&up);
    let mut a = vec![b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4];
    a.extend(d(&[Some(b"ada@example.com")]));
    a.extend(c("SELECT 1"));
    a.extend(z());
    let out = sess.server(&a);
    assert_eq!(rows(&out), vec![vec![None]]);
}

#[test]
fn copy_out_of_a_masked_relation_delivers_no_rows() {
    let mut sess = Session::new(plan(&[PII]));
    let mut a = vec![b'H', 0, 0, 0, 9, 0, 0, 1, 0, 0];
    let mut data = Vec::new();
    build::copy_data(&mut data, b"1\tAda\tada@example.com\n").unwrap();
    a.extend(&data);
    a.extend_from_slice(&[b'c', 0, 0, 0, 4]);
    a.extend(c("COPY 1"));
    a.extend(z());
    let out = sess.query("COPY customers TO STDOUT", &a);
    assert!(!out.windows(3).any(|w| w == b"ada"), "copy data leaked");
    assert_eq!(out.first(), Some(&b'H'));
    // A clean relation copies unchanged.
    let mut a2 = vec![b'H', 0, 0, 0, 9, 0, 0, 1, 0, 0];
    a2.extend(&data);
    a2.extend_from_slice(&[b'c', 0, 0, 0, 4]);
    a2.extend(c("COPY 1"));
    a2.extend(z());
    assert_eq!(sess.query("COPY orders TO STDOUT", &a2), a2);
}

fn error(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    build::fields_message(&mut out, b'E', fields.iter().copied()).unwrap();
    out
}

#[test]
fn errors_after_masked_reads_do_not_quote_data() {
    let mut sess = Session::new(plan(&[PII, "{detectors: [card], strategy: redact}"]));
    let mut a = error(&[
        (b'S', "ERROR"),
        (b'C', "22P02"),
        (
            b'M',
            "invalid input syntax for type integer: \"ada@example.com\"",
        ),
        (b'D', "Key (email)=(ada@example.com) already exists."),
    ]);
    a.extend(z());
    let out = sess.query("SELECT email::int FROM customers", &a);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("ada@"), "{text}");
    let framer = Framer::new(Direction::Backend);
    let Progress::Complete(f) = framer.next(&out).unwrap() else {
        panic!()
    };
    let BackendMessage::ErrorResponse(e) = BackendMessage::parse(&f).unwrap() else {
        panic!()
    };
    assert_eq!(
        e.message(),
        Some("invalid input syntax for type integer: \"[redacted]\"")
    );
    assert_eq!(e.code(), Some("22P02"));
    assert_eq!(e.get(b'D'), None);
    // Other statements' errors keep their text; detectors still apply.
    let mut a = error(&[
        (b'S', "ERROR"),
        (b'C', "42703"),
        (b'M', "column \"x\" does not exist"),
    ]);
    a.extend(z());
    assert_eq!(sess.query("SELECT x FROM orders", &a), a);
    let mut a = error(&[
        (b'S', "ERROR"),
        (b'C', "22P02"),
        (b'M', "bad: \"4111 1111 1111 1111\""),
    ]);
    a.extend(z());
    let out = sess.query("SELECT note::int FROM orders", &a);
    assert!(String::from_utf8_lossy(&out).contains("bad: \"[redacted]\""));
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    msg(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    )
}

/// Bind of `stmt` to the unnamed portal with the given result formats.
fn bind_msg(stmt: &str, formats: &[i16]) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(stmt.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0]);
    b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
    for f in formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    msg(b'B', &b)
}

#[test]
fn executes_without_describe_use_the_statement_s_remembered_layout() {
    let mut sess = Session::new(plan(&[PII]));
    sess.query(
        "SELECT 1",
        &answer(&[field("?column?", 0, 0, INT4, 0)], &[&[Some(b"1")]]),
    );
    // Batch 1: Parse + Describe statement + Sync.
    let mut up = parse_msg("s1", "SELECT id, email FROM customers WHERE id = $1");
    up.extend(msg(b'D', b"Ss1\0"));
    up.extend(msg(b'S', b""));
    sess.client(&up);
    let mut a = msg(b'1', b"");
    a.extend(msg(b't', &[0, 1, 0, 0, 0, 23]));
    a.extend(t(&[
        field("id", CUSTOMERS, 1, INT4, 0),
        field("email", CUSTOMERS, 3, TEXT, 0),
    ]));
    a.extend(z());
    sess.server(&a);
    // Batch 2: Bind (binary results) + Execute + Sync, no Describe.
    let mut up = bind_msg("s1", &[1]);
    up.extend(msg(b'E', b"\0\0\0\0\0"));
    up.extend(msg(b'S', b""));
    sess.client(&up);
    let mut a = msg(b'2', b"");
    a.extend(d(&[Some(&[0, 0, 0, 1]), Some(b"ada@example.com")]));
    a.extend(c("SELECT 1"));
    a.extend(z());
    let out = sess.server(&a);
    assert_eq!(
        rows(&out),
        vec![vec![
            Some(vec![0, 0, 0, 1]),
            Some(key().pseudonym(b"ada@example.com").into_bytes())
        ]]
    );
    // Re-parsed under the same name with other text: the old layout is not
    // used (rows are nulled instead).
    let mut up = parse_msg("s1", "SELECT email, id FROM customers");
    up.extend(bind_msg("s1", &[]));
    up.extend(msg(b'E', b"\0\0\0\0\0"));
    up.extend(msg(b'S', b""));
    sess.client(&up);
    let mut a = msg(b'1', b"");
    a.extend(msg(b'2', b""));
    a.extend(d(&[Some(b"ada@example.com"), Some(b"1")]));
    a.extend(c("SELECT 1"));
    a.extend(z());
    assert_eq!(rows(&sess.server(&a)), vec![vec![None, None]]);
}

#[test]
fn notifications_after_masked_reads_carry_no_data() {
    let mut sess = Session::new(plan(&[PII, "{detectors: [card], strategy: redact}"]));
    let note = |payload: &str| {
        let mut out = Vec::new();
        build::notification_response(&mut out, 7, "c", payload).unwrap();
        out
    };
    let mut a = answer(&[field("pg_notify", 0, 0, 2278, 0)], &[&[Some(b"")]]);
    a.splice(a.len() - 6..a.len() - 6, note("ada@example.com"));
    let out = sess.query("SELECT pg_notify('c', email) FROM customers", &a);
    let mut want = note("[redacted]");
    want.extend(z());
    assert!(out.ends_with(&want), "{}", String::from_utf8_lossy(&out));
    // Other notifications pass, scanned by the detectors.
    let mut a = note("order 12 shipped");
    a.extend(z());
    assert_eq!(sess.query("SELECT 1 FROM orders", &a), a);
    let mut a = note("card 4111 1111 1111 1111");
    a.extend(z());
    let out = sess.query("SELECT 2 FROM orders", &a);
    let mut want = note("card [redacted]");
    want.extend(z());
    assert_eq!(out, want);
}

#[test]
fn without_the_catalog_columns_are_judged_by_the_globs() {
    let mut sess = Session::new(plan(&[PII]));
    let mut q = Vec::new();
    build::query(&mut q, "SELECT id, email AS e FROM customers").unwrap();
    let up = sess.client(&q);
    assert!(up.len() > q.len(), "the catalog query goes first");
    // The catalog query fails (e.g. a replication connection).
    let mut failed = error(&[(b'S', "ERROR"), (b'C', "42501"), (b'M', "denied")]);
    failed.extend(z());
    assert!(
        sess.server(&failed).is_empty(),
        "the failure is the proxy's own"
    );
    let a = answer(
        &[
            field("id", CUSTOMERS, 1, INT4, 0),
            field("e", CUSTOMERS, 3, TEXT, 0),
        ],
        &[&[Some(b"1"), Some(b"ada@example.com")]],
    );
    let r = rows(&sess.server(&a));
    assert_eq!(s(&r[0][0]).as_deref(), Some("1"));
    assert_eq!(s(&r[0][1]), Some(key().pseudonym(b"ada@example.com")));
}
