//! PostgreSQL responses: one record per ReadyForQuery cycle (a simple Query, or
//! an extended-protocol batch up to its Sync), holding each result's columns,
//! first rows, row count, command tag or error, taken from the messages sent to
//! the client.

use std::time::Instant;

use super::{MAX_COLUMNS, MAX_RESPONSE_BYTES, MAX_RESULTS, Recorder, clipped, rendered};
use crate::{
    audit::encode::SqlResponse,
    protocol::postgres::{BackendMessage, Direction, Framer, Progress},
};

/// Watches the server-to-client stream of one session.
pub struct PgRecorder {
    rec: Recorder,
    framer: Framer,
    /// The ReadyForQuery that ends the startup phase was seen: responses follow.
    ready: bool,
    started: Option<Instant>,
    /// The record being written, its buffers kept from one response to the next.
    response: SqlResponse,
    current: Current,
    /// Bytes of names and values recorded in this response.
    bytes: usize,
    /// Results left out of this response (beyond [`MAX_RESULTS`]).
    dropped: bool,
}

/// The result the next messages belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    None,
    Recording,
    /// Beyond [`MAX_RESULTS`]: only skipped.
    Skipping,
}

impl PgRecorder {
    pub fn new(rec: Recorder) -> PgRecorder {
        PgRecorder {
            rec,
            framer: Framer::new(Direction::Backend),
            ready: false,
            started: None,
            response: SqlResponse::default(),
            current: Current::None,
            bytes: 0,
            dropped: false,
        }
    }

    /// Observes bytes about to be written to the client: whole backend messages,
    /// as the proxy forwards or builds them (anything else ends the observation
    /// of this chunk, never the session).
    pub fn observe(&mut self, out: &[u8]) {
        let mut pos = 0;
        while pos < out.len() {
            let frame = match self.framer.next(&out[pos..]) {
                Ok(Progress::Complete(f)) => f,
                Ok(Progress::NeedMore(_)) | Err(_) => return,
            };
            pos += frame.len();
            if !self.ready {
                self.ready = frame.tag == b'Z';
                continue;
            }
            // Asynchronous messages answer no statement.
            if matches!(frame.tag, b'A' | b'N' | b'S') {
                continue;
            }
            self.started.get_or_insert_with(Instant::now);
            let Ok(msg) = BackendMessage::parse(&frame) else {
                continue;
            };
            self.on_message(msg);
        }
    }

    fn on_message(&mut self, msg: BackendMessage<'_>) {
        match msg {
            BackendMessage::RowDescription(fields) => {
                self.finish_current();
                if !self.recording() {
                    return;
                }
                let r = &mut self.response;
                for f in fields.iter().take(MAX_COLUMNS) {
                    let (name, cut) = clipped(f.name, super::MAX_VALUE_CHARS);
                    self.bytes += name.len();
                    if cut {
                        r.mark_truncated();
                    }
                    r.column(name);
                }
                if fields.len() > MAX_COLUMNS {
                    r.mark_truncated();
                }
            }
            BackendMessage::DataRow(values) => {
                if !self.recording() {
                    return;
                }
                let rows = self.rec.rows;
                let r = &mut self.response;
                if r.recorded_rows() >= rows as u64 || self.bytes >= MAX_RESPONSE_BYTES {
                    // Counted only: nothing recorded for rows beyond the limits.
                    r.count_row();
                    if rows > 0 {
                        r.mark_truncated();
                    }
                    return;
                }
                r.row(values.len().min(MAX_COLUMNS));
                for v in values.iter().take(MAX_COLUMNS) {
                    match v {
                        None => r.value(None),
                        Some(b) => {
                            let (s, cut) = rendered(b);
                            if cut {
                                r.mark_truncated();
                            }
                            self.bytes += s.len();
                            r.value(Some(&s));
                        }
                    }
                }
                if values.len() > MAX_COLUMNS {
                    r.mark_truncated();
                }
            }
            BackendMessage::CommandComplete { tag } => {
                if self.recording() {
                    let (tag, _) = clipped(tag, super::MAX_VALUE_CHARS);
                    self.response.end_result(Some(tag), None);
                }
                self.current = Current::None;
            }
            BackendMessage::EmptyQueryResponse => self.end(None),
            BackendMessage::ErrorResponse(e) => {
                if self.recording() {
                    let (message, cut) = clipped(e.message().unwrap_or(""), super::MAX_VALUE_CHARS);
                    if cut {
                        self.response.mark_truncated();
                    }
                    self.bytes += message.len();
                    let code = e.code().unwrap_or("");
                    self.response.end_result(None, Some((code, message)));
                }
                self.current = Current::None;
            }
            BackendMessage::PortalSuspended => self.end(Some("(portal suspended)")),
            BackendMessage::ReadyForQuery(_) => {
                self.finish_current();
                let started = self.started.take().unwrap_or_else(Instant::now);
                if self.dropped {
                    self.response.truncate_last();
                }
                self.rec.emit_sql(started, &mut self.response);
                self.bytes = 0;
                self.dropped = false;
            }
            // ParseComplete, BindComplete, NoData, ParameterDescription, COPY data...
            _ => {}
        }
    }

    /// Whether the current result is recorded; begins one if none is open
    /// (a DataRow or CommandComplete without a RowDescription).
    fn recording(&mut self) -> bool {
        if self.current == Current::None {
            self.current = if self.response.result_count() >= MAX_RESULTS as u64 {
                self.dropped = true;
                Current::Skipping
            } else {
                Current::Recording
            };
        }
        self.current == Current::Recording
    }

    /// The current result (or an empty one) ends with `tag`.
    fn end(&mut self, tag: Option<&str>) {
        if self.recording() {
            self.response.end_result(tag, None);
        }
        self.current = Current::None;
    }

    /// A result without its CommandComplete (the next one began, or the cycle ended).
    fn finish_current(&mut self) {
        if self.current == Current::Recording {
            self.response.end_result(None, None);
        }
        self.current = Current::None;
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing, *};
    use crate::{
        audit::record::{ResponseSummary, SqlResult},
        protocol::postgres::{
            FieldDescription, TransactionStatus,
            build::{self, ErrorSpec},
        },
    };

    fn field(name: &str) -> FieldDescription<'_> {
        FieldDescription {
            name,
            table_oid: 0,
            column: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }

    #[tokio::test]
    async fn a_cycle_becomes_one_bounded_record_of_what_was_sent() {
        let (_dir, responses) = testing::record(7, 2, |rec| {
            let mut r = PgRecorder::new(rec);
            let mut out = Vec::new();
            // Startup: ignored up to the first ReadyForQuery.
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            r.observe(&out);
            // One simple Query with two statements: 3 rows (2 recorded) then an error.
            let mut out = Vec::new();
            build::row_description(&mut out, [field("id"), field("email")]).unwrap();
            for i in 0..3u8 {
                let id = [b'1' + i];
                build::data_row(&mut out, [Some(&id[..]), Some(&b"[redacted]"[..])]).unwrap();
            }
            build::command_complete(&mut out, "SELECT 3").unwrap();
            build::error_response(
                &mut out,
                &ErrorSpec::error("42P01", "relation does not exist"),
            )
            .unwrap();
            // Split mid-cycle: observation keeps its place across writes.
            r.observe(&out);
            let mut out = Vec::new();
            build::data_row(&mut out, [None, Some(&[0xff, 0x00][..])]).unwrap();
            build::command_complete(&mut out, "SELECT 1").unwrap();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            r.observe(&out);
            // A cycle with no results (a Sync alone) records nothing.
            let mut out = Vec::new();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            r.observe(&out);
        })
        .await;
        assert_eq!(responses.len(), 1, "{responses:?}");
        let x = &responses[0];
        assert_eq!((x.session_id.as_str(), x.connection_id), ("s-1", 7));
        let ResponseSummary::Sql(results) = &x.summary else {
            panic!("{x:?}")
        };
        assert_eq!(results.len(), 3, "{results:?}");
        assert_eq!(results[0].columns, ["id", "email"]);
        assert_eq!(results[0].row_count, 3);
        assert_eq!(
            results[0].rows,
            [
                [Some("1".to_string()), Some("[redacted]".to_string())],
                [Some("2".to_string()), Some("[redacted]".to_string())]
            ]
        );
        assert!(results[0].truncated, "the third row was left out");
        assert_eq!(results[0].tag.as_deref(), Some("SELECT 3"));
        let e = results[1].error.as_ref().unwrap();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("42P01", "relation does not exist")
        );
        // A DataRow without a RowDescription (extended protocol, described earlier).
        assert_eq!(results[2].rows, [[None, Some("\\xff00".to_string())]]);
        assert_eq!(results[2].tag.as_deref(), Some("SELECT 1"));
    }

    #[tokio::test]
    async fn rows_off_counts_without_recording() {
        let (dir, _) = testing::record(1, 0, |rec| {
            let mut r = PgRecorder::new(rec);
            let mut out = Vec::new();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            build::row_description(&mut out, [field("secret")]).unwrap();
            build::data_row(&mut out, [Some(&b"hunter2"[..])]).unwrap();
            build::command_complete(&mut out, "SELECT 1").unwrap();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            r.observe(&out);
        })
        .await;
        let all: Vec<u8> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".audit"))
            .flat_map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert!(!all.windows(7).any(|w| w == b"hunter2"));
        assert!(
            all.windows(8).any(|w| w == b"SELECT 1"),
            "the summary is there"
        );
    }

    #[tokio::test]
    async fn results_beyond_the_limit_are_left_out_and_the_next_cycle_starts_clean() {
        let (_dir, responses) = testing::record(1, 5, |rec| {
            let mut r = PgRecorder::new(rec);
            let mut out = Vec::new();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            // One simple Query of MAX_RESULTS + 8 statements; a skipped one has rows.
            for i in 0..MAX_RESULTS + 8 {
                if i == MAX_RESULTS + 2 {
                    build::row_description(&mut out, [field("skipped")]).unwrap();
                    build::data_row(&mut out, [Some(&b"not recorded"[..])]).unwrap();
                    build::command_complete(&mut out, "SELECT 1").unwrap();
                } else {
                    build::command_complete(&mut out, &format!("UPDATE {i}")).unwrap();
                }
            }
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            // The next cycle: one small result, nothing of the first one in it.
            build::row_description(&mut out, [field("n")]).unwrap();
            build::data_row(&mut out, [Some(&b"7"[..])]).unwrap();
            build::command_complete(&mut out, "SELECT 1").unwrap();
            build::ready_for_query(&mut out, TransactionStatus::Idle);
            r.observe(&out);
        })
        .await;
        let responses = testing::sql(responses);
        assert_eq!(responses.len(), 2);
        let first = &responses[0];
        assert_eq!(first.len(), MAX_RESULTS);
        assert!(first[..MAX_RESULTS - 1].iter().all(|x| !x.truncated));
        assert!(
            first[MAX_RESULTS - 1].truncated,
            "results were left out after it"
        );
        assert_eq!(
            first[MAX_RESULTS - 1].tag.as_deref(),
            Some(&*format!("UPDATE {}", MAX_RESULTS - 1))
        );
        assert!(
            first
                .iter()
                .all(|x| x.columns.is_empty() && x.rows.is_empty())
        );
        assert_eq!(
            responses[1],
            [SqlResult {
                columns: vec!["n".into()],
                rows: vec![vec![Some("7".into())]],
                row_count: 1,
                tag: Some("SELECT 1".into()),
                error: None,
                truncated: false,
            }]
        );
    }
}
