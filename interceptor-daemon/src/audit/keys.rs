//! The node's Ed25519 signing key.
//!
//! The key file holds the 32-byte secret seed and nothing else. It is created with
//! mode 0600 (in a 0700 directory) by `create_new`, so two daemons racing on first
//! start cannot both win, and a key readable by group or others is refused on load
//! rather than used: a leaked key would let anyone forge checkpoints.
//! Public keys are exchanged as one line of text, `ed25519:<64 hex digits>`.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{
    AuditError,
    format::{hex, unhex},
};

/// Create `dir` (and parents) with mode 0700 when missing.
pub fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AuditError::io(dir, e))
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, AuditError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| AuditError::Key(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Write a key to `path`, which must not exist, with mode 0600, durably.
pub fn write_new(path: &Path, key: &SigningKey) -> Result<(), AuditError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    f.write_all(&key.to_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| AuditError::io(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Load a key, refusing files that others can read or that have the wrong size.
pub fn load(path: &Path) -> Result<SigningKey, AuditError> {
    let meta = fs::metadata(path).map_err(|e| AuditError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::Key(format!(
            "{} has mode {mode:o}; it must be readable by its owner only (0600)",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        AuditError::Key(format!(
            "{} is not a key file ({} bytes)",
            path.display(),
            bytes.len()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Text form of a public key.
pub fn public_text(key: &VerifyingKey) -> String {
    public_text_bytes(key.as_bytes())
}

/// Text form of raw public key bytes.
pub fn public_text_bytes(key: &[u8; 32]) -> String {
    format!("ed25519:{}", hex(key))
}

/// Parse [`public_text`] output (or bare hex), ignoring surrounding whitespace.
pub fn parse_public(text: &str) -> Result<VerifyingKey, AuditError> {
    let t = text.trim();
    let h = t.strip_prefix("ed25519:").unwrap_or(t);
    let bytes: [u8; 32] = unhex(h).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        AuditError::Key("not an ed25519 public key (expected ed25519:<64 hex digits>)".into())
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| AuditError::Key(format!("invalid public key: {e}")))
}

pub fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_roundtrips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let path = dir.join("node.key");
        let k = generate().unwrap();
        write_new(&path, &k).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap().to_bytes(), k.to_bytes());
        // Never overwritten.
        assert!(write_new(&path, &generate().unwrap()).is_err());
        // Refused once others can read it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("0600"));

        let text = public_text(&k.verifying_key());
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        assert_eq!(
            parse_public(&format!("  {text}\n")).unwrap(),
            k.verifying_key()
        );
        assert!(parse_public("ed25519:1234").is_err());
    }
}
