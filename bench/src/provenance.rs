//! Where and when a run happened, recorded beside its figures: the machine (CPUs, model,
//! kernel), the source commit, the UTC time. The commit is read from `.git` directly, so a
//! checkout without git installed (or no checkout at all) still runs the benchmark.

use std::path::Path;

use time::OffsetDateTime;

/// The machine a run happened on.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Machine {
    /// CPUs available to this process.
    pub(crate) nproc: usize,
    /// CPU model name, when `/proc/cpuinfo` says.
    pub(crate) cpu: Option<String>,
    /// Kernel release (`uname -r`).
    pub(crate) kernel: Option<String>,
}

impl Machine {
    /// Reads the current machine's description.
    pub(crate) fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            });
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|k| k.trim().to_owned()),
        }
    }
}

/// The short commit id checked out in the workspace at `root`, if it is a git checkout.
pub(crate) fn commit(root: &Path) -> Option<String> {
    let dot_git = root.join(".git");
    // A worktree or submodule has a `.git` file pointing at the real directory.
    let git_dir = match std::fs::read_to_string(&dot_git) {
        Ok(pointer) => root.join(pointer.strip_prefix("gitdir:")?.trim()),
        Err(_) => dot_git,
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let id = match head.strip_prefix("ref:") {
        None => head.to_owned(),
        Some(reference) => resolve_ref(&git_dir, reference.trim())?,
    };
    id.get(..7).map(str::to_owned)
}

fn resolve_ref(git_dir: &Path, reference: &str) -> Option<String> {
    if let Ok(id) = std::fs::read_to_string(git_dir.join(reference)) {
        return Some(id.trim().to_owned());
    }
    // Worktrees keep shared refs in the common directory.
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.to_owned());
    if let Ok(id) = std::fs::read_to_string(common.join(reference)) {
        return Some(id.trim().to_owned());
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, name) = line.split_once(' ')?;
        (name == reference).then(|| id.to_owned())
    })
}

/// A UTC instant as ISO 8601 (`2026-12-01T10:05:26Z`) and as a file-name stem
/// (`20261201T100526Z`).
pub(crate) fn utc_stamps(at: OffsetDateTime) -> (String, String) {
    let (y, mo, d) = (at.year(), u8::from(at.month()), at.day());
    let (h, mi, s) = (at.hour(), at.minute(), at.second());
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_iso_and_file_safe() {
        let at = OffsetDateTime::from_unix_timestamp(1_796_119_526).unwrap();
        let (iso, stem) = utc_stamps(at);
        assert_eq!(iso, "2026-12-01T10:05:26Z");
        assert_eq!(stem, "20261201T100526Z");
    }
}
