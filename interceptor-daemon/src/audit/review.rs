//! The auditor-facing commands: `interceptor audit query|report|export|tail` and
//! `interceptor sessions list|replay`.
//!
//! They read the segments (through the index where it helps) while the daemon may
//! be appending, and never write to the log; the index lives in `DIR/index` unless
//! `--index` (or `INTERCEPTOR_AUDIT_INDEX`) names another place, e.g. when the log
//! directory is read-only for the auditor.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{
    cli::Output,
    export,
    format::segment_name,
    index::{self, Index},
    query::{self, DecisionFilter, Filter, Hit, IdentityFilter},
    reader::{self, Cursor},
    record::{Record, ResponseRecord},
    writer::{file_name, list_segments},
};

/// Where the index is, or not to use one.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// The index directory (derived data, rebuilt when missing or stale).
    #[arg(long, env = "INTERCEPTOR_AUDIT_INDEX", value_name = "PATH")]
    pub index: Option<PathBuf>,
    /// Read the segments directly instead of using the index.
    #[arg(long)]
    pub no_index: bool,
}

/// The record filters shared by query and export.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// NAMESPACE/SERVICEACCOUNT, or NAMESPACE/* for a whole namespace.
    #[arg(long)]
    pub identity: Option<IdentityFilter>,
    /// The target's configured name (or host:port).
    #[arg(long)]
    pub target: Option<String>,
    /// Session id (see `interceptor sessions list`).
    #[arg(long)]
    pub session: Option<String>,
    #[arg(long, value_enum)]
    pub decision: Option<DecisionFilter>,
}

#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// List the sessions (client connections) recorded in the audit log.
    List {
        /// The audit log directory.
        dir: PathBuf,
        /// Only sessions with records at or after this time (RFC 3339 or an age: 1h, 2d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        identity: Option<IdentityFilter>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Print a session's recorded operations in order, with relative timing.
    Replay {
        /// The audit log directory.
        dir: PathBuf,
        /// The session id.
        id: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        index: IndexArgs,
    },
}

fn fail(msg: impl std::fmt::Display) -> Output {
    Output {
        code: 1,
        stdout: String::new(),
        stderr: format!("interceptor: error: {msg}\n"),
    }
}

/// Build the filter from the time arguments and the rest.
pub fn filter(
    since: Option<&str>,
    until: Option<&str>,
    f: Option<&FilterArgs>,
) -> Result<Filter, String> {
    let now = SystemTime::now();
    let t = |s: Option<&str>| {
        s.map(|s| query::parse_time(s, now))
            .transpose()
            .map_err(|e| e.to_string())
    };
    Ok(Filter {
        since_ns: t(since)?,
        until_ns: t(until)?,
        identity: f.and_then(|f| f.identity.clone()),
        target: f.and_then(|f| f.target.clone()),
        session: f.and_then(|f| f.session.clone()),
        decision: f.and_then(|f| f.decision),
    })
}

/// The matching records, from the index when possible. Notes go to `stderr`.
pub fn select(
    dir: &Path,
    ix: &IndexArgs,
    f: &Filter,
    limit: Option<usize>,
    stderr: &mut String,
) -> Result<Vec<Hit>, String> {
    if !ix.no_index {
        let from_index = Index::open(dir, ix.index.as_deref())
            .and_then(|i| i.update().map(|r| (i, r)))
            .and_then(|(i, r)| {
                if let Some(why) = r.rebuilt {
                    stderr.push_str(&format!(
                        "note: audit index {} built from the segments ({why})\n",
                        i.path().display()
                    ));
                }
                i.query(f, limit)
            });
        match from_index {
            Ok(h) => return Ok(h),
            Err(e) => stderr.push_str(&format!(
                "warning: audit index unavailable ({e}); reading the segments\n"
            )),
        }
    }
    index::scan_query(dir, f, limit).map_err(|e| e.to_string())
}

type SessionRecords = (Vec<Hit>, Vec<ResponseRecord>);

/// A session's access records and recorded responses, from the index when possible.
fn select_session(
    dir: &Path,
    ix: &IndexArgs,
    f: &Filter,
    session: &str,
    stderr: &mut String,
) -> Result<SessionRecords, String> {
    if !ix.no_index {
        let from_index = Index::open(dir, ix.index.as_deref())
            .and_then(|i| i.update().map(|r| (i, r)))
            .and_then(|(i, r)| {
                if let Some(why) = r.rebuilt {
                    stderr.push_str(&format!(
                        "note: audit index {} built from the segments ({why})\n",
                        i.path().display()
                    ));
                }
                Ok((i.query(f, None)?, i.responses(session)?))
            });
        match from_index {
            Ok(h) => return Ok(h),
            Err(e) => stderr.push_str(&format!(
                "warning: audit index unavailable ({e}); reading the segments\n"
            )),
        }
    }
    let hits = index::scan_query(dir, f, None).map_err(|e| e.to_string())?;
    let responses = index::scan_responses(dir, session).map_err(|e| e.to_string())?;
    Ok((hits, responses))
}

/// How `audit query` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    pub json: bool,
    /// Each record with the responses recorded in answer to it.
    pub responses: bool,
}

/// The recorded responses answering each of `hits` (by place in the log): a
/// response answers its session's latest statement before it.
fn answers(
    dir: &Path,
    ix: &IndexArgs,
    hits: &[Hit],
    stderr: &mut String,
) -> Result<std::collections::HashMap<(u64, u64), Vec<ResponseRecord>>, String> {
    let sessions: std::collections::BTreeSet<&str> =
        hits.iter().map(|h| h.record.session_id.as_str()).collect();
    let mut out: std::collections::HashMap<(u64, u64), Vec<ResponseRecord>> =
        std::collections::HashMap::new();
    for s in sessions {
        let f = Filter {
            session: Some(s.to_string()),
            ..Filter::default()
        };
        // Every statement of the session (in time order), not only the
        // selected ones: a response belongs to the one just before it.
        let (all, responses) = select_session(dir, ix, &f, s, stderr)?;
        for r in responses {
            let before = all.partition_point(|h| h.record.time_ns <= r.time_ns);
            if let Some(h) = before.checked_sub(1).and_then(|i| all.get(i)) {
                out.entry((h.segment, h.offset)).or_default().push(r);
            }
        }
    }
    Ok(out)
}

/// `audit query`.
pub fn query(
    dir: &Path,
    since: Option<&str>,
    until: Option<&str>,
    f: &FilterArgs,
    limit: Option<usize>,
    shape: Shape,
    ix: &IndexArgs,
) -> Output {
    let flt = match filter(since, until, Some(f)) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut stderr = String::new();
    let hits = match select(dir, ix, &flt, limit, &mut stderr) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mut answered = if shape.responses {
        match answers(dir, ix, &hits, &mut stderr) {
            Ok(a) => a,
            Err(e) => return fail(e),
        }
    } else {
        std::collections::HashMap::new()
    };
    let mut answers_of = |h: &Hit| answered.remove(&(h.segment, h.offset)).unwrap_or_default();
    let stdout = if shape.json {
        hits.iter()
            .map(|h| {
                let mut v = query::hit_json(h);
                if shape.responses
                    && let Some(m) = v.as_object_mut()
                {
                    let rs: Vec<serde_json::Value> = answers_of(h)
                        .iter()
                        .map(|r| {
                            let mut j = serde_json::to_value(r).unwrap_or_default();
                            if let Some(o) = j.as_object_mut() {
                                o.insert("time".into(), query::format_time(r.time_ns).into());
                            }
                            j
                        })
                        .collect();
                    m.insert("responses".into(), rs.into());
                }
                format!("{v}\n")
            })
            .collect()
    } else {
        let table = query::hits_table(&hits);
        let mut s = String::new();
        let mut lines = table.lines();
        if let Some(header) = lines.next() {
            s.push_str(header);
            s.push('\n');
        }
        for (line, h) in lines.zip(&hits) {
            s.push_str(line);
            s.push('\n');
            for r in answers_of(h) {
                for l in query::response_lines("", &r) {
                    s.push_str(&format!("  {l}\n"));
                }
            }
        }
        s.push_str(&format!("{} records\n", hits.len()));
        s
    };
    Output {
        code: 0,
        stdout,
        stderr,
    }
}

/// `audit report`.
pub fn report(dir: &Path, since: &str, until: Option<&str>, json: bool, ix: &IndexArgs) -> Output {
    let flt = match filter(Some(since), until, None) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut stderr = String::new();
    let hits = match select(dir, ix, &flt, None, &mut stderr) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let reviews = query::review(hits.iter().map(|h| &h.record));
    let period = format!(
        "{} .. {}",
        flt.since_ns.map_or("-".into(), query::format_time),
        flt.until_ns.map_or("now".into(), query::format_time)
    );
    let stdout = if json {
        let v = serde_json::json!({ "period": period, "identities": reviews });
        format!("{v}\n")
    } else {
        format!(
            "access review {period}: {} records, {} identities\n{}",
            hits.len(),
            reviews.len(),
            query::review_text(&reviews)
        )
    };
    Output {
        code: 0,
        stdout,
        stderr,
    }
}

/// `audit export`.
pub fn export(
    dir: &Path,
    since: &str,
    until: Option<&str>,
    f: &FilterArgs,
    out: &Path,
    key_file: Option<&Path>,
) -> Output {
    let flt = match filter(Some(since), until, Some(f)) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match export::export(dir, &flt, out, key_file) {
        Ok(s) => {
            let m = &s.manifest;
            let mut stdout = format!(
                "exported {} records (segments {}..={}) to {}\n",
                m.selected_count,
                m.first_segment,
                m.last_segment,
                s.out.display()
            );
            if !m.responses.is_empty() {
                stdout.push_str(&format!(
                    "with {} recorded responses to them\n",
                    m.responses.len()
                ));
            }
            match (&m.manifest_signer, &m.unsigned_reason) {
                (Some(k), _) => stdout.push_str(&format!("manifest signed by {k}\n")),
                (None, why) => stdout.push_str(&format!(
                    "manifest UNSIGNED ({})\n",
                    why.as_deref().unwrap_or("no key")
                )),
            }
            let mut stderr = String::new();
            if m.left_out_unsigned > 0 {
                stderr.push_str(&format!(
                    "warning: {} matching records are not covered by a signed checkpoint yet and were left out; export again after the next checkpoint\n",
                    m.left_out_unsigned
                ));
            }
            Output {
                code: 0,
                stdout,
                stderr,
            }
        }
        Err(e) => fail(e),
    }
}

/// `audit verify PACKAGE`: one `OK:` block with status 0, or `FAILED: FILE: why`.
pub fn verify_package(
    path: &Path,
    trusted: Option<&ed25519_dalek::VerifyingKey>,
    stderr: String,
) -> Output {
    match export::verify_package(path, trusted) {
        Ok(r) => {
            let m = &r.manifest;
            let mut s = format!(
                "OK: evidence package {}: {} files match the manifest\n",
                path.display(),
                r.files_checked
            );
            s.push_str(&format!(
                "segments {}..={}: {} records, {} checkpoints verified, signed by {}\n",
                r.log.first_segment,
                r.log.last_segment,
                r.log.records,
                r.log.checkpoints,
                m.public_keys.join(" -> ")
            ));
            s.push_str(&format!(
                "{} selected records present and verified (exported by {} from node {} at {})\n",
                m.selected_count, m.exported_by, m.node, m.exported_at
            ));
            if !m.responses.is_empty() {
                s.push_str(&format!(
                    "{} recorded responses to them present and verified\n",
                    m.responses.len()
                ));
            }
            match &r.manifest_signed_by {
                Some(k) if r.manifest_signer_known => {
                    s.push_str(&format!("manifest signed by {k} (a key of this log)\n"));
                }
                Some(k) => s.push_str(&format!(
                    "manifest signed by {k}, which signed none of the included checkpoints\n"
                )),
                None => s.push_str(&format!(
                    "manifest unsigned ({})\n",
                    m.unsigned_reason.as_deref().unwrap_or("no reason given")
                )),
            }
            if m.left_out_unsigned > 0 {
                s.push_str(&format!(
                    "note: {} matching records were not yet signed when exported and are not in the package\n",
                    m.left_out_unsigned
                ));
            }
            Output {
                code: 0,
                stdout: s,
                stderr,
            }
        }
        Err(e) => Output {
            code: 1,
            stdout: format!("FAILED: {e}\n"),
            stderr,
        },
    }
}

/// What `audit tail` prints: access records and recorded responses, in log order.
enum Tailed {
    Access(Box<Hit>),
    Response(query::ResponseHit),
}

fn tail_line(t: &Tailed, json: bool) -> String {
    let h = match t {
        Tailed::Access(h) => h,
        Tailed::Response(r) if json => return format!("{}\n", query::response_json(r)),
        Tailed::Response(r) => return query::response_text(&r.record),
    };
    if json {
        let mut v = query::hit_json(h);
        if let Some(m) = v.as_object_mut() {
            m.insert("kind".into(), "access".into());
        }
        return format!("{v}\n");
    }
    let r = &h.record;
    format!(
        "{} {} -> {} [{}] {} rule={} approval={} {}: {}\n",
        query::format_time(r.time_ns),
        query::identity_text(r),
        r.target,
        query::protocol_text(&r.protocol),
        query::decision_text(&r.decision),
        r.rule_id.as_deref().unwrap_or("-"),
        r.approval_ref.as_deref().unwrap_or("-"),
        query::outcome_text(&r.outcome),
        query::normalise_operation(&r.operation)
    )
}

/// `audit tail`: the last `lines` access records and recorded responses, then
/// (with `follow`) every new one as it is appended, until `out` fails (the reader went away).
pub fn tail(
    dir: &Path,
    follow: bool,
    json: bool,
    lines: usize,
    poll: Duration,
    out: &mut dyn Write,
) -> Result<(), String> {
    let segs = list_segments(dir).map_err(|e| e.to_string())?;
    let mut last: std::collections::VecDeque<Tailed> = std::collections::VecDeque::new();
    let mut cursor: Option<Cursor> = None;
    let mut prev_head = None;
    for (i, (seq, path)) in segs.iter().enumerate() {
        let r = reader::read_segment(path, *seq, None).map_err(|e| e.to_string())?;
        reader::check_link(path, prev_head, r.header_prev).map_err(|e| e.to_string())?;
        r.accept(path, i + 1 == segs.len())
            .map_err(|e| e.to_string())?;
        prev_head = Some(r.end.head);
        for h in hits(&r.entries, path)? {
            last.push_back(h);
            if last.len() > lines {
                last.pop_front();
            }
        }
        cursor = Some(r.end);
    }
    for h in &last {
        out.write_all(tail_line(h, json).as_bytes())
            .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    if !follow {
        return Ok(());
    }
    loop {
        let mut got = Vec::new();
        match cursor {
            None => {
                // No segment yet: wait for the first.
                if let Some((seq, path)) = list_segments(dir).map_err(|e| e.to_string())?.first() {
                    let r = reader::read_segment(path, *seq, None).map_err(|e| e.to_string())?;
                    got.extend(hits(&r.entries, path)?);
                    cursor = Some(r.end);
                }
            }
            Some(c) => {
                // Check for the next segment first: the writer finishes a segment
                // before it creates the next, so reading this one after seeing the
                // next one exist reads it to its end.
                let next = dir.join(segment_name(c.segment + 1));
                let next_exists = next.exists();
                let path = dir.join(segment_name(c.segment));
                let from = (c.offset > 0).then_some(c);
                match reader::read_segment(&path, c.segment, from) {
                    Ok(r) => {
                        got.extend(hits(&r.entries, &path)?);
                        cursor = Some(r.end);
                        if next_exists {
                            // Sealed: it must have been read to its end.
                            r.accept(&path, false).map_err(|e| e.to_string())?;
                            let r = reader::read_segment(&next, c.segment + 1, None)
                                .map_err(|e| e.to_string())?;
                            let head = cursor.map_or(c.head, |c| c.head);
                            reader::check_link(&next, Some(head), r.header_prev)
                                .map_err(|e| e.to_string())?;
                            got.extend(hits(&r.entries, &next)?);
                            cursor = Some(r.end);
                        }
                    }
                    Err(super::AuditError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        // Removed by retention while we were behind: go on with the
                        // oldest segment after it.
                        let segs = list_segments(dir).map_err(|e| e.to_string())?;
                        if let Some((seq, path)) = segs.iter().find(|(s, _)| *s > c.segment) {
                            let r = reader::read_segment(path, *seq, None)
                                .map_err(|e| e.to_string())?;
                            got.extend(hits(&r.entries, path)?);
                            cursor = Some(r.end);
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        for h in &got {
            if out.write_all(tail_line(h, json).as_bytes()).is_err() {
                return Ok(());
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
}

fn hits(entries: &[reader::Entry], path: &Path) -> Result<Vec<Tailed>, String> {
    let name = file_name(path);
    let mut out = Vec::new();
    for e in entries {
        match e.decode(&name).map_err(|e| e.to_string())? {
            Record::Access(record) => out.push(Tailed::Access(Box::new(Hit {
                segment: e.segment,
                offset: e.offset,
                seq: e.seq,
                hash: e.hash,
                record,
            }))),
            Record::Response(record) => out.push(Tailed::Response(query::ResponseHit {
                segment: e.segment,
                offset: e.offset,
                seq: e.seq,
                hash: e.hash,
                record,
            })),
            _ => {}
        }
    }
    Ok(out)
}

/// `interceptor sessions ...`.
pub fn sessions(cmd: SessionsCommand) -> Output {
    match cmd {
        SessionsCommand::List {
            dir,
            since,
            until,
            identity,
            json,
            index,
        } => {
            let fa = FilterArgs {
                identity,
                target: None,
                session: None,
                decision: None,
            };
            let flt = match filter(since.as_deref(), until.as_deref(), Some(&fa)) {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            let mut stderr = String::new();
            let hits = match select(&dir, &index, &flt, None, &mut stderr) {
                Ok(h) => h,
                Err(e) => return fail(e),
            };
            let list = query::sessions(hits.iter().map(|h| &h.record));
            let stdout = if json {
                list.iter()
                    .map(|s| format!("{}\n", serde_json::to_string(s).unwrap_or_default()))
                    .collect()
            } else {
                format!("{}{} sessions\n", query::sessions_table(&list), list.len())
            };
            Output {
                code: 0,
                stdout,
                stderr,
            }
        }
        SessionsCommand::Replay {
            dir,
            id,
            json,
            index,
        } => {
            let flt = Filter {
                session: Some(id.clone()),
                ..Filter::default()
            };
            let mut stderr = String::new();
            let (hits, responses) = match select_session(&dir, &index, &flt, &id, &mut stderr) {
                Ok(h) => h,
                Err(e) => return fail(e),
            };
            if hits.is_empty() {
                return Output {
                    code: 1,
                    stdout: String::new(),
                    stderr: format!("{stderr}interceptor: error: no records for session {id}\n"),
                };
            }
            let stdout = if json {
                let t0 = hits[0]
                    .record
                    .time_ns
                    .min(responses.first().map_or(u64::MAX, |r| r.time_ns));
                let offset = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
                let mut lines: Vec<(u64, String)> = hits
                    .iter()
                    .map(|h| {
                        let mut v = query::hit_json(h);
                        if let Some(m) = v.as_object_mut() {
                            m.insert("kind".into(), "access".into());
                            m.insert("offset_s".into(), offset(h.record.time_ns).into());
                        }
                        (h.record.time_ns, format!("{v}\n"))
                    })
                    .collect();
                for r in &responses {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("kind".into(), "response".into());
                        m.insert("time".into(), query::format_time(r.time_ns).into());
                        m.insert("offset_s".into(), offset(r.time_ns).into());
                    }
                    lines.push((r.time_ns, format!("{v}\n")));
                }
                // Stable: a statement stays before a response of the same instant.
                lines.sort_by_key(|(t, _)| *t);
                lines.into_iter().map(|(_, l)| l).collect()
            } else {
                query::replay_text(&id, &hits, &responses)
            };
            Output {
                code: 0,
                stdout,
                stderr,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        AuditConfig, AuditLog,
        record::{sample_access, sample_response},
    };

    /// A log with a statement and its (masked) response, as the writer leaves it.
    fn log_with_a_response(dir: &Path, denied: bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (log, _) = AuditLog::open(AuditConfig::new(dir, "node-a"))
                .await
                .unwrap();
            log.append(&sample_access(0)).await.unwrap();
            log.append_response(sample_response(1)).await.unwrap();
            if denied {
                let mut a = sample_access(2);
                a.decision = crate::audit::Decision::Deny;
                log.append(&a).await.unwrap();
                let mut r = sample_response(3);
                r.summary = crate::audit::record::ResponseSummary::Sql(vec![
                    crate::audit::record::SqlResult {
                        error: Some(crate::audit::record::SqlError {
                            code: "42501".into(),
                            message: "denied".into(),
                        }),
                        ..Default::default()
                    },
                ]);
                log.append_response(r).await.unwrap();
            }
            log.close().await.unwrap();
        });
    }

    #[test]
    fn tail_prints_responses_after_their_statement() {
        let tmp = tempfile::tempdir().unwrap();
        log_with_a_response(tmp.path(), false);
        let mut out = Vec::new();
        tail(
            tmp.path(),
            false,
            false,
            10,
            Duration::from_millis(10),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].contains("shop/orders -> orders-db [postgres] allow"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" session sess-0 conn 0  result  SELECT 2  [2 rows]"),
            "{text}"
        );
        assert_eq!(
            lines[2..],
            [
                "    | id | email |",
                "    | 1 | [redacted] |",
                "    | NULL | NULL |"
            ]
        );

        // The newest N counts responses too.
        let mut out = Vec::new();
        tail(
            tmp.path(),
            false,
            true,
            1,
            Duration::from_millis(10),
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "response");
        assert_eq!(v["session_id"], "sess-0");
        assert_eq!(v["connection_id"], 0);
        let sql = &v["summary"]["Sql"][0];
        assert_eq!(sql["columns"], serde_json::json!(["id", "email"]));
        assert_eq!(sql["rows"][0], serde_json::json!(["1", "[redacted]"]));
        assert_eq!(sql["tag"], "SELECT 2");
        assert!(v["hash"].as_str().is_some_and(|h| h.len() == 64), "{v}");
    }

    #[test]
    fn export_lists_the_responses_to_the_selected_statements() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        log_with_a_response(&dir, true);
        let out = tmp.path().join("p.tar");
        let f = FilterArgs {
            identity: None,
            target: None,
            session: Some("sess-0".into()),
            decision: None,
        };
        let records_jsonl = |out: &Path| {
            let mut ar = tar::Archive::new(std::fs::File::open(out).unwrap());
            let mut jsonl = String::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                if e.path().unwrap().to_str() == Some("records.jsonl") {
                    std::io::Read::read_to_string(&mut e, &mut jsonl).unwrap();
                }
            }
            jsonl
        };
        let kinds = |jsonl: &str| -> Vec<String> {
            jsonl
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["kind"].as_str().unwrap().to_string()
                })
                .collect()
        };
        let o = export(&dir, "2020-01-01", None, &f, &out, None);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            o.stdout.contains("with 2 recorded responses to them"),
            "{}",
            o.stdout
        );
        let o = verify_package(&out, None, String::new());
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            o.stdout
                .contains("2 recorded responses to them present and verified"),
            "{}",
            o.stdout
        );
        // records.jsonl: each statement, then what the client received.
        let jsonl = records_jsonl(&out);
        assert_eq!(
            kinds(&jsonl),
            ["access", "response", "access", "response"],
            "{jsonl}"
        );
        assert!(jsonl.contains("[redacted]"), "{jsonl}");

        // Only the denied statement: only its answer, not the rows before it.
        let deny = FilterArgs {
            decision: Some(DecisionFilter::Deny),
            ..f.clone()
        };
        let o = export(&dir, "2020-01-01", None, &deny, &out, None);
        assert!(
            o.stdout.contains("with 1 recorded responses to them"),
            "{o:?}"
        );
        let jsonl = records_jsonl(&out);
        assert_eq!(kinds(&jsonl), ["access", "response"], "{jsonl}");
        assert!(
            jsonl.contains("\"code\":\"42501\"") && !jsonl.contains("[redacted]"),
            "{jsonl}"
        );
        assert_eq!(verify_package(&out, None, String::new()).code, 0);

        // Another session's package carries none of them.
        let f = FilterArgs {
            session: Some("sess-9".into()),
            ..f
        };
        let o = export(&dir, "2020-01-01", None, &f, &out, None);
        assert_eq!(o.code, 1, "{o:?}");
    }

    #[test]
    fn query_shows_each_record_with_its_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        log_with_a_response(&dir, true);
        let ix = IndexArgs {
            index: None,
            no_index: false,
        };
        let all = FilterArgs {
            identity: None,
            target: None,
            session: None,
            decision: None,
        };
        let with = Shape {
            json: true,
            responses: true,
        };
        for ix in [
            ix.clone(),
            IndexArgs {
                no_index: true,
                ..ix.clone()
            },
        ] {
            let o = query(&dir, None, None, &all, None, with, &ix);
            assert_eq!(o.code, 0, "{o:?}");
            let v: Vec<serde_json::Value> = o
                .stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(v.len(), 2, "{}", o.stdout);
            assert_eq!(v[0]["responses"][0]["summary"]["Sql"][0]["tag"], "SELECT 2");
            assert_eq!(v[0]["responses"].as_array().unwrap().len(), 1);
            assert_eq!(v[1]["decision"], "Deny");
            assert_eq!(
                v[1]["responses"][0]["summary"]["Sql"][0]["error"]["code"],
                "42501"
            );
        }
        // Only the denied one selected: still its own answer, not the rows before it.
        let deny = FilterArgs {
            decision: Some(DecisionFilter::Deny),
            ..all.clone()
        };
        let o = query(
            &dir,
            None,
            None,
            &deny,
            None,
            Shape {
                json: false,
                responses: true,
            },
            &ix,
        );
        let lines: Vec<&str> = o.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{}", o.stdout);
        assert!(lines[1].contains("deny"), "{}", o.stdout);
        assert_eq!(lines[2], "    result  ERROR 42501 denied");
        assert_eq!(lines[3], "1 records");
        // Without --responses the output is as before.
        let o = query(&dir, None, None, &all, None, Shape::default(), &ix);
        assert!(!o.stdout.contains("result"), "{}", o.stdout);
    }
}
