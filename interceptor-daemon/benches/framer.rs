//! Framing cost per message and per byte: the PostgreSQL [`Framer`] in both
//! directions over the buffers a proxy actually sees (pgbench's simple-mode
//! query, an extended-protocol batch, a result set of 1 and 100 rows), and the
//! Redis and MySQL codecs' equivalents. Figures and machine: bench/MICRO.md.
//!
//! Each iteration frames a whole buffer, message by message, the way the
//! connection handlers do; the message count is checked once before timing so
//! a framing regression fails the bench instead of speeding it up.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interceptor_daemon::protocol::{
    mysql,
    postgres::{Direction, FieldDescription, Framer, Progress, TransactionStatus, build},
    redis::{self, ReplyScanner, Scan},
};

/// pgbench -S, simple protocol: one Query per transaction.
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48823;";

/// A frontend message from its tag and body (the builders cover only what the
/// proxy itself sends, not Parse/Bind/Describe/Execute).
fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

fn simple_query() -> Vec<u8> {
    let mut out = Vec::new();
    build::query(&mut out, PGBENCH_SELECT).unwrap();
    out
}

/// What pgbench -M extended sends per transaction: Parse (unnamed statement,
/// one parameter), Bind (one text parameter), Describe portal, Execute, Sync.
fn extended_batch() -> Vec<u8> {
    let mut out = Vec::new();
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0");
    parse.extend_from_slice(&1u16.to_be_bytes());
    parse.extend_from_slice(&23u32.to_be_bytes()); // int4
    msg(&mut out, b'P', &parse);
    let mut bind = b"\0\0".to_vec(); // portal "", statement ""
    bind.extend_from_slice(&0u16.to_be_bytes()); // all parameters text
    bind.extend_from_slice(&1u16.to_be_bytes());
    bind.extend_from_slice(&5i32.to_be_bytes());
    bind.extend_from_slice(b"48823");
    bind.extend_from_slice(&0u16.to_be_bytes()); // all results text
    msg(&mut out, b'B', &bind);
    msg(&mut out, b'D', b"P\0");
    msg(&mut out, b'E', b"\0\0\0\0\0");
    msg(&mut out, b'S', b"");
    out
}

/// `SELECT * FROM pgbench_accounts ... LIMIT rows`: RowDescription, `rows`
/// DataRows of (aid, bid, abalance, filler char(84)), CommandComplete,
/// ReadyForQuery.
fn result_set(rows: usize) -> Vec<u8> {
    let field = |name, column, type_oid, type_size, type_modifier| FieldDescription {
        name,
        table_oid: 16_397,
        column,
        type_oid,
        type_size,
        type_modifier,
        format: 0,
    };
    let mut out = Vec::new();
    build::row_description(
        &mut out,
        [
            field("aid", 1, 23, 4, -1),
            field("bid", 2, 23, 4, -1),
            field("abalance", 3, 23, 4, -1),
            field("filler", 4, 1042, -1, 88),
        ],
    )
    .unwrap();
    let filler = [b' '; 84];
    for i in 0..rows {
        let aid = (48_823 + i).to_string();
        build::data_row(
            &mut out,
            [
                Some(aid.as_bytes()),
                Some(&b"1"[..]),
                Some(&b"-4211"[..]),
                Some(&filler[..]),
            ],
        )
        .unwrap();
    }
    build::command_complete(&mut out, &format!("SELECT {rows}")).unwrap();
    build::ready_for_query(&mut out, TransactionStatus::Idle);
    out
}

/// Frames every message of `buf`; returns how many there were.
fn frame_all(framer: &Framer, mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while !buf.is_empty() {
        match framer.next(buf) {
            Ok(Progress::Complete(m)) => {
                n += 1;
                buf = &buf[m.len()..];
            }
            other => panic!("framing failed: {other:?}"),
        }
    }
    n
}

fn postgres(c: &mut Criterion) {
    let mut g = c.benchmark_group("postgres_framer");
    let cases = [
        (
            "frontend/pgbench_simple_query",
            Direction::Frontend,
            simple_query(),
            1,
        ),
        (
            "frontend/extended_batch",
            Direction::Frontend,
            extended_batch(),
            5,
        ),
        ("backend/result_1_row", Direction::Backend, result_set(1), 4),
        (
            "backend/result_100_rows",
            Direction::Backend,
            result_set(100),
            103,
        ),
    ];
    for (name, direction, buf, messages) in cases {
        let framer = Framer::new(direction);
        assert_eq!(frame_all(&framer, &buf), messages, "{name}");
        g.throughput(Throughput::ElementsAndBytes {
            elements: messages,
            bytes: buf.len() as u64,
        });
        g.bench_function(name, |b| b.iter(|| frame_all(&framer, black_box(&buf))));
    }
    g.finish();
}

/// A RESP multi-bulk command.
fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn redis_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("redis_codec");

    // A pipelined client: 50 GETs and 50 SETs of 100-byte values, as
    // redis-benchmark -P sends them.
    let value = [b'x'; 100];
    let mut requests = Vec::new();
    for i in 0..50 {
        let key = format!("key:{i:012}");
        resp_command(&mut requests, &[b"GET", key.as_bytes()]);
        resp_command(&mut requests, &[b"SET", key.as_bytes(), &value]);
    }
    let parse_all = |mut buf: &[u8]| -> u64 {
        let mut n = 0;
        while let Some(cmd) = redis::parse_command(buf).expect("valid command") {
            n += 1;
            buf = &buf[cmd.len..];
        }
        n
    };
    assert_eq!(parse_all(&requests), 100);
    g.throughput(Throughput::ElementsAndBytes {
        elements: 100,
        bytes: requests.len() as u64,
    });
    g.bench_function("requests/pipeline_100_get_set", |b| {
        b.iter(|| parse_all(black_box(&requests)))
    });

    // Their replies (100-byte bulk strings and +OK), then an LRANGE of 100
    // such elements as one reply.
    let mut replies = Vec::new();
    for _ in 0..50 {
        replies.extend_from_slice(b"$100\r\n");
        replies.extend_from_slice(&value);
        replies.extend_from_slice(b"\r\n+OK\r\n");
    }
    let mut lrange = b"*100\r\n".to_vec();
    for _ in 0..100 {
        lrange.extend_from_slice(b"$100\r\n");
        lrange.extend_from_slice(&value);
        lrange.extend_from_slice(b"\r\n");
    }
    let scan_all = |mut buf: &[u8]| -> u64 {
        let mut scanner = ReplyScanner::default();
        let mut n = 0;
        while !buf.is_empty() {
            match scanner.scan(buf) {
                Ok(Scan::Reply { len, .. }) => {
                    n += 1;
                    buf = &buf[len..];
                }
                other => panic!("scan failed: {other:?}"),
            }
        }
        n
    };
    for (name, buf, messages) in [
        ("replies/pipeline_100_get_set", &replies, 100),
        ("replies/lrange_100", &lrange, 1),
    ] {
        assert_eq!(scan_all(buf), messages, "{name}");
        g.throughput(Throughput::ElementsAndBytes {
            elements: messages,
            bytes: buf.len() as u64,
        });
        g.bench_function(name, |b| b.iter(|| scan_all(black_box(buf))));
    }
    g.finish();
}

fn mysql_packet(out: &mut Vec<u8>, seq: u8, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
}

/// A text result set the way MySQL 8 sends it with CLIENT_DEPRECATE_EOF:
/// column count, four column definitions, `rows` rows, OK.
fn mysql_result_set(rows: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = 1u8;
    let mut push = |out: &mut Vec<u8>, payload: &[u8]| {
        mysql_packet(out, seq, payload);
        seq = seq.wrapping_add(1);
    };
    push(&mut out, &[4]);
    for name in ["aid", "bid", "abalance", "filler"] {
        // catalog, schema, table, org_table, name, org_name as length-encoded
        // strings, then the 13-byte fixed part.
        let mut def = Vec::new();
        for s in ["def", "sbtest", "accounts", "accounts", name, name] {
            def.push(s.len() as u8);
            def.extend_from_slice(s.as_bytes());
        }
        def.extend_from_slice(&[0x0c, 0x3f, 0, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
        push(&mut out, &def);
    }
    let filler = [b' '; 84];
    for i in 0..rows {
        let aid = (48_823 + i).to_string();
        let mut row = Vec::new();
        for v in [aid.as_bytes(), b"1", b"-4211", &filler[..]] {
            row.push(v.len() as u8);
            row.extend_from_slice(v);
        }
        push(&mut out, &row);
    }
    push(&mut out, &[0xfe, 0, 0, 0x02, 0, 0, 0]);
    out
}

fn mysql_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("mysql_framer");
    let mut query = Vec::new();
    let mut payload = vec![mysql::COM_QUERY];
    payload.extend_from_slice(b"SELECT abalance FROM accounts WHERE aid = 48823");
    mysql_packet(&mut query, 0, &payload);
    let frame_all = |mut buf: &[u8]| -> u64 {
        let mut n = 0;
        while !buf.is_empty() {
            let p = mysql::frame(buf).expect("a whole packet");
            n += 1;
            buf = &buf[p.wire_len()..];
        }
        n
    };
    for (name, buf, messages) in [
        ("client/com_query", query, 1),
        ("server/result_1_row", mysql_result_set(1), 7),
        ("server/result_100_rows", mysql_result_set(100), 106),
    ] {
        assert_eq!(frame_all(&buf), messages, "{name}");
        g.throughput(Throughput::ElementsAndBytes {
            elements: messages,
            bytes: buf.len() as u64,
        });
        g.bench_function(name, |b| b.iter(|| frame_all(black_box(&buf))));
    }
    g.finish();
}

criterion_group!(benches, postgres, redis_codec, mysql_codec);
criterion_main!(benches);
