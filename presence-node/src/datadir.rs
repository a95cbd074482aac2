//! The data folder: generated secret and admin key, the dev TLS certificate, `ready.json`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Creates the data folder if needed.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(hex::encode(buf))
}

/// The value given, or the one stored in `dir/name`, or a fresh one written there. Returns the
/// value and whether it was generated now.
pub fn secret_value(dir: &Path, name: &str, given: Option<&str>) -> anyhow::Result<(String, bool)> {
    if let Some(v) = given {
        return Ok((v.to_owned(), false));
    }
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => Ok((v.trim().to_owned(), false)),
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let v = random_hex(32)?;
            write_private(&path, v.as_bytes())?;
            Ok((v, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// This node's name: the one given, else the one generated into `dir/node-id` on first start
/// (`node-` and 8 hex digits), so a restarted node keeps its name.
pub fn node_id(dir: &Path, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = given {
        return Ok(id.to_owned());
    }
    let path = dir.join("node-id");
    match fs::read_to_string(&path) {
        Ok(v) if presence_cluster::valid_node_id(v.trim()) => Ok(v.trim().to_owned()),
        Ok(v) => anyhow::bail!("{}: not a node name: {:?}", path.display(), v.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", random_hex(4)?);
            write_private(&path, id.as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The QUIC certificate chain and key: the given files, or a self-signed dev certificate for
/// `localhost` and `127.0.0.1` generated into `dir/tls/` on first start.
pub fn tls_identity(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    PathBuf,
)> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        _ => {
            let tls = dir.join("tls");
            fs::create_dir_all(&tls)?;
            let (c, k) = (tls.join("cert.pem"), tls.join("key.pem"));
            if !c.exists() || !k.exists() {
                let generated = rcgen::generate_simple_self_signed(vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                ])
                .context("generating the dev certificate")?;
                let _ = fs::remove_file(&c);
                let _ = fs::remove_file(&k);
                write_private(&k, generated.signing_key.serialize_pem().as_bytes())?;
                write_private(&c, generated.cert.pem().as_bytes())?;
            }
            (c, k)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading a private key from {}", key_path.display()))?;
    Ok((certs, key, cert_path))
}

/// The addresses a running node serves on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub ws: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
    /// This node's name.
    pub node: String,
    /// The peer link's address (cluster mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

pub fn ready_path(dir: &Path) -> PathBuf {
    dir.join("ready.json")
}

/// Writes `ready.json` atomically.
pub fn write_ready(dir: &Path, ready: &Ready) -> anyhow::Result<()> {
    let tmp = dir.join("ready.json.tmp");
    fs::write(&tmp, serde_json::to_vec(ready)?)?;
    fs::rename(&tmp, ready_path(dir))?;
    Ok(())
}

pub fn remove_ready(dir: &Path) {
    let _ = fs::remove_file(ready_path(dir));
}
