//! The node's Ed25519 signing key, created on first start with owner-only
//! permissions.

use std::{
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use super::AuditError;

pub struct NodeKey {
    key: SigningKey,
}

fn key_err(path: &Path, message: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.into(),
        message: message.into(),
    }
}

impl NodeKey {
    pub const FILE: &'static str = "node.key";

    /// Loads `dir/node.key`, creating it (0600, in a 0700 directory) if absent.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, AuditError> {
        std::fs::create_dir_all(dir).map_err(super::io_err(dir))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let path = dir.join(Self::FILE);
        if path.exists() {
            return Self::load(&path);
        }
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| key_err(&path, format!("no randomness: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(super::io_err(&path))?;
        f.write_all(&seed)
            .and_then(|()| f.sync_all())
            .map_err(super::io_err(&path))?;
        Ok(NodeKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn load(path: &Path) -> Result<NodeKey, AuditError> {
        let meta = std::fs::metadata(path).map_err(super::io_err(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(key_err(path, "readable by others: must be mode 0600"));
        }
        let bytes = std::fs::read(path).map_err(super::io_err(path))?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| key_err(path, "not a 32-byte Ed25519 seed"))?;
        Ok(NodeKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// Public key as printed by `interceptor audit pubkey` and read by `--pubkey`.
pub fn public_key_text(k: &VerifyingKey) -> String {
    let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519:{hex}")
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let hex = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or("expected `ed25519:<64 hex digits>`")?;
    if hex.len() != 64 {
        return Err("expected 64 hex digits".into());
    }
    let mut b = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "not hex")?;
        b[i] = u8::from_str_radix(s, 16).map_err(|_| "not hex")?;
    }
    VerifyingKey::from_bytes(&b).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

pub fn default_pubkey_path(dir: &Path) -> PathBuf {
    dir.join("node.pub")
}
