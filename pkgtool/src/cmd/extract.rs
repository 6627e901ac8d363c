//! `pkgtool extract PKG DIR`: safe extraction.
//!
//! Everything is created relative to directory file descriptors that this command created
//! itself (`mkdirat`, `openat(O_NOFOLLOW|O_EXCL)`, `symlinkat`, `linkat`), so no path is ever
//! resolved through a symlink and nothing is written outside DIR. The package goes into a
//! temporary sibling of DIR which is renamed to DIR only when everything succeeded.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use format::archive::{Archive, Attr, EntryId, Kind};

use crate::cli::ExtractArgs;
use crate::output::{escape, Out};

/// Deeper nesting than this is refused (each level holds a directory fd open).
const MAX_DEPTH: usize = 400;

pub fn run(a: ExtractArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let ar = super::open(&a.package)?;
    let dest = &a.dir;
    let ctx = || format!("cannot extract into {}", dest.display());
    // The target is replaced by a renamed sibling, so it needs a name of its own: `.`,
    // `..` or `/` would put the sibling inside the target and the rename would fail.
    let last = dest.as_os_str().as_bytes().rsplit(|&b| b == b'/').next();
    if matches!(last, Some(b".") | Some(b"..")) || dest.file_name().is_none() {
        bail!(
            "cannot extract into {}: name the target directory itself (not `.`, `..` or `/`)",
            dest.display()
        );
    }
    if let Ok(md) = std::fs::symlink_metadata(dest) {
        if !md.is_dir() {
            bail!(
                "cannot extract into {}: exists and is not a directory",
                dest.display()
            );
        }
        if std::fs::read_dir(dest).with_context(ctx)?.next().is_some() {
            bail!(
                "cannot extract into {}: directory is not empty",
                dest.display()
            );
        }
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".pkgtool-extract-")
        .tempdir_in(parent)
        .with_context(ctx)?;
    let mut x = Extractor {
        ar: &ar,
        root: open_dir(None, tmp.path().as_os_str().as_bytes()).with_context(ctx)?,
        tmp_path: tmp.path().to_owned(),
        first_name: HashMap::new(),
        warned: 0,
        files: 0,
        bytes: 0,
        buf: vec![0u8; 1 << 20],
    };
    x.extract_tree().with_context(ctx)?;
    let (files, bytes) = (x.files, x.bytes);
    drop(x);
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, dest) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(e).with_context(ctx);
    }
    writeln!(
        out,
        "extracted {} files ({} bytes) from {} into {}",
        files,
        bytes,
        a.package.display(),
        dest.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

struct Extractor<'a> {
    ar: &'a Archive,
    root: OwnedFd,
    tmp_path: std::path::PathBuf,
    /// Where each hard-linked entry was first extracted (relative to the root).
    first_name: HashMap<EntryId, Vec<u8>>,
    warned: u32,
    files: u64,
    bytes: u64,
    buf: Vec<u8>,
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_dir(parent: Option<&OwnedFd>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let dirfd = parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd());
    // SAFETY: valid C string and dirfd; the returned fd is owned by the OwnedFd.
    let fd = check(unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn timespec(attr: &Attr) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: attr.mtime as libc::time_t,
        tv_nsec: attr.mtime_nsec as libc::c_long,
    };
    [t, t]
}

impl Extractor<'_> {
    fn extract_tree(&mut self) -> anyhow::Result<()> {
        let root_fd = self.root.try_clone()?;
        self.extract_dir(&root_fd, self.ar.root(), Vec::new(), 0)?;
        let attr = self.ar.attr(self.ar.root())?;
        self.finish_fd(&root_fd, self.ar.root(), &attr, b".")?;
        Ok(())
    }

    fn extract_dir(
        &mut self,
        dirfd: &OwnedFd,
        dir: EntryId,
        rel: Vec<u8>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > MAX_DEPTH {
            bail!(
                "{}: directories nested deeper than {MAX_DEPTH} levels",
                escape(&rel)
            );
        }
        let children: Vec<(Vec<u8>, EntryId)> = self
            .ar
            .read_dir(dir)?
            .map(|d| (d.name.to_vec(), d.entry))
            .collect();
        for (name, e) in children {
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            self.extract_one(dirfd, &name, e, path, depth)
                .with_context(|| escape(&rel_display(&rel, &name)))?;
        }
        Ok(())
    }

    fn extract_one(
        &mut self,
        dirfd: &OwnedFd,
        name: &[u8],
        e: EntryId,
        path: Vec<u8>,
        depth: usize,
    ) -> anyhow::Result<()> {
        let attr = self.ar.attr(e)?;
        let c = cstr(name)?;
        if attr.kind != Kind::Dir && attr.nlink > 1 {
            if let Some(first) = self.first_name.get(&e) {
                let first = cstr(first)?;
                // SAFETY: valid fds and C strings; flags 0 = do not follow symlinks.
                check(unsafe {
                    libc::linkat(
                        self.root.as_raw_fd(),
                        first.as_ptr(),
                        dirfd.as_raw_fd(),
                        c.as_ptr(),
                        0,
                    )
                })?;
                return Ok(());
            }
            self.first_name.insert(e, path.clone());
        }
        match attr.kind {
            Kind::Dir => {
                // SAFETY: valid fd and C string.
                check(unsafe { libc::mkdirat(dirfd.as_raw_fd(), c.as_ptr(), 0o700) })?;
                let fd = open_dir(Some(dirfd), name)?;
                self.extract_dir(&fd, e, path, depth + 1)?;
                self.finish_fd(&fd, e, &attr, name)?;
            }
            Kind::File => {
                // SAFETY: valid fd and C string; O_EXCL|O_NOFOLLOW never reuses or follows.
                let fd = check(unsafe {
                    libc::openat(
                        dirfd.as_raw_fd(),
                        c.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                })?;
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut f = File::from(fd.try_clone()?);
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
                self.finish_fd(&fd, e, &attr, name)?;
            }
            Kind::Symlink => {
                let target = cstr(self.ar.read_link(e)?)?;
                // SAFETY: valid fd and C strings.
                check(unsafe { libc::symlinkat(target.as_ptr(), dirfd.as_raw_fd(), c.as_ptr()) })?;
                let ts = timespec(&attr);
                // SAFETY: valid fd, C string and timespec array.
                check(unsafe {
                    libc::utimensat(
                        dirfd.as_raw_fd(),
                        c.as_ptr(),
                        ts.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
                let mut full = self.tmp_path.as_os_str().as_bytes().to_vec();
                full.push(b'/');
                full.extend_from_slice(&path);
                for (k, v) in self.ar.xattrs(e)? {
                    let (k, p) = (cstr(k)?, cstr(&full)?);
                    // SAFETY: valid C strings and value buffer.
                    let r = unsafe {
                        libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0)
                    };
                    if r < 0 {
                        self.warn_xattr(&path, &k, io::Error::last_os_error());
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets xattrs, permission bits and mtime on an open file or directory (after its
    /// contents, so a read-only directory can still be filled).
    fn finish_fd(
        &mut self,
        fd: &OwnedFd,
        e: EntryId,
        attr: &Attr,
        name: &[u8],
    ) -> anyhow::Result<()> {
        for (k, v) in self.ar.xattrs(e)? {
            let kc = cstr(k)?;
            // SAFETY: valid fd, C string and value buffer.
            let r = unsafe {
                libc::fsetxattr(fd.as_raw_fd(), kc.as_ptr(), v.as_ptr().cast(), v.len(), 0)
            };
            if r < 0 {
                self.warn_xattr(name, &kc, io::Error::last_os_error());
            }
        }
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), attr.perm as libc::mode_t) })?;
        let ts = timespec(attr);
        // SAFETY: valid fd and timespec array.
        check(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })?;
        Ok(())
    }

    fn warn_xattr(&mut self, path: &[u8], name: &CString, err: io::Error) {
        self.warned += 1;
        if self.warned <= 10 {
            eprintln!(
                "pkgtool: warning: cannot set xattr {} on {}: {err}",
                name.to_string_lossy(),
                escape(path)
            );
        }
    }
}

fn rel_display(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = rel.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}
