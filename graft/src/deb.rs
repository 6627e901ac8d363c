//! Reading Debian binary packages (`.deb`): an `ar` archive of `debian-binary` (format
//! 2.x), `control.tar[.ext]` (the control file and the maintainer scripts) and
//! `data.tar[.ext]` (the files), as dpkg-deb reads them. Members whose name starts with
//! `_` (signatures) are skipped; any other member is an error. Every member read is
//! checked to be as long as its header says.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::compress::{Codec, Counting, DEB_SUFFIXES};
use super::control::{check_deb_name, Paragraph, MAX_CONTROL_BYTES};
use super::tarball::{input_path, read_tar, tar_error, Builder};
use super::version::DebVersion;

/// The maintainer scripts (and the triggers file) of a control archive, in dpkg's order.
pub const SCRIPTS: [&str; 6] = [
    "preinst", "postinst", "prerm", "postrm", "config", "triggers",
];

/// What the control member of a `.deb` says.
#[derive(Debug, Clone)]
pub struct DebInfo {
    /// The file.
    pub path: PathBuf,
    /// The control paragraph.
    pub control: Paragraph,
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: DebVersion,
    /// `Architecture` (empty if absent).
    pub arch: String,
    /// The maintainer scripts present (of [`SCRIPTS`]).
    pub scripts: Vec<String>,
    /// The conffiles listed.
    pub conffiles: Vec<String>,
    /// The data member's name (`data.tar.xz`).
    pub data_member: String,
}

/// The ar global header.
const AR_MAGIC: &[u8; 8] = b"!<arch>\n";

/// Opens a `.deb` once (a regular file, never blocking on a FIFO) and checks its magic.
fn open_ar(path: &Path) -> Result<ar::Archive<File>, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = format::archive::open_regular(path).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 8];
    let n = read_full(&mut f, &mut magic).map_err(|e| e.to_string())?;
    if n < 8 || &magic != AR_MAGIC {
        return Err("not a Debian package: not an ar archive".into());
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(ar::Archive::new(f))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The members of a `.deb`, visited in order by `visit(name, reader)`; each member is
/// checked to be complete after `visit` returned. Checks the member sequence.
fn members(
    path: &Path,
    mut visit: impl FnMut(&str, Codec, &mut dyn Read) -> Result<(), String>,
) -> Result<(), String> {
    let mut ar = open_ar(path)?;
    let mut index = 0;
    let mut seen_control = false;
    let mut seen_data = false;
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                "truncated: the ar archive ends inside a member header".to_owned()
            } else {
                format!("bad ar archive: {e}")
            }
        })?;
        let raw = entry.header().identifier().to_vec();
        let name = String::from_utf8_lossy(&raw)
            .trim_end()
            .trim_end_matches('/')
            .to_owned();
        let size = entry.header().size();
        let mut counted = Counting::new(entry);
        let result = if index == 0 {
            if name != "debian-binary" {
                return Err(format!(
                    "not a Debian package: the first member is {name:?}, not \"debian-binary\""
                ));
            }
            let mut v = Vec::new();
            (&mut counted)
                .take(64)
                .read_to_end(&mut v)
                .map_err(|e| format!("debian-binary: {e}"))?;
            let text = String::from_utf8_lossy(&v);
            let text = text.trim();
            if !text.starts_with("2.") {
                return Err(format!(
                    "unsupported .deb format version {text:?} (this reader knows 2.x)"
                ));
            }
            Ok(())
        } else if name.starts_with('_') {
            Ok(())
        } else if let Some(codec) =
            Codec::of_member(&name, "control.tar").map_err(|e| e.to_string())?
        {
            if seen_control || seen_data {
                return Err(format!("{name}: a second or misplaced control member"));
            }
            seen_control = true;
            visit(&name, codec, &mut counted)
        } else if let Some(codec) = Codec::of_member(&name, "data.tar")? {
            if !seen_control || seen_data {
                return Err(format!(
                    "{name}: a second data member, or one before the control member"
                ));
            }
            seen_data = true;
            visit(&name, codec, &mut counted)
        } else {
            return Err(format!(
                "unexpected member {name:?} (a .deb holds debian-binary, control.tar*, data.tar*)"
            ));
        };
        // Truncation explains any other error: report it first.
        let _ = io::copy(&mut counted, &mut io::sink());
        if counted.count < size {
            return Err(format!(
                "{name}: truncated: {} of its {size} bytes are in the file",
                counted.count
            ));
        }
        result.map_err(|e| format!("{name}: {e}"))?;
        index += 1;
    }
    if index == 0 {
        return Err("not a Debian package: an empty ar archive".into());
    }
    if !seen_control {
        return Err("no control.tar member".into());
    }
    if !seen_data {
        return Err(format!("no data.tar member (data.tar with {DEB_SUFFIXES})"));
    }
    Ok(())
}

/// Reads the control member of a `.deb` (and checks that a data member with a known
/// compression follows). Errors do not name the file; the caller does.
pub fn read_control(path: &Path) -> Result<DebInfo, String> {
    let mut control: Option<Vec<u8>> = None;
    let mut scripts = Vec::new();
    let mut conffiles = Vec::new();
    let mut data_member = String::new();
    members(path, |name, codec, r| {
        if name.starts_with("data.tar") {
            data_member = name.to_owned();
            return Ok(());
        }
        let mut dec = codec.reader(r).map_err(|e| e.to_string())?;
        let mut ar = tar::Archive::new(&mut dec);
        for entry in ar.entries().map_err(|e| tar_error(&e))? {
            let mut entry = entry.map_err(|e| tar_error(&e))?;
            let raw = entry.path_bytes().into_owned();
            let Ok(comps) = input_path(&raw) else {
                continue;
            };
            let [one] = comps.as_slice() else { continue };
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let file = String::from_utf8_lossy(one).into_owned();
            let mut read = |limit: usize| -> Result<Vec<u8>, String> {
                let mut v = Vec::new();
                (&mut entry)
                    .take(limit as u64 + 1)
                    .read_to_end(&mut v)
                    .map_err(|e| format!("{file}: {}", tar_error(&e)))?;
                if v.len() > limit {
                    return Err(format!("{file}: larger than {limit} bytes"));
                }
                Ok(v)
            };
            match file.as_str() {
                "control" => control = Some(read(MAX_CONTROL_BYTES)?),
                "conffiles" => {
                    let text = read(MAX_CONTROL_BYTES)?;
                    conffiles = String::from_utf8_lossy(&text)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                s if SCRIPTS.contains(&s) => scripts.push(s.to_owned()),
                _ => {}
            }
        }
        Ok(())
    })?;
    let control = control.ok_or("control.tar: no control file")?;
    let control = Paragraph::parse(&control).map_err(|e| format!("malformed control file: {e}"))?;
    let package = control
        .required("Package")
        .map_err(|e| format!("malformed control file: {e}"))?
        .to_owned();
    check_deb_name(&package).map_err(|e| format!("malformed control file: Package: {e}"))?;
    let version = DebVersion::parse(
        control
            .required("Version")
            .map_err(|e| format!("malformed control file: {e}"))?,
    )
    .map_err(|e| format!("malformed control file: Version: {e}"))?;
    let arch = control.get("Architecture").unwrap_or("").to_owned();
    scripts.sort_by_key(|s| SCRIPTS.iter().position(|x| x == s));
    scripts.dedup();
    Ok(DebInfo {
        path: path.to_owned(),
        control,
        package,
        version,
        arch,
        scripts,
        conffiles,
        data_member,
    })
}

/// Reads the data member of a `.deb` into `b`.
pub fn read_data(path: &Path, b: &mut Builder) -> Result<(), String> {
    members(path, |name, codec, r| {
        if !name.starts_with("data.tar") {
            return Ok(());
        }
        let mut dec = codec.reader(r).map_err(|e| e.to_string())?;
        read_tar(&mut dec, b)
    })
}
