//! A small lexer faithful to PostgreSQL's `scan.l` in the one thing the
//! classifier needs from it: where the top-level statements of a simple-query
//! string begin and end, and which bare words are code (outside string
//! literals, quoted identifiers, dollar quotes and comments).
//!
//! It is deliberately independent of sqlparser's tokenizer: the classifier
//! splits with this lexer, then requires sqlparser to see exactly one statement
//! and the same sequence of words in every piece. Any disagreement means the
//! two lexers read the text differently, and the string is refused.

use std::ops::Range;

/// Why the text could not be lexed the way PostgreSQL would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LexError {
    Unterminated(&'static str),
    /// `U&'...'` / `U&"..."`: Unicode escapes are not decoded here, and
    /// sqlparser reads them as `U & "..."`, so they are refused outright.
    UnicodeEscape,
}

/// One top-level statement: its byte range and the words that are code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub range: Range<usize>,
    /// Bare words (keywords and unquoted identifiers) lower-cased as
    /// PostgreSQL does (ASCII only), and quoted identifiers prefixed with `"`.
    pub words: Vec<String>,
}

/// Splits `sql` into non-empty statements. `backslash_quotes` selects the
/// reading of plain `'...'` strings with `standard_conforming_strings = off`
/// (backslash escapes); `E'...'` strings always take backslash escapes.
pub(crate) fn split(sql: &str, backslash_quotes: bool) -> Result<Vec<Piece>, LexError> {
    let b = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut words = Vec::new();
    let mut has_tokens = false;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let next = b.get(i + 1).copied();
        match c {
            b';' => {
                if has_tokens {
                    pieces.push(Piece {
                        range: start..i,
                        words: std::mem::take(&mut words),
                    });
                }
                has_tokens = false;
                i += 1;
                start = i;
                continue;
            }
            _ if class(c) & SPACE != 0 => {
                i += 1;
                continue;
            }
            b'-' if next == Some(b'-') => {
                i = line_comment_end(b, i);
                continue;
            }
            b'/' if next == Some(b'*') => {
                i = block_comment_end(b, i)?;
                continue;
            }
            _ => {}
        }
        has_tokens = true;
        i = match c {
            b'\'' => string_end(b, i + 1, backslash_quotes)?,
            b'"' => {
                let (end, ident) = quoted_ident(b, i + 1)?;
                words.push(format!("\"{ident}"));
                end
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_end) => dollar_end(b, i, tag_end)?,
                // `$1` parameter or a lone `$`.
                None => run_end(b, i + 1, DIGIT),
            },
            c if class(c) & IDENT != 0 => {
                let end = run_end(b, i + 1, IDENT_CONT);
                let word = b.get(i..end).unwrap_or_default();
                match (word, b.get(end).copied()) {
                    // String prefixes: E'' (escapes), B'' / X'' (bit strings), N'' (national).
                    ([b'e' | b'E'], Some(b'\'')) => string_end(b, end + 1, true)?,
                    ([b'b' | b'B' | b'x' | b'X' | b'n' | b'N'], Some(b'\'')) => {
                        string_end(b, end + 1, backslash_quotes)?
                    }
                    ([b'u' | b'U'], Some(b'&')) if matches!(b.get(end + 1), Some(b'\'' | b'"')) => {
                        return Err(LexError::UnicodeEscape);
                    }
                    _ => {
                        words.push(String::from_utf8_lossy(word).to_ascii_lowercase());
                        end
                    }
                }
            }
            c if class(c) & DIGIT != 0 => run_end(b, i + 1, NUMBER_CONT),
            _ => i + 1,
        };
    }
    if has_tokens {
        pieces.push(Piece {
            range: start..b.len(),
            words,
        });
    }
    Ok(pieces)
}

/// A cache key for decisions: the text with the constants that cannot change
/// a decision replaced by `?`, comments dropped and whitespace collapsed.
///
/// Only constants whose reading is the same under every setting become `?`:
/// quoted strings without a backslash (a backslash makes the boundary depend
/// on `standard_conforming_strings`) and numbers made of digits and at most
/// one dot (`1from` is `1 from` to PostgreSQL). Everything else — words, quoted
/// identifiers, operators, `;`, dollar-quoted bodies, parameters — is kept, so
/// two texts with one fingerprint classify alike. `None` when the text does
/// not lex (the caller then keys by the text itself).
pub(crate) fn fingerprint(sql: &str) -> Option<String> {
    let mut out = String::new();
    fingerprint_into(sql, &mut out).then_some(out)
}

/// [`fingerprint`] into `out` (cleared first), so that a caller deciding
/// statement after statement reuses one buffer; `false` when the text does
/// not lex (`out` then holds nothing meaningful).
pub(crate) fn fingerprint_into(sql: &str, out: &mut String) -> bool {
    // Scanned and written as bytes (the buffer moves out and back, no copy):
    // this is the per-statement cost of every cached decision.
    let mut bytes = std::mem::take(out).into_bytes();
    bytes.clear();
    let lexed = fingerprint_to(sql.as_bytes(), &mut bytes, &mut |_| {}).is_some();
    // Every byte copied is ASCII or part of a whole character of `sql`
    // (words end at an ASCII byte), so this check never fails; it keeps the
    // buffer a `String` without `unsafe`.
    match String::from_utf8(bytes) {
        Ok(s) => {
            *out = s;
            lexed
        }
        Err(e) => {
            let mut bytes = e.into_bytes();
            bytes.clear();
            *out = String::from_utf8(bytes).unwrap_or_default();
            false
        }
    }
}

/// Byte classes of the tokens that [`split`] and [`fingerprint`] both scan
/// (one definition, so the two cannot disagree on where a word or number
/// ends): one table load per byte.
const IDENT: u8 = 1;
const IDENT_CONT: u8 = 2;
const DIGIT: u8 = 4;
const SPACE: u8 = 8;
const NUMBER_CONT: u8 = 16;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut f = 0;
        if is_ident_start(c) {
            f |= IDENT | IDENT_CONT;
        }
        if c.is_ascii_digit() {
            f |= DIGIT | IDENT_CONT;
        }
        if c == b'$' {
            f |= IDENT_CONT;
        }
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            f |= SPACE;
        }
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            f |= NUMBER_CONT;
        }
        t[i] = f;
        i += 1;
    }
    t
};

fn class(c: u8) -> u8 {
    CLASS[c as usize]
}

/// End of the run of bytes from `i` whose class has `flag`.
fn run_end(b: &[u8], i: usize, flag: u8) -> usize {
    b.get(i..)
        .and_then(|rest| rest.iter().position(|&c| class(c) & flag == 0))
        .map_or(b.len(), |n| i + n)
}

/// What a text's [`fingerprint`] abstracts from, as byte ranges in order: the
/// constants it writes as `?` (a string from its opening quote, an `E` string
/// from the `E`, a number) and the unquoted words whose ASCII case it folds.
/// Tests and fuzzing change exactly these to check that texts sharing a
/// fingerprint classify alike.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Abstracted {
    pub constants: Vec<std::ops::Range<usize>>,
    pub words: Vec<std::ops::Range<usize>>,
}

/// [`Abstracted`] for `sql`; `None` when it does not lex.
pub(crate) fn abstracted(sql: &str) -> Option<Abstracted> {
    let mut a = Abstracted::default();
    let mut out = Vec::new();
    fingerprint_to(sql.as_bytes(), &mut out, &mut |t| match t {
        Token::Constant(r) => a.constants.push(r),
        Token::Word(r) => a.words.push(r),
    })?;
    Some(a)
}

/// A token the fingerprint abstracts from (see [`Abstracted`]).
enum Token {
    Constant(std::ops::Range<usize>),
    Word(std::ops::Range<usize>),
}

/// `seen` hears of every token the fingerprint abstracts from; the decision
/// path passes a no-op, which compiles away.
fn fingerprint_to(b: &[u8], out: &mut Vec<u8>, seen: &mut impl FnMut(Token)) -> Option<()> {
    // A token is at most as long as its text and each adds one separator.
    out.reserve(b.len() * 2);
    let raw = |out: &mut Vec<u8>, from: usize, to: usize| {
        out.extend_from_slice(b.get(from..to).unwrap_or_default());
    };
    // Writes a constant as `?` where that cannot change its reading; says
    // whether it did.
    let literal = |out: &mut Vec<u8>, prefix: &[u8], from: usize, to: usize| match b.get(from..to) {
        Some(body) if !body.contains(&b'\\') => {
            out.extend_from_slice(prefix);
            out.push(b'?');
            true
        }
        _ => {
            raw(out, from, to);
            false
        }
    };
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let flags = class(c);
        if flags & SPACE != 0 {
            i += 1;
            continue;
        }
        let next = b.get(i + 1).copied();
        match c {
            b'-' if next == Some(b'-') => {
                i = line_comment_end(b, i);
                continue;
            }
            b'/' if next == Some(b'*') => {
                i = block_comment_end(b, i).ok()?;
                continue;
            }
            _ => {}
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        i = if flags & IDENT != 0 {
            let end = run_end(b, i + 1, IDENT_CONT);
            match (b.get(i..end)?, b.get(end).copied()) {
                ([p @ (b'e' | b'E')], Some(b'\'')) => {
                    let close = string_end(b, end + 1, true).ok()?;
                    if literal(out, std::slice::from_ref(p), i, close) {
                        seen(Token::Constant(i..close));
                    }
                    close
                }
                ([b'b' | b'B' | b'x' | b'X' | b'n' | b'N'], Some(b'\'')) => {
                    let close = string_end(b, end + 1, false).ok()?;
                    raw(out, i, end);
                    if literal(out, b"", end, close) {
                        seen(Token::Constant(end..close));
                    }
                    close
                }
                ([b'u' | b'U'], Some(b'&')) => return None,
                (word, _) => {
                    // Folded in place: only ASCII letters, as PostgreSQL
                    // folds unquoted identifiers.
                    let from = out.len();
                    out.extend_from_slice(word);
                    if let Some(pushed) = out.get_mut(from..) {
                        pushed.make_ascii_lowercase();
                    }
                    seen(Token::Word(i..end));
                    end
                }
            }
        } else if flags & DIGIT != 0 {
            let end = run_end(b, i + 1, NUMBER_CONT);
            let token = b.get(i..end)?;
            // At most one dot: `1.2.3` is `1.2 .3` to PostgreSQL (a syntax
            // error its parser reports, not a constant).
            let mut dots = 0;
            let plain = token.iter().all(|&c| {
                dots += usize::from(c == b'.');
                c.is_ascii_digit() || c == b'.'
            });
            if plain && dots <= 1 {
                out.push(b'?');
                seen(Token::Constant(i..end));
            } else {
                raw(out, i, end);
            }
            end
        } else {
            match c {
                b'\'' => {
                    let end = string_end(b, i + 1, false).ok()?;
                    if literal(out, b"", i, end) {
                        seen(Token::Constant(i..end));
                    }
                    end
                }
                b'"' => {
                    let end = quoted_ident_end(b, i + 1).ok()?;
                    raw(out, i, end);
                    end
                }
                b'$' => {
                    let end = match dollar_tag(b, i) {
                        Some(tag_end) => dollar_end(b, i, tag_end).ok()?,
                        None => run_end(b, i + 1, DIGIT),
                    };
                    raw(out, i, end);
                    end
                }
                // Operators and punctuation: one ASCII byte (bytes from 0x80
                // up start words).
                _ => {
                    out.push(c);
                    i + 1
                }
            }
        };
    }
    Some(())
}

const fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn skip_while(b: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|&c| f(c)) {
        i += 1;
    }
    i
}

fn line_comment_end(b: &[u8], i: usize) -> usize {
    skip_while(b, i, |c| c != b'\n' && c != b'\r')
}

/// PostgreSQL block comments nest: `/* /* */ still comment */`.
fn block_comment_end(b: &[u8], mut i: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    loop {
        match (b.get(i), b.get(i + 1)) {
            (Some(b'/'), Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (Some(b'*'), Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            (Some(_), _) => i += 1,
            (None, _) => return Err(LexError::Unterminated("block comment")),
        }
    }
}

/// End (exclusive) of a `'...'` string whose body starts at `i`. `''` is a
/// quote; with `backslash`, `\` escapes the next byte.
fn string_end(b: &[u8], mut i: usize, backslash: bool) -> Result<usize, LexError> {
    loop {
        match b.get(i) {
            Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Ok(i + 1),
            Some(b'\\') if backslash => i += 2,
            Some(_) => i += 1,
            None => return Err(LexError::Unterminated("string literal")),
        }
    }
}

/// End of a `"..."` identifier whose body starts at `i`, without building
/// its value.
fn quoted_ident_end(b: &[u8], mut i: usize) -> Result<usize, LexError> {
    loop {
        match b.get(i) {
            Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
            Some(b'"') => return Ok(i + 1),
            Some(_) => i += 1,
            None => return Err(LexError::Unterminated("quoted identifier")),
        }
    }
}

/// A `"..."` identifier whose body starts at `i`: its end and its value.
fn quoted_ident(b: &[u8], mut i: usize) -> Result<(usize, String), LexError> {
    let mut value = Vec::new();
    loop {
        match b.get(i) {
            Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                value.push(b'"');
                i += 2;
            }
            Some(b'"') => return Ok((i + 1, String::from_utf8_lossy(&value).into_owned())),
            Some(&c) => {
                value.push(c);
                i += 1;
            }
            None => return Err(LexError::Unterminated("quoted identifier")),
        }
    }
}

/// If a dollar-quote delimiter (`$$` or `$tag$`) starts at `i`, its end.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let first = *b.get(i + 1)?;
    if first == b'$' {
        return Some(i + 2);
    }
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    let end = skip_while(b, i + 2, |c| {
        c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
    });
    (b.get(end) == Some(&b'$')).then_some(end + 1)
}

/// End of a dollar-quoted string whose opening delimiter is `b[i..tag_end]`.
fn dollar_end(b: &[u8], i: usize, tag_end: usize) -> Result<usize, LexError> {
    let tag = b.get(i..tag_end).unwrap_or_default();
    let body = b.get(tag_end..).unwrap_or_default();
    body.windows(tag.len())
        .position(|w| w == tag)
        .map(|p| tag_end + p + tag.len())
        .ok_or(LexError::Unterminated("dollar-quoted string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str, bs: bool) -> Vec<&str> {
        split(sql, bs)
            .unwrap()
            .into_iter()
            .map(|p| sql[p.range].trim())
            .collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(texts("select 1; select 2", false), ["select 1", "select 2"]);
        assert_eq!(texts(" ; ;select 1;; -- trailing\n", false), ["select 1"]);
        assert_eq!(
            texts("select ';' , \"a;b\"", false),
            ["select ';' , \"a;b\""]
        );
        assert_eq!(texts("select $$;$$, $x$ $$; $x$; select 2", false).len(), 2);
        assert_eq!(
            texts("select 1 -- ; drop table t\n; select 2", false).len(),
            2
        );
        assert_eq!(
            texts("select /* ; /* ; */ ; */ 1; select 2", false).len(),
            2
        );
        assert_eq!(texts("select E'\\';', 1; select 2", false).len(), 2);
        // An identifier may contain `$`: `a$$b` is not a dollar quote.
        assert_eq!(texts("select a$$b; select 2", false).len(), 2);
        // `$1` is a parameter, not a dollar quote.
        assert_eq!(texts("select $1; select $2", false).len(), 2);
    }

    #[test]
    fn standard_conforming_strings_changes_boundaries() {
        let sql = "select 'a\\'; select 2; --'";
        assert_eq!(split(sql, false).unwrap().len(), 2);
        assert_eq!(split(sql, true).unwrap().len(), 1);
        assert!(split("select 'a\\'", true).is_err());
    }

    #[test]
    fn words_skip_literals_and_comments() {
        let p = split(
            "SELECT \"Pg_Read\"(x) /* drop */ FROM T -- y\n WHERE e'z' = $q$w$q$",
            false,
        )
        .unwrap();
        assert_eq!(
            p[0].words,
            ["select", "\"Pg_Read", "x", "from", "t", "where"]
        );
    }

    #[test]
    fn fingerprints_hide_only_constants_that_cannot_matter() {
        let f = |s| fingerprint(s).unwrap();
        assert_eq!(
            f("SELECT abalance FROM pgbench_accounts WHERE aid = 123;"),
            "select abalance from pgbench_accounts where aid = ? ;"
        );
        assert_eq!(
            f("select  name /* x */ from t where e = 'a@b.c' -- y\n and n = 1.5"),
            f("SELECT name FROM t WHERE e = 'zz' AND n = 7")
        );
        // Kept verbatim: backslashes, odd numbers, identifiers, dollar bodies.
        assert_ne!(f("select 'a\\'"), f("select 'b\\'"));
        assert_ne!(f("select 1from t"), f("select 2from t"));
        assert_ne!(f("select \"A\""), f("select \"a\""));
        assert_ne!(f("select $$x$$"), f("select $$y$$"));
        assert_ne!(f("select 1; delete from t"), f("select 1"));
        assert_eq!(f("select E'x'"), "select E?");
        assert_eq!(f("select x'1f'"), "select x?");
        assert_eq!(
            f("SELECT \"A\"\"b\" FROM t WHERE x<>-1.5"),
            "select \"A\"\"b\" from t where x < > - ?"
        );
        assert!(fingerprint("select 'x").is_none());
        assert!(fingerprint("select U&'x'").is_none());
    }

    #[test]
    fn a_reused_fingerprint_buffer_holds_only_the_last_text() {
        let mut buf = String::new();
        assert!(fingerprint_into(
            "SELECT Ünïcode_Col FROM T WHERE id = 7",
            &mut buf
        ));
        // ASCII letters fold; others are kept as written (PostgreSQL folds
        // only ASCII in unquoted identifiers).
        assert_eq!(buf, "select Ünïcode_col from t where id = ?");
        assert!(fingerprint_into("select 1", &mut buf));
        assert_eq!(buf, "select ?");
        assert!(!fingerprint_into("select 'x", &mut buf));
        assert!(fingerprint_into("DELETE FROM t", &mut buf));
        assert_eq!(buf, "delete from t");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(
            split("select 'x", false),
            Err(LexError::Unterminated("string literal"))
        );
        assert!(split("select /* /* */", false).is_err());
        assert!(split("select $a$ x $b$", false).is_err());
        assert!(split("select \"x", false).is_err());
        assert_eq!(
            split("select U&\"\\0070\"", false),
            Err(LexError::UnicodeEscape)
        );
        assert_eq!(split("select u&'x'", false), Err(LexError::UnicodeEscape));
    }
}
