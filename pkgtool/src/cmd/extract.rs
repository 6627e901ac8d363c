//! `pkgtool extract PKG DIR`: safe extraction, also as root next to hostile users.
//!
//! ```text
//! open DIR's parent once (P)  ->  mkdirat(P, .pkgtool-extract-*, 0700), openat(O_NOFOLLOW)
//!   -> check it is ours (owner, empty)  ->  every entry created relative to directory fds
//!   -> modes, mtimes and xattrs of directories, deepest first  ->  renameat(P, tmp, P, DIR)
//!   -> check that what DIR now names is the directory we filled
//! ```
//!
//! Nothing is ever done through a path that the kernel resolves again: entries are made
//! with `mkdirat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `symlinkat` and `linkat` relative
//! to descriptors this command opened with `O_NOFOLLOW|O_DIRECTORY`; attributes are set
//! with `fchmod`, `futimens` and `fsetxattr` on the open files. A symlink's xattrs go
//! through `/proc/self/fd/N/NAME`, which the kernel resolves from the descriptor, not from
//! a name. While the package is written every directory of the tree stays mode 0700 (the
//! package's modes are applied at the end), so no other user can reach into the tree, and
//! if the temporary directory is moved or replaced, the writes follow the descriptor and
//! the final check refuses the result.
//!
//! Privileges are not extracted unless asked for: setuid and setgid bits of files and
//! `security.capability` xattrs are dropped (and counted in one warning) unless
//! `--preserve-privileges` is given and the package is signed by a trusted key.

use clap::Args;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use format::archive::{Archive, Attr, EntryId, Kind};
use format::keys::TrustedKeys;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::verify::DEFAULT_KEYS_DIR;
use crate::output::{escape, short_path, Out};

/// `pkgtool extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The package.
    pub package: PathBuf,
    /// Target directory: must not exist, or be empty.
    pub dir: PathBuf,
    /// Keep setuid/setgid bits and file capabilities (security.capability); the package
    /// must be signed by a trusted key.
    #[arg(long)]
    pub preserve_privileges: bool,
    /// With --preserve-privileges: trust the *.pub keys in this directory
    /// [default: /etc/packagefs/keys].
    #[arg(long, value_name = "DIR", requires = "preserve_privileges")]
    pub trusted_keys: Option<PathBuf>,
    /// For a thin package: the chunk store its chunks are read through (default
    /// /var/cache/packagefs/chunks for root, else ~/.cache/packagefs/chunks); chunks not
    /// there are fetched from its repository.
    #[arg(long, value_name = "DIR")]
    pub chunk_store: Option<PathBuf>,
}

/// Deeper nesting than this is refused (each level holds a directory fd open).
const MAX_DEPTH: usize = 400;

/// The xattr that grants file capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Flags for opening a directory of the tree (or the target) without following a symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

pub fn run(a: ExtractArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let ar = super::open_with(&a.package, a.chunk_store.as_deref())?;
    let dest = &a.dir;
    let ctx = || format!("cannot extract into {}", dest.display());
    // The target is replaced by a renamed sibling, so it needs a name of its own: `.`,
    // `..` or `/` would put the sibling inside the target and the rename would fail.
    let last = dest.as_os_str().as_bytes().rsplit(|&b| b == b'/').next();
    let name = match dest.file_name() {
        Some(n) if !matches!(last, Some(b".") | Some(b"..")) => n.as_bytes().to_vec(),
        _ => bail!(
            "cannot extract into {}: name the target directory itself (not `.`, `..` or `/`)",
            dest.display()
        ),
    };
    let keep_privileges = a.preserve_privileges && {
        check_trust(&ar, &a)?;
        true
    };
    let parent_path = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The parent is the one path resolved (once, as the user named it).
    let parent = rustix::fs::open(
        parent_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(ctx)?;
    check_target(&parent, &name).map_err(|e| anyhow!("{}: {e}", ctx()))?;
    let (tmp_name, root) = make_temp_dir(&parent).with_context(ctx)?;
    let root_id = id_of(&rustix::fs::fstat(&root).map_err(io::Error::from)?);
    let mut x = Extractor {
        ar: &ar,
        root,
        keep_privileges,
        first_name: HashMap::new(),
        dirs: Vec::new(),
        dropped_bits: 0,
        dropped_caps: 0,
        warned: 0,
        files: 0,
        bytes: 0,
        buf: vec![0u8; 1 << 20],
    };
    let done = x
        .extract_tree()
        .and_then(|()| finish_rename(&parent, &tmp_name, &name, root_id));
    if let Err(e) = done {
        // Empty what we made through our own descriptor, then remove the directory only
        // if the temporary name still is it.
        let _ = remove_contents(x.root.as_fd(), 0);
        if rustix::fs::statat(&parent, tmp_name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| id_of(&st) == root_id)
        {
            let _ = rustix::fs::unlinkat(&parent, tmp_name.as_slice(), AtFlags::REMOVEDIR);
        }
        return Err(e.context(ctx()));
    }
    let dropped = x.dropped_summary();
    if let Some(d) = dropped {
        eprintln!("pkgtool: warning: {d}");
    }
    writeln!(
        out,
        "extracted {} files ({} bytes) from {} into {}",
        x.files,
        x.bytes,
        a.package.display(),
        dest.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `--preserve-privileges` needs a package signed by a trusted key.
fn check_trust(ar: &Archive, a: &ExtractArgs) -> anyhow::Result<()> {
    let pkg = a.package.display();
    let Some(dir) = super::verify::keys_dir(a.trusted_keys.as_deref()) else {
        bail!(
            "cannot extract {pkg} with --preserve-privileges: no trusted keys (pass --trusted-keys DIR or install keys in {DEFAULT_KEYS_DIR})"
        );
    };
    let keys = TrustedKeys::load_dir(&dir).with_context(|| {
        format!("cannot extract {pkg} with --preserve-privileges: cannot load trusted keys")
    })?;
    ar.check_trust(&keys).with_context(|| {
        format!("cannot extract {pkg} with --preserve-privileges: it is not signed by a key trusted in {}", dir.display())
    })?;
    Ok(())
}

/// The target may be missing or an empty directory (not a symlink to one).
fn check_target(parent: &OwnedFd, name: &[u8]) -> Result<(), String> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io::Error::from(e).to_string()),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err("exists and is not a directory".into());
    }
    let fd = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())
        .map_err(|e| io::Error::from(e).to_string())?;
    let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| io::Error::from(e).to_string())?;
    for ent in dir {
        let ent = ent.map_err(|e| io::Error::from(e).to_string())?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Err("directory is not empty".into());
        }
    }
    Ok(())
}

/// (device, inode) of a stat.
fn id_of(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Makes `.pkgtool-extract-*` in `parent` and opens it; checks that what it opened is the
/// directory it made (ours, private, empty), not one somebody put in its place.
fn make_temp_dir(parent: &OwnedFd) -> io::Result<(Vec<u8>, OwnedFd)> {
    let pid = std::process::id();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(pid).rotate_left(32);
    for _ in 0..100 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let name = format!(".pkgtool-extract-{pid}-{:012x}", seed >> 16).into_bytes();
        match rustix::fs::mkdirat(parent, name.as_slice(), Mode::RWXU) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
        let fd = rustix::fs::openat(parent, name.as_slice(), dir_flags(), Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "the temporary directory {} was replaced before it was used",
                escape(&name)
            )));
        }
        return Ok((name, fd));
    }
    Err(io::Error::other("cannot create a temporary directory"))
}

/// Renames the filled temporary directory to the target, checking before and after that
/// the names denote the directory this command filled.
fn finish_rename(
    parent: &OwnedFd,
    tmp: &[u8],
    name: &[u8],
    root: (u64, u64),
) -> anyhow::Result<()> {
    let is_ours = |n: &[u8]| {
        rustix::fs::statat(parent, n, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| id_of(&st) == root)
    };
    let replaced = || {
        anyhow!(
            "the temporary directory {} was moved or replaced while extracting",
            escape(tmp)
        )
    };
    if !is_ours(tmp) {
        return Err(replaced());
    }
    rustix::fs::renameat(parent, tmp, parent, name).map_err(io::Error::from)?;
    if !is_ours(name) {
        // Swapped between the check and the rename: what we renamed is not ours. Take a
        // non-directory (a planted symlink) away again; leave a directory alone.
        if rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory
        }) {
            let _ = rustix::fs::unlinkat(parent, name, AtFlags::empty());
        }
        return Err(replaced());
    }
    Ok(())
}

/// Removes everything below the directory `dir` (descriptor-relative, never following a
/// symlink).
fn remove_contents(dir: BorrowedFd<'_>, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH + 1 {
        return Err(io::Error::other("too deep"));
    }
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        let st = rustix::fs::statat(dir, n.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            let sub = rustix::fs::openat(dir, n.as_slice(), dir_flags(), Mode::empty())?;
            let _ = rustix::fs::fchmod(&sub, Mode::RWXU);
            remove_contents(sub.as_fd(), depth + 1)?;
            rustix::fs::unlinkat(dir, n.as_slice(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(dir, n.as_slice(), AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Opens the directory `comps` below `root`, one component at a time, never following a
/// symlink.
fn open_beneath(root: &OwnedFd, comps: &[Vec<u8>]) -> io::Result<OwnedFd> {
    let mut cur = root.try_clone()?;
    for c in comps {
        cur = rustix::fs::openat(&cur, c.as_slice(), dir_flags(), Mode::empty())?;
    }
    Ok(cur)
}

/// Marks an error that already names the entry it happened at.
#[derive(Debug)]
struct At(String);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Gives `e` the (shortened) path of the entry it happened at, once.
fn at(e: anyhow::Error, comps: &[Vec<u8>]) -> anyhow::Error {
    if e.downcast_ref::<At>().is_some() {
        e
    } else {
        e.context(At(short_path(comps)))
    }
}

fn timestamps(attr: &Attr) -> Timestamps {
    let t = Timespec {
        tv_sec: attr.mtime,
        tv_nsec: attr.mtime_nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

struct Extractor<'a> {
    ar: &'a Archive,
    root: OwnedFd,
    /// Restore setuid/setgid bits and file capabilities.
    keep_privileges: bool,
    /// Where each hard-linked entry was first extracted (components below the root).
    first_name: HashMap<EntryId, Vec<Vec<u8>>>,
    /// Every directory below the root, parents before children.
    dirs: Vec<(Vec<Vec<u8>>, EntryId)>,
    dropped_bits: u64,
    dropped_caps: u64,
    warned: u32,
    files: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn extract_tree(&mut self) -> anyhow::Result<()> {
        let root_fd = self.root.try_clone()?;
        let mut comps = Vec::new();
        self.extract_dir(&root_fd, self.ar.root(), &mut comps)?;
        // Directory modes, mtimes and xattrs last, deepest first: until now the tree was
        // private (0700) and writable, whatever the package says.
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, e) in dirs.iter().rev() {
            let r = open_beneath(&self.root, comps)
                .map_err(anyhow::Error::from)
                .and_then(|fd| self.finish_fd(&fd, *e, comps));
            r.map_err(|e| at(e, comps))?;
        }
        self.finish_fd(&root_fd, self.ar.root(), &[])
            .map_err(|e| at(e, &[]))?;
        Ok(())
    }

    fn extract_dir(
        &mut self,
        dirfd: &OwnedFd,
        dir: EntryId,
        comps: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<()> {
        if comps.len() > MAX_DEPTH {
            return Err(anyhow!("directories nested deeper than {MAX_DEPTH} levels"))
                .map_err(|e| at(e, comps));
        }
        let children: Vec<(Vec<u8>, EntryId)> = self
            .ar
            .read_dir(dir)
            .map_err(|e| at(e.into(), comps))?
            .map(|d| (d.name.to_vec(), d.entry))
            .collect();
        for (name, e) in children {
            comps.push(name);
            let r = self
                .extract_one(dirfd, e, comps)
                .map_err(|err| at(err, comps));
            comps.pop();
            r?;
        }
        Ok(())
    }

    /// Extracts the entry named by the last of `comps` into `dirfd`.
    fn extract_one(
        &mut self,
        dirfd: &OwnedFd,
        e: EntryId,
        comps: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<()> {
        let name = comps.last().cloned().unwrap_or_default();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            bail!("invalid name in the package");
        }
        let name = name.as_slice();
        let attr = self.ar.attr(e)?;
        if attr.kind != Kind::Dir && attr.nlink > 1 {
            if let Some(first) = self.first_name.get(&e) {
                let (last, dirs) = first.split_last().ok_or_else(|| anyhow!("empty path"))?;
                let from = open_beneath(&self.root, dirs)?;
                rustix::fs::linkat(&from, last.as_slice(), dirfd, name, AtFlags::empty())
                    .map_err(io::Error::from)?;
                return Ok(());
            }
            self.first_name.insert(e, comps.clone());
        }
        match attr.kind {
            Kind::Dir => {
                rustix::fs::mkdirat(dirfd, name, Mode::RWXU).map_err(io::Error::from)?;
                let fd = rustix::fs::openat(dirfd, name, dir_flags(), Mode::empty())
                    .map_err(io::Error::from)?;
                self.dirs.push((comps.clone(), e));
                self.extract_dir(&fd, e, comps)?;
            }
            Kind::File => {
                let fd = rustix::fs::openat(
                    dirfd,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::RUSR | Mode::WUSR,
                )
                .map_err(io::Error::from)?;
                let mut f = File::from(fd);
                let mut r = self.ar.open_file(e)?;
                loop {
                    let n = r.read_next(&mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n])?;
                    self.bytes += n as u64;
                }
                self.files += 1;
                let fd = OwnedFd::from(f);
                self.finish_fd(&fd, e, comps)?;
            }
            Kind::Symlink => {
                let target = self.ar.read_link(e)?;
                rustix::fs::symlinkat(target, dirfd, name).map_err(io::Error::from)?;
                rustix::fs::utimensat(dirfd, name, &timestamps(&attr), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io::Error::from)?;
                // No fsetxattr on a symlink: name it through the directory's descriptor.
                let mut via = format!("/proc/self/fd/{}/", dirfd.as_raw_fd()).into_bytes();
                via.extend_from_slice(name);
                let via = Path::new(OsStr::from_bytes(&via));
                let xattrs: Vec<(Vec<u8>, Vec<u8>)> = self.allowed_xattrs(e)?.into_iter().collect();
                for (k, v) in xattrs {
                    if let Err(err) = rustix::fs::lsetxattr(
                        via,
                        k.as_slice(),
                        &v,
                        rustix::fs::XattrFlags::empty(),
                    ) {
                        self.warn_xattr(comps, &k, err.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// The entry's xattrs, without `security.capability` unless privileges are kept.
    fn allowed_xattrs(&mut self, e: EntryId) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for (k, v) in self.ar.xattrs(e)? {
            if k == CAPABILITY_XATTR && !self.keep_privileges {
                self.dropped_caps += 1;
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Sets xattrs, permission bits and mtime on an open file or directory.
    fn finish_fd(&mut self, fd: &OwnedFd, e: EntryId, comps: &[Vec<u8>]) -> anyhow::Result<()> {
        let attr = self.ar.attr(e)?;
        for (k, v) in self.allowed_xattrs(e)? {
            if let Err(err) =
                rustix::fs::fsetxattr(fd, k.as_slice(), &v, rustix::fs::XattrFlags::empty())
            {
                self.warn_xattr(comps, &k, err.into());
            }
        }
        let mut perm = attr.perm & 0o7777;
        if attr.kind != Kind::Dir && perm & 0o6000 != 0 && !self.keep_privileges {
            perm &= !0o6000;
            self.dropped_bits += 1;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(perm as _)).map_err(io::Error::from)?;
        rustix::fs::futimens(fd, &timestamps(&attr)).map_err(io::Error::from)?;
        Ok(())
    }

    fn warn_xattr(&mut self, comps: &[Vec<u8>], name: &[u8], err: io::Error) {
        self.warned += 1;
        if self.warned <= 10 {
            eprintln!(
                "pkgtool: warning: cannot set xattr {} on {}: {err}",
                escape(name),
                short_path(comps)
            );
        }
    }

    /// What was not extracted for lack of `--preserve-privileges` and trust, if anything.
    fn dropped_summary(&self) -> Option<String> {
        let files = |n: u64| {
            if n == 1 {
                "1 file".to_string()
            } else {
                format!("{n} files")
            }
        };
        let mut parts = Vec::new();
        if self.dropped_bits > 0 {
            parts.push(format!(
                "setuid/setgid bits of {}",
                files(self.dropped_bits)
            ));
        }
        if self.dropped_caps > 0 {
            parts.push(format!(
                "file capabilities of {} (security.capability)",
                files(self.dropped_caps)
            ));
        }
        if parts.is_empty() {
            return None;
        }
        Some(format!(
            "extracted without the {}: pass --preserve-privileges to keep them (the package must be signed by a trusted key)",
            parts.join(" and the ")
        ))
    }
}
