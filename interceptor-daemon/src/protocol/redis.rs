//! Redis serialization protocol (RESP2 and RESP3): a pure, zero-copy codec.
//!
//! Two halves, because the two directions need different things:
//!
//! * **requests** ([`parse_command`]): a whole command is needed before it can
//!   be decided, so a command is framed completely and returned as argument
//!   slices borrowed from the buffer: multi-bulk (`*N` of `$len` strings, what
//!   every client library sends) and inline commands (`PING\r\n`, what telnet
//!   and `redis-cli --pipe`-style scripts send; quoted arguments are unescaped
//!   like the server's `sdssplitargs`, the only case that copies);
//! * **replies** ([`ReplyScanner`]): the proxy only needs to know where each
//!   top-level reply ends (to put an injected error at the right place), so
//!   replies are scanned incrementally and never buffered whole: a 100 MB bulk
//!   string is passed on as it arrives. RESP3 types (maps, sets, pushes,
//!   attributes, doubles, booleans, big numbers, verbatim and blob errors) are
//!   understood; streamed aggregates (`$?`, `*?`) are refused (Redis never sends
//!   them).
//!
//! Limits follow the server's defaults (`proto-max-bulk-len` 512 MiB, inline
//! commands up to 64 KiB) and are checked as soon as a header is seen, so a
//! hostile peer cannot make the proxy buffer something it would refuse anyway.
//! Every function is total: malformed input yields a [`RespError`], never a
//! panic (see [`fuzz`] and `fuzz/`).

use std::borrow::Cow;

/// Longest bulk string accepted (Redis `proto-max-bulk-len` default).
pub const MAX_BULK: u64 = 512 * 1024 * 1024;
/// Longest inline command line (Redis `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;
/// Most arguments in one multi-bulk command.
pub const MAX_ARGS: i64 = 1024 * 1024;
/// Longest header line (`*N`, `$N`, `+...`, `-...`) in either direction.
pub const MAX_LINE: usize = 64 * 1024;
/// Most values one reply may still announce (nested aggregates add up).
const MAX_PENDING_VALUES: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unexpected byte {0:#04x} where a RESP type marker was expected")]
    BadMarker(u8),
    #[error("invalid number in a `{0}` header")]
    BadNumber(char),
    #[error("bulk length {0} is out of range (0..={MAX_BULK})")]
    BadBulkLength(i64),
    #[error("{0} arguments is out of range (at most {MAX_ARGS})")]
    TooManyArgs(i64),
    #[error("a command argument must be a bulk string (`$`), got {0:#04x}")]
    ExpectedBulk(u8),
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    #[error("header line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("inline command longer than {MAX_INLINE} bytes")]
    InlineTooLong,
    #[error("unbalanced quotes in an inline command")]
    UnbalancedQuotes,
    #[error("streamed RESP3 aggregates/strings are not supported")]
    Streamed,
    #[error("a reply announces too many nested values")]
    TooManyValues,
}

/// One client command: its arguments (the first is the command name) and the
/// number of buffer bytes it occupies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    pub args: Vec<Cow<'a, [u8]>>,
    /// Bytes of the buffer this command occupies (its raw form is `buf[..len]`).
    pub len: usize,
    pub inline: bool,
}

impl Command<'_> {
    /// An empty command (blank inline line, `*0`, `*-1`): the server ignores it
    /// and sends no reply.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The command name, upper-cased (`GET`), or empty.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Argument `i` (0 is the name), upper-cased, for keyword checks.
    pub fn arg_upper(&self, i: usize) -> Option<String> {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
    }
}

/// Position of `\r\n` in `buf[from..]` (absolute index of `\r`), `Ok(None)` if
/// not there yet, an error once `max` bytes have gone by without one.
fn find_crlf(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[from.min(buf.len())..];
    let limit = window.len().min(max + 2);
    match window[..limit].windows(2).position(|w| w == b"\r\n") {
        Some(p) => Ok(Some(from + p)),
        None if window.len() >= max + 2 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

/// A strict decimal integer (like the server's `string2ll`: no `+`, no spaces,
/// no leading zeros beyond `0` itself).
fn parse_int(s: &[u8], marker: u8) -> Result<i64, RespError> {
    let bad = || RespError::BadNumber(marker as char);
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
        return Err(bad());
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -v } else { v })
}

/// Frames the next client command at the start of `buf`: `Ok(None)` while it
/// is incomplete.
pub fn parse_command(buf: &[u8]) -> Result<Option<Command<'_>>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<Command<'_>>, RespError> {
    let Some(end) = find_crlf(buf, 1, MAX_LINE)? else {
        return Ok(None);
    };
    let n = parse_int(&buf[1..end], b'*')?;
    let mut pos = end + 2;
    if n <= 0 {
        // The server skips these without a reply.
        return Ok(Some(Command {
            args: Vec::new(),
            len: pos,
            inline: false,
        }));
    }
    if n > MAX_ARGS {
        return Err(RespError::TooManyArgs(n));
    }
    // The count is the peer's claim: grow with what actually arrives.
    let mut args = Vec::with_capacity((n as usize).min(16));
    for _ in 0..n {
        let Some(&marker) = buf.get(pos) else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(RespError::ExpectedBulk(marker));
        }
        let Some(end) = find_crlf(buf, pos + 1, MAX_LINE)? else {
            return Ok(None);
        };
        let len = parse_int(&buf[pos + 1..end], b'$')?;
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(RespError::BadBulkLength(len));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        args.push(Cow::Borrowed(&buf[start..stop]));
        pos = stop + 2;
    }
    Ok(Some(Command {
        args,
        len: pos,
        inline: false,
    }))
}

fn parse_inline(buf: &[u8]) -> Result<Option<Command<'_>>, RespError> {
    let window = &buf[..buf.len().min(MAX_INLINE + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err(RespError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some(Command {
        args: split_args(line)?,
        len: nl + 1,
        inline: true,
    }))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command like the server does (`sdssplitargs`): spaces
/// separate arguments; "double quotes" take `\n \r \t \b \a \\ \" \xHH`
/// escapes, 'single quotes' only `\'`; a closing quote must be followed by a
/// space or the end. Unquoted arguments are borrowed.
fn split_args(line: &[u8]) -> Result<Vec<Cow<'_, [u8]>>, RespError> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(out);
        }
        let start = i;
        // Unquoted bytes are borrowed; a quote ends the argument (the server
        // requires a space or the end after the closing quote).
        let mut owned: Option<Vec<u8>> = None;
        while let Some(&c) = line.get(i) {
            if is_space(c) {
                break;
            }
            if c == b'"' || c == b'\'' {
                let mut v = line[start..i].to_vec();
                i = quoted(line, i, &mut v)?;
                if line.get(i).is_some_and(|&b| !is_space(b)) {
                    return Err(RespError::UnbalancedQuotes);
                }
                owned = Some(v);
                break;
            }
            i += 1;
        }
        out.push(match owned {
            Some(v) => Cow::Owned(v),
            None => Cow::Borrowed(&line[start..i]),
        });
    }
}

/// Reads a quoted section starting at `line[at]` (the quote) into `out`;
/// returns the index after the closing quote.
fn quoted(line: &[u8], at: usize, out: &mut Vec<u8>) -> Result<usize, RespError> {
    let q = line[at];
    let mut i = at + 1;
    loop {
        let Some(&c) = line.get(i) else {
            return Err(RespError::UnbalancedQuotes);
        };
        if c == q {
            return Ok(i + 1);
        }
        if c == b'\\' && q == b'"' {
            match line.get(i + 1) {
                Some(b'x') => {
                    if let (Some(h), Some(l)) = (
                        line.get(i + 2).copied().and_then(hex),
                        line.get(i + 3).copied().and_then(hex),
                    ) {
                        out.push(h << 4 | l);
                        i += 4;
                        continue;
                    }
                    out.push(b'x');
                    i += 2;
                }
                Some(&e) => {
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                }
                None => return Err(RespError::UnbalancedQuotes),
            }
        } else if c == b'\\' && q == b'\'' && line.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
}

/// What the scanner found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes belong to the reply in progress, which has not
    /// ended; more input is needed to go on (`n` may be 0).
    Partial(usize),
    /// A whole top-level reply ended after the first `n` bytes (counting only
    /// bytes not reported before); `marker` is its type byte (`+ - : $ * % ~ >`
    /// ...; `|` for a reply led by an attribute).
    Reply { len: usize, marker: u8 },
}

/// The first byte of every RESP2/RESP3 value a server sends.
const REPLY_MARKERS: &[u8] = b"+-:_,#($!=*~>%|";

/// Finds the ends of top-level replies in a server byte stream, keeping its
/// place across calls so replies never need to be buffered whole.
#[derive(Debug, Clone, Default)]
pub struct ReplyScanner {
    /// Values still to come in the current top-level reply.
    pending: u64,
    /// Payload bytes of the current bulk value still to come.
    bulk_left: u64,
    /// The CRLF after a bulk payload is still to come.
    crlf_left: bool,
    /// The type of the current top-level reply, once known.
    marker: Option<u8>,
}

impl ReplyScanner {
    /// Whether the stream is between two top-level replies.
    pub fn at_boundary(&self) -> bool {
        self.pending == 0 && self.bulk_left == 0 && !self.crlf_left
    }

    /// Scans `buf`, which starts right after the bytes reported so far.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, RespError> {
        let mut pos = 0usize;
        loop {
            if self.bulk_left > 0 {
                let take = self.bulk_left.min((buf.len() - pos) as u64);
                pos += take as usize;
                self.bulk_left -= take;
                if self.bulk_left > 0 {
                    return Ok(Scan::Partial(pos));
                }
            }
            if self.crlf_left {
                if buf.len() < pos + 2 {
                    return Ok(Scan::Partial(pos));
                }
                if &buf[pos..pos + 2] != b"\r\n" {
                    return Err(RespError::MissingCrlf);
                }
                pos += 2;
                self.crlf_left = false;
            }
            if self.pending == 0 {
                if let Some(marker) = self.marker.take() {
                    return Ok(Scan::Reply { len: pos, marker });
                }
                if pos >= buf.len() {
                    return Ok(Scan::Partial(pos));
                }
            }
            // A line starts with its type marker; anything else (an empty
            // line's CR, say) is refused at once rather than after its line.
            let Some(&marker) = buf.get(pos) else {
                return Ok(Scan::Partial(pos));
            };
            if !REPLY_MARKERS.contains(&marker) {
                return Err(RespError::BadMarker(marker));
            }
            let Some(end) = find_crlf(buf, pos + 1, MAX_LINE)? else {
                return Ok(Scan::Partial(pos));
            };
            if self.pending == 0 {
                // A new top-level reply starts here.
                self.pending = 1;
            }
            self.value(marker, &buf[pos + 1..end])?;
            pos = end + 2;
        }
    }

    /// Accounts for one value header.
    fn value(&mut self, marker: u8, body: &[u8]) -> Result<(), RespError> {
        if body.first() == Some(&b'?') && matches!(marker, b'$' | b'*' | b'%' | b'~' | b'=') {
            return Err(RespError::Streamed);
        }
        self.pending -= 1;
        let children: u64 = match marker {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => 0,
            b'$' | b'!' | b'=' => {
                let n = parse_int(body, marker)?;
                if n == -1 && marker == b'$' {
                    0
                } else if (0..=MAX_BULK as i64).contains(&n) {
                    self.bulk_left = n as u64;
                    self.crlf_left = true;
                    0
                } else {
                    return Err(RespError::BadBulkLength(n));
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = parse_int(body, marker)?;
                if n == -1 && marker == b'*' {
                    0
                } else if n < 0 {
                    return Err(RespError::BadNumber(marker as char));
                } else {
                    match marker {
                        b'%' => 2 * n as u64,
                        // An attribute is followed by the value it annotates.
                        b'|' => 2 * n as u64 + 1,
                        _ => n as u64,
                    }
                }
            }
            other => return Err(RespError::BadMarker(other)),
        };
        // An attribute-led reply is reported as `|` (Redis sends attributes
        // only before regular replies, never before pushes).
        if self.marker.is_none() {
            self.marker = Some(marker);
        }
        self.pending += children;
        if self.pending > MAX_PENDING_VALUES {
            return Err(RespError::TooManyValues);
        }
        Ok(())
    }
}

/// `-ERR <message>\r\n`, with line breaks in `message` turned into spaces (an
/// error line cannot carry them).
pub fn error_reply(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 7);
    out.extend_from_slice(b"-ERR ");
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    out
}

/// Where a command's keys are, as far as this codec knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys<'c> {
    pub keys: Vec<&'c [u8]>,
    /// False when the command is not in the table (or its keys depend on
    /// arguments it could not read): `keys` then holds every argument, so the
    /// caller can be conservative.
    pub exact: bool,
}

/// The key arguments of `cmd`, from a table of common commands. Unknown
/// commands yield every argument with `exact: false`.
pub fn command_keys<'c>(cmd: &'c Command<'_>) -> Keys<'c> {
    let args: Vec<&[u8]> = cmd.args.iter().skip(1).map(|a| a.as_ref()).collect();
    let exact = |keys: Vec<&'c [u8]>| Keys { keys, exact: true };
    let unknown = || Keys {
        keys: args.clone(),
        exact: false,
    };
    // keys after a `numkeys` argument at `at`.
    let numkeys = |at: usize| -> Keys<'c> {
        let n = args
            .get(at)
            .and_then(|a| parse_int(a, b'#').ok())
            .filter(|n| *n >= 0);
        match n {
            Some(n) if at + 1 + n as usize <= args.len() => {
                exact(args[at + 1..at + 1 + n as usize].to_vec())
            }
            _ => unknown(),
        }
    };
    let name = cmd.name();
    match name.as_str() {
        // No keys at all.
        "PING" | "ECHO" | "AUTH" | "HELLO" | "SELECT" | "INFO" | "CONFIG" | "FLUSHALL"
        | "FLUSHDB" | "DBSIZE" | "KEYS" | "SCAN" | "RANDOMKEY" | "MULTI" | "EXEC" | "DISCARD"
        | "UNWATCH" | "CLIENT" | "COMMAND" | "TIME" | "QUIT" | "RESET" | "SAVE" | "BGSAVE"
        | "BGREWRITEAOF" | "LASTSAVE" | "SHUTDOWN" | "MONITOR" | "SLOWLOG" | "LATENCY"
        | "SUBSCRIBE" | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE" | "SSUBSCRIBE"
        | "SUNSUBSCRIBE" | "PUBLISH" | "SPUBLISH" | "PUBSUB" | "SCRIPT" | "FUNCTION" | "ACL"
        | "ROLE" | "REPLICAOF" | "SLAVEOF" | "SWAPDB" | "WAIT" | "DEBUG" | "MODULE" | "LOLWUT"
        | "READONLY" | "READWRITE" | "CLUSTER" | "FAILOVER" | "SYNC" | "PSYNC" => exact(vec![]),
        // Every argument is a key.
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "MGET" | "WATCH" | "PFCOUNT" | "PFMERGE"
        | "SINTER" | "SUNION" | "SDIFF" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            exact(args.clone())
        }
        // The first two arguments.
        "RENAME" | "RENAMENX" | "COPY" | "SMOVE" | "RPOPLPUSH" | "LMOVE" | "BLMOVE"
        | "BRPOPLPUSH" | "GEOSEARCHSTORE" | "ZRANGESTORE" | "LCS" => {
            exact(args.iter().take(2).copied().collect())
        }
        // key value key value...
        "MSET" | "MSETNX" => exact(args.iter().step_by(2).copied().collect()),
        // Keys, then a timeout.
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" => {
            exact(args[..args.len().saturating_sub(1)].to_vec())
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => numkeys(1),
        "ZUNION" | "ZINTER" | "ZDIFF" | "ZINTERCARD" | "SINTERCARD" | "LMPOP" | "ZMPOP" => {
            numkeys(0)
        }
        "BLMPOP" | "BZMPOP" => numkeys(1),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => {
            let mut k = numkeys(1);
            if let Some(dest) = args.first() {
                k.keys.insert(0, dest);
            }
            k
        }
        "OBJECT" | "MEMORY" => match cmd.arg_upper(1).as_deref() {
            Some("ENCODING" | "FREQ" | "IDLETIME" | "REFCOUNT" | "USAGE") => {
                exact(args.get(1).copied().into_iter().collect())
            }
            Some("HELP" | "STATS" | "DOCTOR" | "MALLOC-STATS" | "PURGE") => exact(vec![]),
            _ => unknown(),
        },
        "XREAD" | "XREADGROUP" => {
            // ... STREAMS k1 k2 id1 id2
            match args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")) {
                Some(p) if (args.len() - p - 1).is_multiple_of(2) => {
                    let rest = &args[p + 1..];
                    exact(rest[..rest.len() / 2].to_vec())
                }
                _ => unknown(),
            }
        }
        // The first argument.
        "GET"
        | "SET"
        | "SETNX"
        | "SETEX"
        | "PSETEX"
        | "GETSET"
        | "GETDEL"
        | "GETEX"
        | "APPEND"
        | "STRLEN"
        | "INCR"
        | "DECR"
        | "INCRBY"
        | "DECRBY"
        | "INCRBYFLOAT"
        | "GETRANGE"
        | "SETRANGE"
        | "SUBSTR"
        | "TYPE"
        | "TTL"
        | "PTTL"
        | "EXPIRE"
        | "PEXPIRE"
        | "EXPIREAT"
        | "PEXPIREAT"
        | "EXPIRETIME"
        | "PEXPIRETIME"
        | "PERSIST"
        | "DUMP"
        | "RESTORE"
        | "HGET"
        | "HSET"
        | "HMSET"
        | "HMGET"
        | "HDEL"
        | "HGETALL"
        | "HKEYS"
        | "HVALS"
        | "HLEN"
        | "HEXISTS"
        | "HINCRBY"
        | "HINCRBYFLOAT"
        | "HSETNX"
        | "HSTRLEN"
        | "HSCAN"
        | "HRANDFIELD"
        | "LPUSH"
        | "RPUSH"
        | "LPUSHX"
        | "RPUSHX"
        | "LPOP"
        | "RPOP"
        | "LRANGE"
        | "LLEN"
        | "LINDEX"
        | "LSET"
        | "LREM"
        | "LTRIM"
        | "LINSERT"
        | "LPOS"
        | "SADD"
        | "SREM"
        | "SMEMBERS"
        | "SISMEMBER"
        | "SMISMEMBER"
        | "SCARD"
        | "SPOP"
        | "SRANDMEMBER"
        | "SSCAN"
        | "ZADD"
        | "ZREM"
        | "ZRANGE"
        | "ZRANGEBYSCORE"
        | "ZREVRANGE"
        | "ZREVRANGEBYSCORE"
        | "ZRANGEBYLEX"
        | "ZREVRANGEBYLEX"
        | "ZRANK"
        | "ZREVRANK"
        | "ZSCORE"
        | "ZMSCORE"
        | "ZCARD"
        | "ZCOUNT"
        | "ZLEXCOUNT"
        | "ZINCRBY"
        | "ZREMRANGEBYRANK"
        | "ZREMRANGEBYSCORE"
        | "ZREMRANGEBYLEX"
        | "ZSCAN"
        | "ZPOPMIN"
        | "ZPOPMAX"
        | "ZRANDMEMBER"
        | "SETBIT"
        | "GETBIT"
        | "BITCOUNT"
        | "BITPOS"
        | "BITFIELD"
        | "BITFIELD_RO"
        | "PFADD"
        | "XADD"
        | "XLEN"
        | "XRANGE"
        | "XREVRANGE"
        | "XDEL"
        | "XTRIM"
        | "XACK"
        | "XCLAIM"
        | "XAUTOCLAIM"
        | "XPENDING"
        | "XSETID"
        | "GEOADD"
        | "GEOPOS"
        | "GEODIST"
        | "GEOHASH"
        | "GEOSEARCH"
        | "GEORADIUS_RO"
        | "GEORADIUSBYMEMBER_RO" => exact(args.first().copied().into_iter().collect()),
        // SORT (BY/GET patterns, STORE), GEORADIUS (STORE), modules, anything
        // new: keys may be anywhere.
        _ => unknown(),
    }
}

/// Commands whose first argument is a subcommand (`CONFIG GET`), for rules
/// that name the pair.
pub fn has_subcommand(name: &str) -> bool {
    matches!(
        name,
        "CONFIG"
            | "CLIENT"
            | "ACL"
            | "OBJECT"
            | "MEMORY"
            | "SCRIPT"
            | "FUNCTION"
            | "CLUSTER"
            | "COMMAND"
            | "XINFO"
            | "XGROUP"
            | "MODULE"
            | "DEBUG"
            | "PUBSUB"
            | "SLOWLOG"
            | "LATENCY"
    )
}

#[doc(hidden)]
pub mod fuzz {
    //! Fuzzing entry point shared by the cargo-fuzz target (`fuzz/`, target
    //! `redis_codec`) and the in-tree randomized test.
    use super::*;

    /// Must never panic, whatever `data` is. Also checks that scanning replies
    /// in two pieces, split anywhere, finds the same boundaries as in one.
    pub fn parse_all(data: &[u8]) {
        let mut rest = data;
        while let Ok(Some(cmd)) = parse_command(rest) {
            assert!(cmd.len > 0 && cmd.len <= rest.len());
            let _ = command_keys(&cmd);
            rest = &rest[cmd.len..];
        }
        let whole = scan_all(data, &[]);
        let split = data.len() / 2;
        assert_eq!(whole, scan_all(data, &[split]), "split at {split}");
    }

    /// Reply boundaries (absolute end offsets and markers) with the input cut
    /// at `cuts`; stops at the first error (reported as a final `(usize::MAX, 0)`).
    pub fn scan_all(data: &[u8], cuts: &[usize]) -> Vec<(usize, u8)> {
        let mut s = ReplyScanner::default();
        let mut out = Vec::new();
        // `avail` grows piece by piece; `pos` is what was reported so far.
        let mut pos = 0;
        let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < data.len()).collect();
        ends.push(data.len());
        for avail in ends {
            loop {
                if pos > avail {
                    break;
                }
                match s.scan(&data[pos..avail]) {
                    Ok(Scan::Reply { len, marker }) => {
                        pos += len;
                        out.push((pos, marker));
                    }
                    Ok(Scan::Partial(n)) => {
                        pos += n;
                        break;
                    }
                    Err(_) => {
                        out.push((usize::MAX, 0));
                        return out;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> Vec<Vec<u8>> {
        let c = parse_command(buf).unwrap().unwrap();
        assert_eq!(c.len, buf.len(), "{:?}", String::from_utf8_lossy(buf));
        c.args.iter().map(|a| a.to_vec()).collect()
    }

    fn v(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_commands() {
        assert_eq!(
            args(b"*3\r\n$3\r\nSET\r\n$3\r\nk:1\r\n$0\r\n\r\n"),
            v(&["SET", "k:1", ""])
        );
        // Binary-safe: CRLF inside a bulk payload.
        assert_eq!(
            args(b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n"),
            v(&["GET", "a\r\nb"])
        );
        let c = parse_command(b"*0\r\n*1\r\n$4\r\nPING\r\n")
            .unwrap()
            .unwrap();
        assert!(c.is_empty() && c.len == 4);
        let c = parse_command(b"*-1\r\n").unwrap().unwrap();
        assert!(c.is_empty());
        // Borrowed, not copied.
        let buf = b"*1\r\n$4\r\nPING\r\n";
        let c = parse_command(buf).unwrap().unwrap();
        assert!(matches!(c.args[0], Cow::Borrowed(_)));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(args(b"PING\r\n"), v(&["PING"]));
        assert_eq!(args(b"set  a   b\n"), v(&["set", "a", "b"]));
        assert_eq!(
            args(b"SET \"a b\\x41\\n\" 'it\\'s'\r\n"),
            v(&["SET", "a bA\n", "it's"])
        );
        assert_eq!(args(b"SET x\"y z\" 1\r\n"), v(&["SET", "xy z", "1"]));
        let c = parse_command(b"\r\n").unwrap().unwrap();
        assert!(c.is_empty() && c.len == 2 && c.inline);
        assert_eq!(
            parse_command(b"SET \"a\"b c\r\n"),
            Err(RespError::UnbalancedQuotes)
        );
        assert_eq!(
            parse_command(b"SET \"abc\r\n"),
            Err(RespError::UnbalancedQuotes)
        );
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(parse_command(&long), Err(RespError::InlineTooLong));
        assert_eq!(parse_command(&long[..100]), Ok(None));
    }

    #[test]
    fn malformed_commands_are_refused_early() {
        for (bad, want) in [
            (&b"*2\r\n:1\r\n"[..], RespError::ExpectedBulk(b':')),
            (b"*x\r\n", RespError::BadNumber('*')),
            (b"*+1\r\n", RespError::BadNumber('*')),
            (b"*01\r\n", RespError::BadNumber('*')),
            (b"*99999999\r\n", RespError::TooManyArgs(99_999_999)),
            (b"*1\r\n$-1\r\n", RespError::BadBulkLength(-1)),
            // Refused from the header, before any payload arrives.
            (
                b"*1\r\n$999999999999\r\n",
                RespError::BadBulkLength(999_999_999_999),
            ),
            (b"*1\r\n$3\r\nGETXX", RespError::MissingCrlf),
            (
                b"*1\r\n$99999999999999999999\r\n",
                RespError::BadNumber('$'),
            ),
        ] {
            assert_eq!(
                parse_command(bad),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"*".to_vec();
        long.extend(std::iter::repeat_n(b'1', MAX_LINE + 2));
        assert_eq!(parse_command(&long), Err(RespError::LineTooLong));
    }

    #[test]
    fn commands_split_at_every_byte_need_more() {
        let whole: &[u8] = b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$5\r\nva\r\nl\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse_command(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(args(whole), v(&["SET", "key:1", "va\r\nl"]));
        let inline: &[u8] = b"GET \"a b\"\r\n";
        for cut in 0..inline.len() {
            assert_eq!(parse_command(&inline[..cut]), Ok(None), "cut at {cut}");
        }
    }

    const REPLIES: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*0\r\n\
%1\r\n+k\r\n~2\r\n#t\r\n,1.5\r\n_\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n\
|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n(123\r\n!3\r\nERR\r\n=7\r\ntxt:abc\r\n";

    fn expected() -> Vec<u8> {
        b"+-:$$***%_>|(!=".to_vec()
    }

    #[test]
    fn replies_resp2_and_resp3() {
        let got = fuzz::scan_all(REPLIES, &[]);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), expected());
        assert_eq!(got.last().unwrap().0, REPLIES.len());
    }

    #[test]
    fn replies_split_at_every_byte_boundary() {
        let whole = fuzz::scan_all(REPLIES, &[]);
        for cut in 0..REPLIES.len() {
            assert_eq!(fuzz::scan_all(REPLIES, &[cut]), whole, "cut at {cut}");
        }
        // And byte by byte.
        let every: Vec<usize> = (1..REPLIES.len()).collect();
        assert_eq!(fuzz::scan_all(REPLIES, &every), whole);
    }

    #[test]
    fn bulk_payloads_are_not_buffered() {
        let mut s = ReplyScanner::default();
        assert_eq!(s.scan(b"$10\r\nabc").unwrap(), Scan::Partial(8));
        assert!(!s.at_boundary());
        assert_eq!(s.scan(b"defg").unwrap(), Scan::Partial(4));
        assert_eq!(s.scan(b"hij\r").unwrap(), Scan::Partial(3));
        assert_eq!(
            s.scan(b"\r\n+OK").unwrap(),
            Scan::Reply {
                len: 2,
                marker: b'$'
            }
        );
        assert!(s.at_boundary());
    }

    #[test]
    fn malformed_replies() {
        for bad in [
            &b"?\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"%-1\r\n",
            b"$?\r\n",
            b"*?\r\n",
            b":1\r\n@\r\n",
            // Empty lines (found by the fuzzer: the scanner sliced past its
            // end and panicked), also where a nested value belongs.
            b"\r\n",
            b"\r\n\x0c/\n\n\n",
            b"*2\r\n:1\r\n\r\n",
            // Refused at the bad byte, without waiting for its line.
            b"@",
        ] {
            let got = fuzz::scan_all(bad, &[]);
            assert_eq!(
                got.last().map(|g| g.1),
                Some(0),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut s = ReplyScanner::default();
        let many = format!("*{}\r\n", u64::from(u32::MAX) + 5);
        assert_eq!(s.scan(many.as_bytes()), Err(RespError::TooManyValues));
    }

    fn keys_of(line: &str) -> (Vec<String>, bool) {
        let raw = format!("{line}\r\n");
        let c = parse_command(raw.as_bytes()).unwrap().unwrap();
        let k = command_keys(&c);
        (
            k.keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
            k.exact,
        )
    }

    #[test]
    fn key_positions() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(keys_of("get a"), (s(&["a"]), true));
        assert_eq!(keys_of("SET a 1 EX 10"), (s(&["a"]), true));
        assert_eq!(keys_of("MSET a 1 b 2"), (s(&["a", "b"]), true));
        assert_eq!(keys_of("DEL a b c"), (s(&["a", "b", "c"]), true));
        assert_eq!(keys_of("BLPOP a b 0"), (s(&["a", "b"]), true));
        assert_eq!(keys_of("EVAL s 2 a b x"), (s(&["a", "b"]), true));
        assert_eq!(keys_of("EVAL s 5 a"), (s(&["s", "5", "a"]), false));
        assert_eq!(keys_of("ZUNIONSTORE d 2 a b"), (s(&["d", "a", "b"]), true));
        assert_eq!(
            keys_of("XREAD COUNT 2 STREAMS s1 s2 0 0"),
            (s(&["s1", "s2"]), true)
        );
        assert_eq!(keys_of("OBJECT ENCODING k"), (s(&["k"]), true));
        assert_eq!(keys_of("FLUSHALL"), (s(&[]), true));
        assert_eq!(keys_of("KEYS session:*"), (s(&[]), true));
        assert_eq!(keys_of("SORT a BY w_*"), (s(&["a", "BY", "w_*"]), false));
        assert_eq!(keys_of("MYMODULE.CMD x y"), (s(&["x", "y"]), false));
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let corpus: &[&[u8]] = &[
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"EVAL \"return 1\" 1 k\r\n",
            b"XREAD STREAMS a b 0 0\r\n",
            b"MSET a 1 b\r\n",
            REPLIES,
        ];
        crate::protocol::mutate::run(corpus, 4000, b"*$\r\n:%|>~-+_\"'\\", fuzz::parse_all);
    }

    #[test]
    fn error_replies_are_one_line() {
        assert_eq!(error_reply("a\r\nb"), b"-ERR a  b\r\n");
    }
}
