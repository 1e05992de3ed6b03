//! Packet capture on an interface of a test namespace, and a reader for what was captured.
//!
//! The mesh promises that application bytes never cross a node boundary in clear text; the only
//! convincing check is to look at the wire. [`Capture`] records an interface with `tcpdump`
//! (which must be installed) and [`Recorded`] parses the classic pcap file in plain Rust, so a
//! test can ask whether a marker appeared and which TCP ports carried data.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::time::timeout;

use crate::WAIT;
use crate::netns::Netns;

/// Capture ring size in KiB. In immediate mode every packet takes a ring slot sized for the
/// largest offloaded packet (64 KiB), so tcpdump's default 2 MiB holds 32 packets: less than one
/// burst of a transfer between namespaces, which then loses packets. This holds about 500.
const RING_KIB: &str = "32768";

/// A running `tcpdump` of the TCP traffic on one interface; killed if dropped without
/// [`Capture::stop`].
pub struct Capture {
    what: String,
    path: PathBuf,
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    log: Vec<String>,
}

impl Capture {
    /// Starts capturing TCP on `iface` inside `netns` into a new file under `dir`, and returns
    /// once tcpdump says it is listening, so traffic sent afterwards is recorded.
    pub async fn start(netns: &Netns, iface: &str, dir: &Path) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        std::fs::create_dir_all(dir).unwrap();
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{iface}-{n}.pcap", netns.name()));
        let what = format!("tcpdump -i {iface} in {}", netns.name());
        let file = path.to_str().expect("capture path is UTF-8").to_owned();
        // --immediate-mode: each packet reaches the file as it arrives, not when a buffer block
        // times out. -Z root: tcpdump would otherwise switch to its own user before opening the
        // file, and could not write it in a root-owned directory.
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "tcpdump", "-i", iface, "-n"])
            .args(["-U", "-s", "0", "--immediate-mode", "-B", RING_KIB])
            .args(["-Z", "root", "-w", &file, "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut capture = Self {
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            what,
            path,
            child,
            log: Vec::new(),
        };
        let what = capture.what.clone();
        let listening = timeout(WAIT, capture.line_with("listening on")).await;
        match listening {
            Ok(Some(_)) => capture,
            Ok(None) => panic!(
                "{what} exited before listening (is tcpdump installed?): {}",
                capture.log.join("\n")
            ),
            Err(_) => panic!(
                "{what} did not start listening within {WAIT:?}: {}",
                capture.log.join("\n")
            ),
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until tcpdump has written every packet the kernel handed it before this call, then
    /// stops it (SIGINT, so it closes the file properly) and parses the file. Call it once the
    /// traffic of interest is over.
    pub async fn stop(mut self) -> Recorded {
        let what = self.what.clone();
        timeout(WAIT, self.catch_up())
            .await
            .unwrap_or_else(|_| panic!("{what} did not catch up within {WAIT:?}"));
        self.signal(nix::sys::signal::Signal::SIGINT);
        let status = timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what} did not exit within {WAIT:?}"))
            .unwrap();
        // The rest is the exit summary; stderr closes when tcpdump has gone.
        let _ = timeout(WAIT, self.line_with("")).await;
        let log = self.log.join("\n");
        assert!(status.success(), "{what} failed ({status}): {log}");
        let mut recorded = Recorded::read(&self.path).unwrap_or_else(|e| {
            panic!("{what}: {}: {e}; tcpdump said: {log}", self.path.display())
        });
        // The exit summary puts each counter on a line of its own.
        recorded.dropped_by_kernel = self.log.iter().rev().find_map(|line| {
            let stats = Stats::parse(line);
            stats.dropped.filter(|_| stats.captured.is_none())
        });
        recorded
    }

    /// A packet stays in the kernel's ring until tcpdump gets to it, and tcpdump discards what
    /// is still there when interrupted. Its counters (printed on SIGUSR1) tell when it has
    /// dealt with, written or lost, every packet the kernel had queued when this was called:
    /// the ring is first in, first out.
    async fn catch_up(&mut self) {
        let mut queued = None;
        loop {
            self.signal(nix::sys::signal::Signal::SIGUSR1);
            let Some(line) = self.line_with("received by filter").await else {
                panic!("{} exited early: {}", self.what, self.log.join("\n"));
            };
            let stats = Stats::parse(&line);
            let (Some(captured), Some(received), Some(dropped)) =
                (stats.captured, stats.received, stats.dropped)
            else {
                panic!("{}: unexpected statistics line {line:?}", self.what);
            };
            let queued = *queued.get_or_insert(received);
            if captured + dropped >= queued {
                return;
            }
            // Not there yet: the next answer comes once tcpdump has run again.
            tokio::task::yield_now().await;
        }
    }

    /// Reads stderr up to a line containing `needle` and returns it; `None` once tcpdump has
    /// closed stderr (so an empty needle reads everything). Every line is kept for failure
    /// reports.
    async fn line_with(&mut self, needle: &str) -> Option<String> {
        while let Ok(Some(line)) = self.stderr.next_line().await {
            self.log.push(line.clone());
            if !needle.is_empty() && line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// tcpdump's counters, from its SIGUSR1 line ("tcpdump: 5 packets captured, 7 packets received
/// by filter, 0 packets dropped by kernel") or from one line of its exit summary.
#[derive(Debug, Default)]
struct Stats {
    captured: Option<u64>,
    received: Option<u64>,
    dropped: Option<u64>,
}

impl Stats {
    fn parse(line: &str) -> Self {
        let mut stats = Self::default();
        let line = line.strip_prefix("tcpdump: ").unwrap_or(line);
        for part in line.split(", ") {
            let Some((count, label)) = part.trim().split_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse() else { continue };
            let label = label
                .trim_start_matches("packets")
                .trim_start_matches("packet");
            match label.trim() {
                "captured" => stats.captured = Some(count),
                "received by filter" => stats.received = Some(count),
                "dropped by kernel" => stats.dropped = Some(count),
                _ => {}
            }
        }
        stats
    }
}

/// Why a capture file could not be read.
#[derive(Debug)]
pub enum PcapError {
    /// The file could not be read at all.
    Io(std::io::Error),
    /// Shorter than the 24-byte global header.
    NoHeader,
    /// Not a classic pcap file (pcapng, or something else), by its first four bytes.
    BadMagic(u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read: {e}"),
            Self::NoHeader => f.write_str("shorter than a pcap global header"),
            Self::BadMagic(m) => write!(f, "not a classic pcap file (magic {m:#010x})"),
        }
    }
}

impl std::error::Error for PcapError {}

/// Link types whose frames [`Recorded`] can decode down to IPv4.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// The frames of a capture file.
#[derive(Debug, Clone)]
pub struct Recorded {
    link_type: u32,
    frames: Vec<Vec<u8>>,
    truncated: bool,
    dropped_by_kernel: Option<u64>,
}

/// One captured IPv4 TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Sender.
    pub src: SocketAddrV4,
    /// Receiver.
    pub dst: SocketAddrV4,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    /// Payload bytes the segment carried on the wire (not only the captured part).
    pub payload_len: usize,
}

impl Recorded {
    /// Reads and parses a capture file.
    pub fn read(path: &Path) -> Result<Self, PcapError> {
        Self::parse(&std::fs::read(path).map_err(PcapError::Io)?)
    }

    /// Parses classic pcap bytes (either byte order, micro- or nanosecond timestamps). A final
    /// record cut short, as a killed writer leaves it, is skipped and reported by
    /// [`Recorded::truncated`].
    pub fn parse(bytes: &[u8]) -> Result<Self, PcapError> {
        let magic = bytes.get(..4).ok_or(PcapError::NoHeader)?;
        let magic = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
        let little = match magic {
            0xa1b2_c3d4 | 0xa1b2_3c4d => true,
            0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
            other => return Err(PcapError::BadMagic(other)),
        };
        let word = |at: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        // The upper bits of this field may carry FCS information; the link type is the low 16.
        let link_type = word(20).ok_or(PcapError::NoHeader)? & 0xffff;
        let mut frames = Vec::new();
        let mut at = 24;
        let mut truncated = false;
        while at < bytes.len() {
            let record = word(at + 8).and_then(|len| usize::try_from(len).ok());
            let frame = record.and_then(|len| bytes.get(at + 16..(at + 16).checked_add(len)?));
            match frame {
                Some(frame) => {
                    frames.push(frame.to_vec());
                    at += 16 + frame.len();
                }
                None => {
                    truncated = true;
                    break;
                }
            }
        }
        Ok(Self {
            link_type,
            frames,
            truncated,
            dropped_by_kernel: None,
        })
    }

    /// The file's link type (1 is Ethernet).
    pub fn link_type(&self) -> u32 {
        self.link_type
    }

    /// Every captured frame, link-layer header included.
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    /// Whether the file ended in the middle of a record.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Packets the kernel dropped because tcpdump fell behind, as tcpdump reported on exit
    /// (`None` when parsed from a file alone). A test that asserts something is *absent* from
    /// the capture proves nothing unless this is `Some(0)`.
    pub fn dropped_by_kernel(&self) -> Option<u64> {
        self.dropped_by_kernel
    }

    /// Whether `marker` occurs anywhere inside one captured frame. A marker split across two
    /// segments is not found, so keep markers short and place them where a segment starts.
    pub fn contains(&self, marker: &[u8]) -> bool {
        marker.is_empty()
            || self
                .frames
                .iter()
                .any(|frame| frame.windows(marker.len()).any(|w| w == marker))
    }

    /// The IPv4 TCP segments among the frames, in capture order; other frames are skipped.
    pub fn tcp_segments(&self) -> Vec<Segment> {
        self.frames
            .iter()
            .filter_map(|frame| tcp_segment(ip_packet(self.link_type, frame)?))
            .collect()
    }

    /// Source and destination ports of every segment that carried payload.
    pub fn payload_ports(&self) -> BTreeSet<u16> {
        self.tcp_segments()
            .iter()
            .filter(|s| s.payload_len > 0)
            .flat_map(|s| [s.src.port(), s.dst.port()])
            .collect()
    }
}

/// The IPv4 packet inside a frame, if it is one.
fn ip_packet(link_type: u32, frame: &[u8]) -> Option<&[u8]> {
    const IPV4: u16 = 0x0800;
    const VLAN: [u16; 2] = [0x8100, 0x88a8];
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
    };
    let (proto, start) = match link_type {
        LINKTYPE_ETHERNET => {
            let mut at = 12;
            while VLAN.contains(&be16(at)?) {
                at += 4;
            }
            (be16(at)?, at + 2)
        }
        LINKTYPE_LINUX_SLL => (be16(14)?, 16),
        LINKTYPE_LINUX_SLL2 => (be16(0)?, 20),
        LINKTYPE_RAW | LINKTYPE_IPV4 => (IPV4, 0),
        _ => return None,
    };
    let packet = frame.get(start..)?;
    (proto == IPV4 && packet.first()? >> 4 == 4).then_some(packet)
}

/// The TCP segment in an IPv4 packet, if it carries one (first fragment only).
fn tcp_segment(packet: &[u8]) -> Option<Segment> {
    const TCP: u8 = 6;
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes(packet.get(2..4)?.try_into().ok()?));
    let fragment_offset = u16::from_be_bytes(packet.get(6..8)?.try_into().ok()?) & 0x1fff;
    if *packet.get(9)? != TCP || fragment_offset != 0 || ihl < 20 {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let (src_ip, dst_ip) = (addr(12)?, addr(16)?);
    let tcp = packet.get(ihl..)?;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
    };
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    // The IP length says what was on the wire; the frame may be padded (short Ethernet frames)
    // or cut by the snap length. A segmentation-offload super-packet may leave it 0.
    let on_wire = if total == 0 { packet.len() } else { total };
    let payload_len = on_wire.saturating_sub(ihl + data_offset);
    Some(Segment {
        src: SocketAddrV4::new(src_ip, port(0)?),
        dst: SocketAddrV4::new(dst_ip, port(2)?),
        flags,
        payload_len,
    })
}
