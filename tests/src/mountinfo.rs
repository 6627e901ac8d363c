//! Reading `/proc/self/mountinfo`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nodev,relatime`).
    pub mount_options: String,
    /// File system type (`fuse`, `fuse.packagefs`, `ext4`).
    pub fstype: String,
    /// Mount source (`packagefs`, `/dev/vda`).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl fmt::Display for MountEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} type {} ({}; {})",
            self.source,
            self.mount_point.display(),
            self.fstype,
            self.mount_options,
            self.super_options
        )
    }
}

/// Every mount this process sees, in mount order.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let f: Vec<&str> = line.split(' ').collect();
    let dash = f.iter().position(|x| *x == "-")?;
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(f.get(4)?)),
        mount_options: f.get(5)?.to_string(),
        fstype: f.get(dash + 1)?.to_string(),
        source: unescape(f.get(dash + 2)?),
        super_options: f.get(dash + 3).unwrap_or(&"").to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at exactly `mount_point` (which must be canonical).
pub fn find(mount_point: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
}

/// Whether a FUSE file system is mounted at exactly `mount_point`.
pub fn is_fuse_mounted(mount_point: &Path) -> bool {
    mounts()
        .iter()
        .any(|m| m.mount_point == mount_point && m.fstype.starts_with("fuse"))
}

/// Every mount at or below `dir`, one per line, for failure messages.
pub fn describe_under(dir: &Path) -> String {
    let lines: Vec<String> = mounts()
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(ToString::to_string)
        .collect();
    if lines.is_empty() {
        format!("(no mounts at or below {})", dir.display())
    } else {
        lines.join("\n")
    }
}

/// Every FUSE mount, one per line, for failure messages.
pub fn describe_fuse() -> String {
    let lines: Vec<String> = mounts()
        .iter()
        .filter(|m| m.fstype.starts_with("fuse"))
        .map(ToString::to_string)
        .collect();
    if lines.is_empty() {
        "(no FUSE mounts)".to_string()
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_mount_points() {
        let l = r"42 27 0:39 / /tmp/a\040b ro,nodev,relatime - fuse packagefs ro,user_id=0";
        let m = parse_line(l).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse");
        assert_eq!(m.source, "packagefs");
        assert_eq!(m.mount_options, "ro,nodev,relatime");
    }

    #[test]
    fn parses_optional_fields() {
        let l = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw";
        let m = parse_line(l).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/mnt2"));
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
    }
}
