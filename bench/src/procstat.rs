//! What the kernel accounts for a process: resident memory (`/proc/<pid>/status`) and CPU time
//! (`/proc/<pid>/stat`, summed over all its threads).
//!
//! Peak memory under load is the kernel's own high-water mark (`VmHWM`), reset just before the
//! load phases (`echo 5 > /proc/<pid>/clear_refs`): exact, where sampling `VmRSS` could miss a
//! short peak.

use std::io;
use std::path::PathBuf;

/// Why a `/proc` figure could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The file could not be read or written.
    #[error("cannot access {path}")]
    Access {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file did not hold the expected field.
    #[error("{path}: no parsable {field}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The field looked for.
        field: &'static str,
    },
    /// `sysconf(_SC_CLK_TCK)` gave nothing usable.
    #[error("cannot read the clock tick (sysconf _SC_CLK_TCK)")]
    ClockTick,
}

/// One process's accounting files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proc {
    pid: u32,
}

impl Proc {
    /// The process `pid`.
    pub(crate) fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// Current resident set size, in KiB.
    pub(crate) fn rss_kib(self) -> Result<u64, ProcError> {
        self.status_field("VmRSS:")
    }

    /// Highest resident set size since start or the last [`Proc::reset_peak_rss`], in KiB.
    pub(crate) fn peak_rss_kib(self) -> Result<u64, ProcError> {
        self.status_field("VmHWM:")
    }

    /// Resets the kernel's resident-set high-water mark to the current size.
    pub(crate) fn reset_peak_rss(self) -> Result<(), ProcError> {
        let path = self.path("clear_refs");
        std::fs::write(&path, "5").map_err(|source| ProcError::Access { path, source })
    }

    /// User plus system CPU time so far, in seconds.
    pub(crate) fn cpu_seconds(self) -> Result<f64, ProcError> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Access {
            path: path.clone(),
            source,
        })?;
        let ticks = parse_cpu_ticks(&text).ok_or(ProcError::Parse {
            path,
            field: "utime/stime",
        })?;
        Ok(ticks as f64 / clock_ticks_per_second()?)
    }

    fn status_field(self, field: &'static str) -> Result<u64, ProcError> {
        let path = self.path("status");
        let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Access {
            path: path.clone(),
            source,
        })?;
        parse_status_kib(&text, field).ok_or(ProcError::Parse { path, field })
    }

    fn path(self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }
}

fn clock_ticks_per_second() -> Result<f64, ProcError> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .ok_or(ProcError::ClockTick)?;
    u32::try_from(ticks)
        .map(f64::from)
        .map_err(|_| ProcError::ClockTick)
}

/// `VmRSS:    12345 kB` -> 12345.
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime: fields 14 and 15 of `/proc/<pid>/stat`, counted after the command name, which
/// is parenthesised and may itself contain spaces or parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the name come field 3 (state) onwards: utime is the 12th of these, stime the 13th.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_and_stat_fields() {
        let status = "Name:\tztunnel\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);

        let stat = "42 (zt (data) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
    }
}
