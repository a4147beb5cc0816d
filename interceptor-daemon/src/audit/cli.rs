//! What `interceptor audit ...` does, as functions the binary calls.

use std::path::Path;

use super::{
    key::{default_pubkey_path, parse_public_key, public_key_text},
    verify,
};

/// `audit verify DIR [--pubkey FILE]`: (success, text to print). Without
/// `--pubkey` the key in DIR is used, which proves integrity only against
/// that file: auditors should pass the key they obtained independently.
pub fn verify_dir(dir: &Path, pubkey: Option<&Path>) -> (bool, String) {
    let key_path = pubkey
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_pubkey_path(dir));
    let key = match std::fs::read_to_string(&key_path)
        .map_err(|e| e.to_string())
        .and_then(|t| parse_public_key(&t))
    {
        Ok(k) => k,
        Err(e) => {
            return (
                false,
                format!("FAILED: public key {}: {e}", key_path.display()),
            );
        }
    };
    match verify(dir, &key) {
        Ok(r) => {
            let mut msg = format!(
                "OK: {} segments, {} entries, {} signed checkpoints verified with {}",
                r.segments,
                r.entries,
                r.checkpoints,
                public_key_text(&key)
            );
            if r.unsigned_tail > 0 {
                msg.push_str(&format!(
                    "\nnote: the last {} entries are chained but not yet covered by a checkpoint",
                    r.unsigned_tail
                ));
            }
            if r.recoveries > 0 {
                msg.push_str(&format!(
                    "\nnote: {} torn-tail recoveries are recorded in the log",
                    r.recoveries
                ));
            }
            (true, msg)
        }
        Err(f) => (false, format!("FAILED: {f}")),
    }
}

/// `audit pubkey --dir DIR`.
pub fn pubkey(dir: &Path) -> Result<String, String> {
    std::fs::read_to_string(default_pubkey_path(dir))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", default_pubkey_path(dir).display()))
}

/// `audit show DIR`: every entry as one JSON line, in chain order. Reading does
/// not verify: run `audit verify` for that.
pub fn show(dir: &Path, out: &mut impl std::io::Write) -> Result<u64, String> {
    let mut n = 0;
    for (_, path) in super::segments(dir).map_err(|e| e.to_string())? {
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut off = 0;
        while let Some((payload, len)) = super::format::read_frame(&data[off..]) {
            let entry = super::format::decode_payload(payload)
                .map_err(|e| format!("{} at byte {off}: {e}", path.display()))?;
            let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
            off += len;
            n += 1;
        }
    }
    Ok(n)
}
