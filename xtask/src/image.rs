//! `cargo xtask image`: the daemon's container image, an OCI image archive
//! built without a container engine (none is needed, or present, on a build
//! machine): one layer holding the release binary, exactly the shared
//! libraries it links (glibc's, as `ldd` reports them), the host's CA bundle
//! for the webhook and API-server clients, and a minimal `/etc/passwd`.
//!
//! The archive is reproducible (fixed timestamps and owners, sorted entries)
//! and checked after it is written: every digest and size is recomputed, the
//! layer is unpacked and, as root, the binary is run inside it with `chroot`,
//! so an image that cannot start (a missing library) fails here, not on a
//! node. Load it with `podman load`, `docker load` (Docker 25+), `ctr images
//! import`, or push it with `skopeo copy oci-archive:…`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Where the binary goes; the chart runs `interceptor` from `PATH`.
const BIN: &str = "usr/local/bin/interceptor";
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// One file of the layer.
struct File {
    data: Vec<u8>,
    mode: u32,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shared objects `binary` loads, with the paths the loader finds them at.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the
        // loader itself: `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            // linux-vdso.so.1 is the kernel's.
            _ if line.contains("linux-vdso") => {}
            _ => bail!("ldd: cannot place `{}`", line.trim()),
        }
    }
    Ok(libs)
}

/// Everything the layer holds, by path (relative to the image's root).
fn contents(binary: &Path) -> anyhow::Result<BTreeMap<String, File>> {
    let mut files = BTreeMap::new();
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    files.insert(
        BIN.to_string(),
        File {
            data: read(binary)?,
            mode: 0o755,
        },
    );
    for lib in linked_libraries(binary)? {
        // Symlinks are followed: the file lands where the loader looks.
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.insert(
            rel,
            File {
                data: read(&lib)?,
                mode: 0o755,
            },
        );
    }
    let ca = Path::new("/").join(CA_BUNDLE);
    if ca.exists() {
        files.insert(
            CA_BUNDLE.to_string(),
            File {
                data: read(&ca)?,
                mode: 0o644,
            },
        );
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        files.insert(
            path.to_string(),
            File {
                data: text.as_bytes().to_vec(),
                mode: 0o644,
            },
        );
    }
    Ok(files)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The layer as an uncompressed tar: parents first, sorted, fixed metadata.
fn layer_tar(files: &BTreeMap<String, File>) -> anyhow::Result<Vec<u8>> {
    let mut dirs = BTreeSet::from(["tmp".to_string()]);
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for d in &dirs {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for (path, f) in files {
        let mut h = header(tar::EntryType::Regular, f.mode, f.data.len() as u64);
        b.append_data(&mut h, path, f.data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

fn gzip(b: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    // No name or timestamp in the gzip header: the same input, the same bytes.
    let mut e = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    e.write_all(b)?;
    Ok(e.finish()?)
}

/// Builds the archive at `out` for `binary`, named `name:tag`.
pub fn build(binary: &Path, out: &Path, name: &str, tag: &str) -> anyhow::Result<()> {
    let files = contents(binary)?;
    let layer = layer_tar(&files)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let layer_gz = gzip(&layer)?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{BIN}")],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "interceptor",
                "org.opencontainers.image.version": tag,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))?;
    let blob = |b: &[u8], media: &str| json!({"mediaType": media, "digest": format!("sha256:{}", sha256_hex(b)), "size": b.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": blob(&config, CONFIG),
        "layers": [blob(&layer_gz, LAYER)],
    }))?;
    let mut m = blob(&manifest, MANIFEST);
    m["annotations"] = json!({
        "org.opencontainers.image.ref.name": tag,
        // What `docker load` and containerd name the image.
        "io.containerd.image.name": format!("{name}:{tag}"),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [m],
    }))?;

    let mut entries: BTreeMap<String, &[u8]> = BTreeMap::new();
    entries.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    entries.insert("index.json".into(), &index);
    for b in [&config, &manifest, &layer_gz] {
        entries.insert(format!("blobs/sha256/{}", sha256_hex(b)), b);
    }
    let mut a = tar::Builder::new(Vec::new());
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        a.append_data(&mut h, d, std::io::empty())?;
    }
    for (path, data) in entries {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        a.append_data(&mut h, path, data)?;
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(out, a.into_inner()?).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Reads the archive back: index → manifest → config and layer, each digest
/// and size recomputed, the layer unpacked into `unpack_to`; returns the
/// image reference.
fn read_back(archive: &Path, unpack_to: &Path) -> anyhow::Result<String> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(fs::File::open(archive)?);
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        blobs.insert(path, data);
    }
    let get = |d: &Value, media: &str| -> anyhow::Result<&Vec<u8>> {
        if d["mediaType"] != media {
            bail!("{d}: media type is not {media}");
        }
        let digest = d["digest"].as_str().unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        let b = blobs
            .get(&format!("blobs/sha256/{hex}"))
            .with_context(|| format!("blob {digest} is missing"))?;
        if sha256_hex(b) != hex || d["size"].as_u64() != Some(b.len() as u64) {
            bail!("blob {digest}: digest or size does not match its content");
        }
        Ok(b)
    };
    let layout: Value = serde_json::from_slice(blobs.get("oci-layout").context("no oci-layout")?)?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        bail!("oci-layout: {layout}");
    }
    let index: Value = serde_json::from_slice(blobs.get("index.json").context("no index.json")?)?;
    let m = &index["manifests"][0];
    let reference = m["annotations"]["io.containerd.image.name"]
        .as_str()
        .context("the manifest has no image name")?
        .to_string();
    let manifest: Value = serde_json::from_slice(get(m, MANIFEST)?)?;
    let config: Value = serde_json::from_slice(get(&manifest["config"], CONFIG)?)?;
    let layer_gz = get(&manifest["layers"][0], LAYER)?;
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(layer_gz.as_slice()).read_to_end(&mut layer)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    if config["rootfs"]["diff_ids"][0] != diff_id.as_str() {
        bail!("the config's diff_id is not the layer's ({diff_id})");
    }
    let _ = fs::remove_dir_all(unpack_to);
    fs::create_dir_all(unpack_to)?;
    tar::Archive::new(layer.as_slice()).unpack(unpack_to)?;
    Ok(reference)
}

/// Checks a built archive; as root, runs the binary inside the unpacked
/// layer (nothing of the host's filesystem visible) and compares its
/// `--version` with the host's run of `binary`.
pub fn check(archive: &Path, binary: &Path, root: bool) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("interceptor-image-{}", std::process::id()));
    let result = (|| {
        let reference = read_back(archive, &dir)?;
        if !root {
            eprintln!(
                "image: not root: the binary was not run inside the image (chroot needs root)"
            );
            return Ok(reference);
        }
        // coreutils' chroot is in sbin, which a user's PATH may lack.
        let chroot = ["/usr/sbin/chroot", "/sbin/chroot"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chroot");
        let inside = Command::new(chroot)
            .arg(&dir)
            .arg(format!("/{BIN}"))
            .arg("--version")
            .env_clear()
            .output()
            .context("running chroot")?;
        if !inside.status.success() {
            bail!(
                "the binary does not start inside the image: {}",
                String::from_utf8_lossy(&inside.stderr).trim()
            );
        }
        let outside = Command::new(binary).arg("--version").output()?;
        if inside.stdout != outside.stdout {
            bail!(
                "inside the image `--version` says {:?}, outside {:?}",
                String::from_utf8_lossy(&inside.stdout),
                String::from_utf8_lossy(&outside.stdout)
            );
        }
        Ok(reference)
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}
