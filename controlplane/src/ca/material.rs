//! The CA's key material in a directory, in istiod's `cacerts` layout:
//!
//! - plugged in (an intermediate chained to an external root): `ca-cert.pem` (the signer),
//!   `ca-key.pem`, `root-cert.pem` (the root bundle, possibly several roots) and optionally
//!   `cert-chain.pem` (the signer up to the root);
//! - self-signed: an empty directory; a root is generated and written there (`ca-cert.pem`,
//!   `ca-key.pem`, `root-cert.pem`, key file mode 0600), so a restarted control plane signs with
//!   the same root and no data plane loses trust.
//!
//! Whatever is loaded is proven before use: a throwaway workload certificate is issued and
//! verified against the root bundle, so a key that does not match its certificate, or a signer
//! that does not chain to the roots, stops start-up with the reason instead of breaking every
//! handshake later.

use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh::identity::{CaLimits, LocalCa, SpiffeId, TrustDomain, certs_from_pem};
use tracing::info;

use super::pem;

/// Lifetime of a generated root (istiod's self-signed default is 10 years).
const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The loaded CA, with what the audit log says about it.
pub struct CaMaterial {
    /// The signer.
    pub ca: LocalCa,
    /// `self-signed` or `plugged-in`.
    pub mode: &'static str,
    /// The root bundle, PEM (what clients need as `CA_ROOT_CA`).
    pub roots_pem: String,
    /// Where `roots_pem` is on disk.
    pub roots_path: PathBuf,
}

/// Why the CA material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// Some but not all of the plugged-in files are there.
    #[error(
        "{dir}: incomplete CA set: {missing} is missing (need ca-cert.pem, ca-key.pem, root-cert.pem)"
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The first missing file.
        missing: &'static str,
    },
    /// The files do not make a working CA.
    #[error("{dir}: {reason}")]
    Invalid {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

const FILES: [&str; 3] = ["ca-cert.pem", "ca-key.pem", "root-cert.pem"];

/// Loads the CA from `dir`, or creates a self-signed root there when the directory holds none.
pub fn load_or_create(
    dir: &Path,
    trust_domain: &TrustDomain,
    limits: CaLimits,
) -> Result<CaMaterial, MaterialError> {
    let present: Vec<bool> = FILES.iter().map(|f| dir.join(f).exists()).collect();
    let material = if present.iter().all(|p| *p) {
        load(dir, limits)?
    } else if present.iter().any(|p| *p) {
        let missing = FILES
            .iter()
            .zip(&present)
            .find(|(_, p)| !**p)
            .map_or("ca-cert.pem", |(f, _)| *f);
        return Err(MaterialError::Incomplete {
            dir: dir.to_owned(),
            missing,
        });
    } else {
        create(dir, trust_domain, limits)?
    };
    prove(dir, &material.ca, trust_domain)?;
    info!(target: "audit", dir = %dir.display(), mode = material.mode,
        roots = material.ca.roots().len(), default_ttl = ?limits.default_ttl,
        max_ttl = ?limits.max_ttl, "CA configuration loaded");
    Ok(material)
}

fn read(path: &Path) -> Result<String, MaterialError> {
    fs::read_to_string(path).map_err(|cause| MaterialError::Io {
        path: path.to_owned(),
        cause,
    })
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), MaterialError> {
    let io = |cause| MaterialError::Io {
        path: path.to_owned(),
        cause,
    };
    // Write then rename: a crash never leaves half a key behind. The file is created with its
    // final mode, so a key is never readable by others, not even for a moment.
    let staging = path.with_extension("pem.new");
    let _ = fs::remove_file(&staging);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staging)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&staging, path).map_err(io)
}

fn load(dir: &Path, limits: CaLimits) -> Result<CaMaterial, MaterialError> {
    let invalid = |reason: String| MaterialError::Invalid {
        dir: dir.to_owned(),
        reason,
    };
    let signer = read(&dir.join("ca-cert.pem"))?;
    let key = read(&dir.join("ca-key.pem"))?;
    let roots_path = dir.join("root-cert.pem");
    let roots_pem = read(&roots_path)?;
    let chain_path = dir.join("cert-chain.pem");
    // The chain file repeats the signer and the root; only what lies between is sent on.
    let between = if chain_path.exists() {
        let signer_der =
            certs_from_pem(&signer).map_err(|e| invalid(format!("ca-cert.pem: {e}")))?;
        let roots =
            certs_from_pem(&roots_pem).map_err(|e| invalid(format!("root-cert.pem: {e}")))?;
        certs_from_pem(&read(&chain_path)?)
            .map_err(|e| invalid(format!("cert-chain.pem: {e}")))?
            .into_iter()
            .filter(|c| !signer_der.contains(c) && !roots.contains(c))
            .map(|c| pem("CERTIFICATE", &c))
            .collect::<String>()
    } else {
        String::new()
    };
    let ca = LocalCa::from_pem(&signer, &key, &between, &roots_pem, limits)
        .map_err(|e| invalid(mesh::errors::chain(&e)))?;
    let mode = if ca
        .roots()
        .iter()
        .any(|r| certs_from_pem(&signer).is_ok_and(|s| s.first() == Some(r)))
    {
        "self-signed"
    } else {
        "plugged-in"
    };
    Ok(CaMaterial {
        ca,
        mode,
        roots_pem,
        roots_path,
    })
}

fn create(
    dir: &Path,
    trust_domain: &TrustDomain,
    limits: CaLimits,
) -> Result<CaMaterial, MaterialError> {
    fs::create_dir_all(dir).map_err(|cause| MaterialError::Io {
        path: dir.to_owned(),
        cause,
    })?;
    let (ca, cert_pem, key_pem) =
        LocalCa::generate_root_with_pem(trust_domain.as_str(), GENERATED_ROOT_VALIDITY, limits)
            .map_err(|e| MaterialError::Invalid {
                dir: dir.to_owned(),
                reason: mesh::errors::chain(&e),
            })?;
    write(&dir.join("ca-key.pem"), &key_pem, 0o600)?;
    write(&dir.join("ca-cert.pem"), &cert_pem, 0o644)?;
    let roots_path = dir.join("root-cert.pem");
    write(&roots_path, &cert_pem, 0o644)?;
    info!(target: "audit", dir = %dir.display(), %trust_domain,
        validity_days = GENERATED_ROOT_VALIDITY.as_secs() / 86_400, "CA root generated");
    Ok(CaMaterial {
        ca,
        mode: "self-signed",
        roots_pem: cert_pem,
        roots_path,
    })
}

/// Issues and verifies one throwaway certificate.
fn prove(dir: &Path, ca: &LocalCa, trust_domain: &TrustDomain) -> Result<(), MaterialError> {
    let invalid = |reason: String| MaterialError::Invalid {
        dir: dir.to_owned(),
        reason,
    };
    let probe = SpiffeId::istio(trust_domain, "istio-system", "ca-self-check")
        .map_err(|e| invalid(e.to_string()))?;
    let issued = ca
        .issue_workload(
            &probe,
            Some(Duration::from_secs(60)),
            &mesh::tls::crypto_provider(),
        )
        .map_err(|e| invalid(format!("cannot issue: {}", mesh::errors::chain(&e))))?;
    mesh::tls::verify_workload_chain(issued.chain(), issued.roots()).map_err(|e| {
        invalid(format!(
            "a certificate it issues does not verify against root-cert.pem: {e} (does ca-key.pem belong to ca-cert.pem, and does ca-cert.pem chain to root-cert.pem?)"
        ))
    })?;
    Ok(())
}
