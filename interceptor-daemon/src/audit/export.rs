//! Evidence packages: the records an auditor asked for, with everything needed to
//! verify them on another machine.
//!
//! A package is a tar file:
//!
//! ```text
//! manifest.json          what was selected and from where, every other file's SHA-256
//! manifest.sig           Ed25519 signature of manifest.json by the node key (if readable)
//! records.jsonl          the selected records and the responses recorded for them,
//!                        one JSON object a line (`kind`: access|response)
//! keys/signers.txt       the public keys that signed the included checkpoints, in order
//! segments/seg-N.audit   the log segments that hold the selected records
//! ```
//!
//! The segments are copied whole (the newest one up to the first checkpoint after
//! the last selected record), so they verify exactly like the log they came from:
//! their chain, Merkle roots and checkpoint signatures (see [`super::verify`]). Only
//! the segments before them are missing, which the verifier accepts for a package
//! because the first included segment starts right after a checkpoint. Records not
//! yet covered by a checkpoint when exporting are left out (and counted): an
//! auditor gets only signed evidence.
//!
//! Verifying a package checks every file's SHA-256 against the manifest (so the
//! first altered file is named), the manifest signature, the segments, and that the
//! selection is exactly the records of the included segments that match the query.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    path::{Component, Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    AuditError,
    format::{self, hex},
    keys,
    query::{self, Filter, Hit},
    reader::{self, Entry},
    record::{Record, now_ns},
    verify::{self, VerifyError},
    writer::{file_name, list_segments},
};

pub const PACKAGE_FORMAT: &str = "interceptor-audit-export/v1";
const MANIFEST: &str = "manifest.json";
const MANIFEST_SIG: &str = "manifest.sig";
const SIG_DOMAIN: &[u8] = b"interceptor-audit/export-manifest/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] AuditError),
    #[error("the log does not verify: {0}")]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Nothing(String),
    #[error("{path}: {why}")]
    Package { path: String, why: String },
}

fn pkg_err(path: impl Into<String>, why: impl Into<String>) -> ExportError {
    ExportError::Package {
        path: path.into(),
        why: why.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selected {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The node named in the segment headers.
    pub node: String,
    /// The host that made the package.
    pub exported_by: String,
    pub exported_at: String,
    pub query: Filter,
    pub first_segment: u64,
    pub last_segment: u64,
    /// Chain head at the end of the included segments.
    pub chain_head: String,
    /// Public keys of the included checkpoints, in the order the log used them.
    pub public_keys: Vec<String>,
    pub selected_count: u64,
    pub selected: Vec<Selected>,
    /// The recorded responses to the selected records (what the client
    /// received, as recorded: masked) within the included segments.
    /// Packages of earlier versions have none.
    #[serde(default)]
    pub responses: Vec<Selected>,
    /// Matching records left out because no checkpoint covered them yet.
    pub left_out_unsigned: u64,
    /// The key that signed `manifest.sig`; none when the package is unsigned.
    pub manifest_signer: Option<String>,
    pub unsigned_reason: Option<String>,
    /// Every other file of the package.
    pub files: Vec<FileEntry>,
}

/// What `export` wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub manifest: Manifest,
    pub out: PathBuf,
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn frame_len(e: &Entry) -> u64 {
    (format::FRAME_OVERHEAD + e.body.len()) as u64
}

/// Write a package of the records of `dir` matching `filter` to `out` (a tar file).
/// `key_file` is the node key used to sign the manifest (`dir/node.key` if None).
pub fn export(
    dir: &Path,
    filter: &Filter,
    out: &Path,
    key_file: Option<&Path>,
) -> Result<ExportSummary, ExportError> {
    let entries = reader::read_all(dir)?;
    let names: BTreeMap<u64, PathBuf> = list_segments(dir)?.into_iter().collect();
    let name_of = |s: u64| names.get(&s).map(|p| file_name(p)).unwrap_or_default();

    // Checkpoint ends per segment, and the matching records.
    let mut checkpoint_ends: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut seg_end: BTreeMap<u64, u64> = BTreeMap::new();
    let mut hits = Vec::new();
    // A response answers its session's latest statement before it (a client
    // hears the answer before it sends the next one): it goes with that
    // statement when the statement is selected.
    let mut responses = Vec::new();
    let mut answering: BTreeMap<String, bool> = BTreeMap::new();
    for e in &entries {
        let end = e.offset + frame_len(e);
        seg_end.insert(e.segment, end);
        match e.decode(&name_of(e.segment))? {
            Record::Checkpoint(_) => checkpoint_ends.entry(e.segment).or_default().push(end),
            Record::Access(a) => {
                let selected = filter.matches(&a);
                answering.insert(a.session_id.clone(), selected);
                if selected {
                    hits.push(Hit {
                        segment: e.segment,
                        offset: e.offset,
                        seq: e.seq,
                        hash: e.hash,
                        record: a,
                    });
                }
            }
            Record::Response(r) if answering.get(&r.session_id) == Some(&true) => {
                responses.push(query::ResponseHit {
                    segment: e.segment,
                    offset: e.offset,
                    seq: e.seq,
                    hash: e.hash,
                    record: r,
                });
            }
            _ => {}
        }
    }
    // The first checkpoint after a record in its segment, if any.
    let covering = |h: &Hit| {
        checkpoint_ends
            .get(&h.segment)
            .and_then(|v| v.iter().copied().find(|&end| end > h.offset))
    };
    let before = hits.len();
    hits.retain(|h| covering(h).is_some());
    let left_out = (before - hits.len()) as u64;
    let hits = query::finish(hits, None);
    let (Some(first), Some(last)) = (
        hits.iter().map(|h| h.segment).min(),
        hits.iter().map(|h| h.segment).max(),
    ) else {
        return Err(ExportError::Nothing(if left_out > 0 {
            format!(
                "the {left_out} matching records are not covered by a signed checkpoint yet; export again after the next checkpoint"
            )
        } else {
            "no records match; nothing exported".into()
        }));
    };
    let last_cut = hits
        .iter()
        .filter(|h| h.segment == last)
        .filter_map(covering)
        .max()
        .unwrap_or(0);
    // The answers to the selected statements, where the package holds them.
    responses.retain(|r| {
        (first..=last).contains(&r.segment) && (r.segment < last || r.offset < last_cut)
    });

    // The files of the package.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut node = String::new();
    for seg in first..=last {
        let Some(path) = names.get(&seg) else {
            return Err(pkg_err(
                format::segment_name(seg),
                "segment missing from the log",
            ));
        };
        let cut = if seg == last {
            last_cut
        } else {
            seg_end.get(&seg).copied().unwrap_or(0)
        };
        let data = fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let cut = usize::try_from(cut).unwrap_or(usize::MAX);
        let Some(bytes) = data.get(..cut) else {
            return Err(pkg_err(
                file_name(path),
                "segment shorter than what was read",
            ));
        };
        if seg == first {
            node = format::decode_header(bytes)
                .map(|h| h.node)
                .unwrap_or_default();
        }
        files.push((format!("segments/{}", file_name(path)), bytes.to_vec()));
    }

    // Verify what is about to be exported, exactly as the auditor will.
    let stage = tempfile::tempdir().map_err(|e| AuditError::io(std::env::temp_dir(), e))?;
    let seg_dir = stage.path().join("segments");
    fs::create_dir(&seg_dir).map_err(|e| AuditError::io(&seg_dir, e))?;
    for (name, bytes) in &files {
        let p = stage.path().join(name);
        fs::write(&p, bytes).map_err(|e| AuditError::io(&p, e))?;
    }
    let report = verify::verify_excerpt(&seg_dir, None)?;
    let public_keys: Vec<String> = report.signers.iter().map(keys::public_text_bytes).collect();

    // Access records and responses in time order (a statement before the
    // response of the same instant).
    let mut lines: Vec<((u64, u64, u64), String)> = hits
        .iter()
        .map(|h| {
            let mut v = query::hit_json(h);
            if let Some(m) = v.as_object_mut() {
                m.insert("kind".into(), "access".into());
            }
            ((h.record.time_ns, h.segment, h.offset), v.to_string())
        })
        .collect();
    lines.extend(responses.iter().map(|r| {
        (
            (r.record.time_ns, r.segment, r.offset),
            query::response_json(r).to_string(),
        )
    }));
    lines.sort_by_key(|(k, _)| *k);
    let mut records_jsonl = String::new();
    for (_, l) in &lines {
        records_jsonl.push_str(l);
        records_jsonl.push('\n');
    }
    files.push(("records.jsonl".into(), records_jsonl.into_bytes()));
    files.push((
        "keys/signers.txt".into(),
        public_keys
            .iter()
            .map(|k| format!("{k}\n"))
            .collect::<String>()
            .into_bytes(),
    ));

    let key_path = key_file.map_or_else(|| dir.join(super::DEFAULT_KEY_FILE), Path::to_path_buf);
    let signing = keys::load(&key_path);
    let mut manifest = Manifest {
        format: PACKAGE_FORMAT.into(),
        node,
        exported_by: hostname(),
        exported_at: query::format_time(now_ns()),
        query: filter.clone(),
        first_segment: first,
        last_segment: last,
        chain_head: hex(&report.chain_head),
        public_keys,
        selected_count: hits.len() as u64,
        selected: hits
            .iter()
            .map(|h| Selected {
                segment: h.segment,
                offset: h.offset,
                seq: h.seq,
                hash: hex(&h.hash),
            })
            .collect(),
        responses: responses
            .iter()
            .map(|r| Selected {
                segment: r.segment,
                offset: r.offset,
                seq: r.seq,
                hash: hex(&r.hash),
            })
            .collect(),
        left_out_unsigned: left_out,
        manifest_signer: None,
        unsigned_reason: None,
        files: files
            .iter()
            .map(|(p, b)| FileEntry {
                path: p.clone(),
                sha256: sha256_hex(b),
                bytes: b.len() as u64,
            })
            .collect(),
    };
    match &signing {
        Ok(k) => manifest.manifest_signer = Some(keys::public_text(&k.verifying_key())),
        Err(e) => manifest.unsigned_reason = Some(format!("node key not readable: {e}")),
    }
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| pkg_err(MANIFEST, e.to_string()))?;
    let mut all = vec![(MANIFEST.to_string(), manifest_bytes.clone())];
    if let Ok(k) = &signing {
        let mut msg = SIG_DOMAIN.to_vec();
        msg.extend_from_slice(&manifest_bytes);
        let sig = k.sign(&msg);
        all.push((
            MANIFEST_SIG.into(),
            format!(
                "{}\n{}\n",
                keys::public_text(&k.verifying_key()),
                hex(&sig.to_bytes())
            )
            .into_bytes(),
        ));
    }
    all.extend(files);
    write_tar(out, &all)?;
    Ok(ExportSummary {
        manifest,
        out: out.to_path_buf(),
    })
}

fn write_tar(out: &Path, files: &[(String, Vec<u8>)]) -> Result<(), ExportError> {
    let io = |e| ExportError::Log(AuditError::io(out, e));
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let f = fs::File::create(&tmp).map_err(io)?;
    let mut b = tar::Builder::new(f);
    let mtime = now_ns() / 1_000_000_000;
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).map_err(io)?;
    }
    let f = b.into_inner().map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, out).map_err(io)?;
    Ok(())
}

/// What a verified package contains.
#[derive(Debug, Clone)]
pub struct PackageReport {
    pub manifest: Manifest,
    pub files_checked: usize,
    pub log: verify::Report,
    /// The manifest signature, checked; None when the package is unsigned.
    pub manifest_signed_by: Option<String>,
    /// Whether the manifest's signer is one of the log's checkpoint keys (or the
    /// trusted key).
    pub manifest_signer_known: bool,
}

/// Is `path` an evidence package (a tar file, or a directory with a manifest)?
pub fn is_package(path: &Path) -> bool {
    path.is_file() || path.join(MANIFEST).is_file()
}

/// Names a package may contain; anything else is rejected, so extraction cannot
/// write outside its directory.
fn allowed(name: &str) -> bool {
    match name.split_once('/') {
        None => matches!(name, MANIFEST | MANIFEST_SIG | "records.jsonl"),
        Some(("segments", f)) => format::parse_segment_name(f).is_some(),
        Some(("keys", f)) => !f.is_empty() && !f.contains('/') && f != "." && f != "..",
        _ => false,
    }
}

/// Read a package (tar file or extracted directory) into memory: path -> bytes.
fn read_package(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, ExportError> {
    let shown = path.display().to_string();
    let mut out = BTreeMap::new();
    if path.is_file() {
        let f = fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
        let mut ar = tar::Archive::new(f);
        let entries = ar
            .entries()
            .map_err(|e| pkg_err(&shown, format!("not a readable tar file: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| pkg_err(&shown, format!("damaged tar file: {e}")))?;
            if e.header().entry_type().is_dir() {
                continue;
            }
            let p = e
                .path()
                .map_err(|e| pkg_err(&shown, format!("damaged tar entry name: {e}")))?
                .into_owned();
            let name = p.to_string_lossy().into_owned();
            let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain || !allowed(&name) || !e.header().entry_type().is_file() {
                return Err(pkg_err(name, "unexpected file in the package"));
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|err| pkg_err(&name, format!("cannot read from the tar file: {err}")))?;
            if out.insert(name.clone(), data).is_some() {
                return Err(pkg_err(name, "appears twice in the package"));
            }
        }
    } else {
        for sub in ["", "segments", "keys"] {
            let d = path.join(sub);
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let f = e.file_name().to_string_lossy().into_owned();
                let name = if sub.is_empty() {
                    f
                } else {
                    format!("{sub}/{f}")
                };
                if !allowed(&name) {
                    return Err(pkg_err(name, "unexpected file in the package"));
                }
                let data = fs::read(e.path()).map_err(|err| AuditError::io(e.path(), err))?;
                out.insert(name, data);
            }
        }
    }
    Ok(out)
}

/// Verify a package; see the module documentation. `trusted` is the node key the
/// auditor trusts (without it, only integrity and self-consistency are shown).
pub fn verify_package(
    path: &Path,
    trusted: Option<&VerifyingKey>,
) -> Result<PackageReport, ExportError> {
    let mut files = read_package(path)?;
    let manifest_bytes = files
        .remove(MANIFEST)
        .ok_or_else(|| pkg_err(MANIFEST, "missing: not an evidence package"))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| pkg_err(MANIFEST, format!("does not parse: {e}")))?;
    if manifest.format != PACKAGE_FORMAT {
        return Err(pkg_err(
            MANIFEST,
            format!("unknown format {:?}", manifest.format),
        ));
    }
    let sig = files.remove(MANIFEST_SIG);

    // Every file exactly as listed, and nothing else.
    let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for name in files.keys() {
        if !listed.contains(name.as_str()) {
            return Err(pkg_err(name, "not listed in the manifest"));
        }
    }
    for f in &manifest.files {
        let data = files
            .get(&f.path)
            .ok_or_else(|| pkg_err(&f.path, "listed in the manifest but missing"))?;
        if sha256_hex(data) != f.sha256 || data.len() as u64 != f.bytes {
            return Err(pkg_err(
                &f.path,
                "SHA-256 does not match the manifest (the file was altered)",
            ));
        }
    }

    // The manifest signature.
    let manifest_signed_by = match (&manifest.manifest_signer, sig) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(pkg_err(
                MANIFEST_SIG,
                "present but the manifest names no signer",
            ));
        }
        (Some(_), None) => {
            return Err(pkg_err(
                MANIFEST_SIG,
                "missing: the manifest says it is signed",
            ));
        }
        (Some(signer), Some(sig)) => {
            let text = String::from_utf8_lossy(&sig);
            let mut lines = text.lines();
            let (key_line, sig_line) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            let key =
                keys::parse_public(key_line).map_err(|e| pkg_err(MANIFEST_SIG, e.to_string()))?;
            if keys::public_text(&key) != *signer {
                return Err(pkg_err(
                    MANIFEST_SIG,
                    "signed by another key than the manifest names",
                ));
            }
            let s = format::unhex(sig_line.trim())
                .and_then(|b| Signature::from_slice(&b).ok())
                .ok_or_else(|| pkg_err(MANIFEST_SIG, "malformed signature"))?;
            let mut msg = SIG_DOMAIN.to_vec();
            msg.extend_from_slice(&manifest_bytes);
            key.verify_strict(&msg, &s)
                .map_err(|_| pkg_err(MANIFEST_SIG, "invalid signature over manifest.json"))?;
            Some(signer.clone())
        }
    };

    // The segments, as a log.
    let stage = tempfile::tempdir().map_err(|e| AuditError::io(std::env::temp_dir(), e))?;
    let seg_dir = stage.path().join("segments");
    fs::create_dir(&seg_dir).map_err(|e| AuditError::io(&seg_dir, e))?;
    for (name, data) in &files {
        if let Some(f) = name.strip_prefix("segments/") {
            let p = seg_dir.join(f);
            fs::write(&p, data).map_err(|e| AuditError::io(&p, e))?;
        }
    }
    let log = verify::verify_excerpt(&seg_dir, trusted)?;
    if (log.first_segment, log.last_segment) != (manifest.first_segment, manifest.last_segment) {
        return Err(pkg_err(
            MANIFEST,
            format!(
                "names segments {}..={} but the package holds {}..={}",
                manifest.first_segment, manifest.last_segment, log.first_segment, log.last_segment
            ),
        ));
    }
    if log.unsigned_tail > 0 {
        return Err(pkg_err(
            format::segment_name(log.last_segment),
            format!(
                "the last {} records are not covered by a checkpoint",
                log.unsigned_tail
            ),
        ));
    }
    let signers: Vec<String> = log.signers.iter().map(keys::public_text_bytes).collect();
    if signers != manifest.public_keys {
        return Err(pkg_err(
            MANIFEST,
            "public_keys differ from the keys that signed the segments",
        ));
    }

    // The selection: exactly the matching records of the included segments.
    let mut matching = BTreeMap::new();
    let mut recorded = BTreeMap::new();
    for e in reader::read_all(&seg_dir)? {
        match e.decode(&format::segment_name(e.segment))? {
            Record::Access(a) if manifest.query.matches(&a) => {
                matching.insert((e.segment, e.offset), (e.seq, hex(&e.hash)));
            }
            Record::Response(_) => {
                recorded.insert((e.segment, e.offset), (e.seq, hex(&e.hash)));
            }
            _ => {}
        }
    }
    for s in &manifest.responses {
        match recorded.get(&(s.segment, s.offset)) {
            Some((seq, hash)) if *seq == s.seq && *hash == s.hash => {}
            _ => {
                return Err(pkg_err(
                    format::segment_name(s.segment),
                    format!(
                        "listed response {} at byte {} is not a recorded response of the package",
                        s.seq, s.offset
                    ),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for s in &manifest.selected {
        match matching.get(&(s.segment, s.offset)) {
            Some((seq, hash)) if *seq == s.seq && *hash == s.hash => {}
            _ => {
                return Err(pkg_err(
                    format::segment_name(s.segment),
                    format!(
                        "selected record {} at byte {} is not a matching record of the package",
                        s.seq, s.offset
                    ),
                ));
            }
        }
        seen.insert((s.segment, s.offset));
    }
    if seen.len() != matching.len() || manifest.selected_count != seen.len() as u64 {
        return Err(pkg_err(
            MANIFEST,
            format!(
                "selects {} records but the included segments hold {} matching the query",
                manifest.selected_count,
                matching.len()
            ),
        ));
    }
    let manifest_signer_known = manifest_signed_by.as_ref().is_some_and(|s| {
        signers.contains(s) || trusted.is_some_and(|t| keys::public_text(t) == *s)
    });
    Ok(PackageReport {
        files_checked: manifest.files.len() + 1,
        manifest,
        log,
        manifest_signed_by,
        manifest_signer_known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditConfig, AuditLog, record::sample_access};

    #[test]
    fn package_across_a_key_rotation_carries_both_keys_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut cfg = AuditConfig::new(&dir, "node-a");
        cfg.segment_max_bytes = 4096;
        cfg.checkpoint_every_records = 7;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (old, new) = rt.block_on(async {
            let (log, rep) = AuditLog::open(cfg).await.unwrap();
            for i in 0..40 {
                log.append(&sample_access(i)).await.unwrap();
            }
            let new = log.rotate_key().await.unwrap();
            for i in 40..80 {
                log.append(&sample_access(i)).await.unwrap();
            }
            log.close().await.unwrap();
            (rep.public_key, new)
        });
        let t0 = sample_access(0).time_ns;
        let filter = Filter {
            since_ns: Some(t0 + 30),
            until_ns: Some(t0 + 50),
            ..Filter::default()
        };
        let out = tmp.path().join("p.tar");
        let s = export(&dir, &filter, &out, None).unwrap();
        assert_eq!(s.manifest.selected_count, 21);
        assert!(s.manifest.first_segment > 0, "{:?}", s.manifest);
        assert_eq!(
            s.manifest.public_keys,
            vec![keys::public_text(&old), keys::public_text(&new)]
        );
        // The manifest is signed with the current node key.
        assert_eq!(s.manifest.manifest_signer, Some(keys::public_text(&new)));
        for trusted in [None, Some(&old), Some(&new)] {
            let r = verify_package(&out, trusted).unwrap();
            assert_eq!(r.manifest.selected_count, 21);
            assert!(r.manifest_signer_known);
            assert_eq!(r.log.key_rotations, 1);
        }
        let stranger = keys::generate().unwrap().verifying_key();
        let e = verify_package(&out, Some(&stranger)).unwrap_err();
        assert!(e.to_string().contains("not the trusted key"), "{e}");
    }

    #[test]
    fn unexpected_names_are_refused() {
        for ok in [
            "manifest.json",
            "segments/seg-00000000000000000003.audit",
            "keys/signers.txt",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "../x",
            "segments/../../etc/passwd",
            "keys/a/b",
            "index/db",
            "segments/x.audit",
            "keys/..",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }
}
