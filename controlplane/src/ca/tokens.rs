//! Who may call the CA: bearer tokens, each standing for a caller identity on a node. Standalone
//! stand-in for Kubernetes' TokenReview (the token of a ztunnel pod names its namespace, service
//! account and, through its pod, its node).
//!
//! ```yaml
//! callers:
//! - name: ztunnel-node1          # for logs and the audit trail
//!   token: 3f6c…                 # or tokenFile: /etc/mesh/tokens/node1
//!   node: node1
//!   namespace: istio-system
//!   serviceAccount: ztunnel
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its name in logs.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: BTreeMap<String, Caller>,
}

/// Why the tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// A file could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// Not the expected YAML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry is invalid.
    #[error("{path}: callers[{index}].{field}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which entry.
        index: usize,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    callers: Vec<RawCaller>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCaller {
    #[serde(default)]
    name: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    service_account: String,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Tokens shorter than this are refused: guessable bearer tokens are no authentication.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads a tokens file; `tokenFile` paths are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TokensError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let raw: RawFile = serde_yaml_ng::from_str(&text).map_err(|e| TokensError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut by_token = BTreeMap::new();
        for (index, entry) in raw.callers.into_iter().enumerate() {
            let invalid = |field, problem: String| TokensError::Invalid {
                path: path.to_owned(),
                index,
                field,
                problem,
            };
            for (field, value) in [
                ("name", &entry.name),
                ("node", &entry.node),
                ("namespace", &entry.namespace),
                ("serviceAccount", &entry.service_account),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(field, "required".into()));
                }
            }
            let token = match (entry.token, entry.token_file) {
                (Some(token), None) => token,
                (None, Some(file)) => {
                    let file = base.join(file);
                    std::fs::read_to_string(&file)
                        .map_err(|e| invalid("tokenFile", format!("{}: {e}", file.display())))?
                }
                _ => {
                    return Err(invalid(
                        "token",
                        "give exactly one of token and tokenFile".into(),
                    ));
                }
            };
            let token = token.trim().to_owned();
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    "token",
                    format!("shorter than {MIN_TOKEN_LEN} characters"),
                ));
            }
            let caller = Caller {
                name: entry.name,
                node: entry.node,
                namespace: entry.namespace,
                service_account: entry.service_account,
            };
            if by_token.insert(token, caller).is_some() {
                return Err(invalid("token", "the same token is listed twice".into()));
            }
        }
        Ok(Self { by_token })
    }

    /// Tokens from pairs, for tests and embedding.
    pub fn from_callers(callers: impl IntoIterator<Item = (String, Caller)>) -> Self {
        Self {
            by_token: callers.into_iter().collect(),
        }
    }

    /// The caller a token stands for. Every known token is compared in full, in constant time
    /// for its length, so timing tells a prober nothing about how much of a guess was right.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for (known, caller) in &self.by_token {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// Whether the caller of `token` is one of `accounts` (`namespace`, `serviceAccount`).
    pub fn is_one_of(
        &self,
        token: &str,
        accounts: &std::collections::BTreeSet<(String, String)>,
    ) -> bool {
        self.caller(token)
            .is_some_and(|c| accounts.contains(&(c.namespace, c.service_account)))
    }

    /// How many callers are known.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether no caller is known (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}
