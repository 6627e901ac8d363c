//! Grafting: a tree and a manifest for a packagefs package from another ecosystem's
//! package (docs/grafting.md). No command line here: `pkgtool graft` is a thin caller that
//! signs and writes what this crate builds.
//!
//! ```text
//! Debs::plan(A.deb B.deb)   control files (all) -> manifests (the batch in view:
//!                           alternatives, cycles broken) -> install order
//! Debs::build(i)            data.tar of package i -> Tree
//! graft_tree(spec, Tar(x))  tar entries -> Tree, manifest from the spec
//! graft_tree(spec, Dir(d))  directory walk (descriptors only) -> Tree, manifest
//! ```
//!
//! All input is read and checked before anything is built from it; the errors are
//! [`GraftError`]s naming the input.
#![deny(missing_docs)]

pub mod compress;
pub mod control;
pub mod deb;
pub mod manifest;
pub mod tarball;
pub mod version;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use format::manifest::{Manifest, Require};

pub use manifest::Mapped;
pub use tarball::{Built, Options, Stats};

/// What went wrong, and with which input.
#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    /// An input file that cannot be grafted (unreadable, malformed, unsafe).
    #[error("{}: {reason}", path.display())]
    Input {
        /// The input.
        path: PathBuf,
        /// Why, on one line.
        reason: String,
    },
    /// A value given for the manifest or the layout (`--name`, `--require`, `--prefix`,
    /// `--ignore-depends`, ...).
    #[error("{option}: {reason}")]
    Spec {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// A file under an input directory that cannot be grafted: the message names it.
    #[error("{0}")]
    InDir(String),
    /// Two inputs of one batch graft the same package.
    #[error("{}: another input also grafts {package} {version}: give each package once", path.display())]
    Duplicate {
        /// The second input.
        path: PathBuf,
        /// Its Debian package name.
        package: String,
        /// Its Debian version.
        version: String,
    },
}

fn input(path: &Path, reason: impl std::fmt::Display) -> GraftError {
    GraftError::Input {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A batch of Debian binary packages, planned: every control file read and mapped before
/// any data is read.
#[derive(Debug)]
pub struct Debs {
    /// The control information of each input, in input order.
    pub infos: Vec<deb::DebInfo>,
    /// The manifest and file name of each input, in input order.
    pub mapped: Vec<Mapped>,
}

impl Debs {
    /// Reads every control file and maps the batch (dependencies on `ignore` dropped).
    pub fn plan(paths: &[PathBuf], ignore: &HashSet<String>) -> Result<Debs, GraftError> {
        for n in ignore {
            control::check_deb_name(n).map_err(|reason| GraftError::Spec {
                option: "--ignore-depends",
                reason,
            })?;
        }
        let mut infos = Vec::new();
        for p in paths {
            infos.push(deb::read_control(p).map_err(|e| input(p, e))?);
        }
        let mapped =
            manifest::map_batch(&infos, ignore).map_err(|(i, e)| input(&infos[i].path, e))?;
        let mut names = HashSet::new();
        for (info, m) in infos.iter().zip(&mapped) {
            if !names.insert(m.file_name.clone()) {
                return Err(GraftError::Duplicate {
                    path: info.path.clone(),
                    package: info.package.clone(),
                    version: info.version.to_string(),
                });
            }
        }
        Ok(Debs { infos, mapped })
    }

    /// The tree of package `i` (its data.tar).
    pub fn build(&self, i: usize, strip_docs: bool) -> Result<Built, GraftError> {
        let info = &self.infos[i];
        let mut b = tarball::Builder::new(Options {
            prefix: Vec::new(),
            strip_docs,
        });
        deb::read_data(&info.path, &mut b).map_err(|e| input(&info.path, e))?;
        b.finish()
            .map_err(|e| input(&info.path, format!("{}: {e}", info.data_member)))
    }

    /// The order to make the packages visible in: providers before the packages that
    /// need them (a daemon watching the output directory sees valid sets only).
    pub fn install_order(&self) -> Vec<usize> {
        manifest::install_order(&self.mapped)
    }
}

/// The manifest of a tarball's or a directory's graft, as given on a command line.
#[derive(Debug, Clone, Default)]
pub struct TreeSpec {
    /// Package name.
    pub name: String,
    /// Version: semver, or a Debian-style version mapped as Debian versions are.
    pub version: String,
    /// One-line summary.
    pub summary: String,
    /// Requirements, `API` or `API RANGE`.
    pub requires: Vec<String>,
    /// Put the tree under this directory of the package.
    pub prefix: Option<String>,
}

/// What [`graft_tree`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A tarball (compression from the name, else from the data).
    Tar(&'a Path),
    /// A directory, read through descriptors.
    Dir(&'a Path),
}

/// The tree and manifest of a tarball or a directory.
pub fn graft_tree(
    spec: &TreeSpec,
    from: Input,
    strip_docs: bool,
) -> Result<(Manifest, Built), GraftError> {
    let (kind, path) = match from {
        Input::Tar(p) => ("tar", p),
        Input::Dir(p) => ("dir", p),
    };
    let manifest = manifest::tree_manifest(spec, kind)?;
    let prefix = match &spec.prefix {
        Some(p) => Options::parse_prefix(p).map_err(|reason| GraftError::Spec {
            option: "--prefix",
            reason,
        })?,
        None => Vec::new(),
    };
    let mut b = tarball::Builder::new(Options { prefix, strip_docs });
    match from {
        Input::Tar(p) => read_tarball(p, &mut b).map_err(|e| input(p, e))?,
        Input::Dir(p) => tarball::read_dir(p, &mut b).map_err(|e| {
            // The walk names the file that failed, under the directory, itself.
            let shown = p.display().to_string();
            match e.strip_prefix(&format!("{shown}: ")) {
                Some(rest) => input(p, rest),
                None if e.starts_with(&shown) => GraftError::InDir(e),
                None => input(p, e),
            }
        })?,
    }
    let built = b.finish().map_err(|e| input(path, e))?;
    Ok((manifest, built))
}

/// Reads a tarball, its compression taken from the name or else the data. The file is
/// opened once (a regular file, never blocking on a FIFO) and rewound after sniffing.
fn read_tarball(p: &Path, b: &mut tarball::Builder) -> Result<(), String> {
    use compress::{Codec, Counting};
    use std::io::{Read, Seek, SeekFrom};
    let mut f = format::archive::open_regular(p).map_err(|e| e.to_string())?;
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let codec = match Codec::of_file_name(&name) {
        Some(c) => c,
        None => {
            let mut head = vec![0u8; 512];
            let n = (&mut f)
                .take(512)
                .read(&mut head)
                .map_err(|e| e.to_string())?;
            head.truncate(n);
            f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            Codec::sniff(&head).ok_or_else(|| {
                "unknown compression: neither the name (.tar, .tar.gz, .tar.xz, .tar.zst, \
                 .tar.bz2, .tar.lzma) nor the data say how it is packed"
                    .to_owned()
            })?
        }
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut counted = Counting::new(std::io::BufReader::new(f));
    let mut dec = codec.reader(&mut counted).map_err(|e| e.to_string())?;
    let result = tarball::read_tar(&mut dec, b);
    drop(dec);
    result.map_err(|e| {
        // A decoder that failed at the very end of the file ran out of data.
        if codec != Codec::None && counted.count >= len && !e.contains("truncated") {
            format!("truncated: the {} data ends early ({e})", codec.name())
        } else {
            e
        }
    })
}

/// A requirement written `API` or `API RANGE` (`libc6 >=2.34`).
pub fn parse_require(s: &str) -> Result<Require, GraftError> {
    let s = s.trim();
    let (api, range) = match s.split_once(char::is_whitespace) {
        Some((a, r)) => (a, r.trim()),
        None => (s, "*"),
    };
    let version = semver::VersionReq::parse(range).map_err(|e| GraftError::Spec {
        option: "--require",
        reason: format!("{s:?}: invalid semver range {range:?}: {e}"),
    })?;
    Ok(Require {
        api: api.to_owned(),
        version,
    })
}
