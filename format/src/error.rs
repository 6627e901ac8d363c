//! The one error type of the `format` crate.
//!
//! Every variant records what failed and where, as data, so callers (pkgtool, the daemon)
//! can print a one-line message or pick an errno without parsing strings. Messages are
//! lowercase without a final period; a cause is either in the text or in `source`, never both.

use std::io;
use std::path::PathBuf;

use crate::manifest::ManifestError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or checking a package.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the package magic.
    #[error("not a package archive (bad magic)")]
    BadMagic,
    /// The format version is one this reader does not know.
    #[error("unsupported archive format version {major}.{minor} (this reader knows {known}.x)")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
        /// Major version this reader implements.
        known: u16,
    },
    /// A method byte (of the header, the TOC frame or a chunk) this reader does not know:
    /// the archive is of a newer minor version, or corrupt. Never guessed at.
    #[error(
        "{what}: unknown compression method {method} (the archive is format 1.{minor}; this reader knows methods 0 to {last}, up to format 1.{known})",
        last = crate::archive::Method::Lz4 as u8,
        known = crate::archive::header::VERSION_MINOR
    )]
    UnknownMethod {
        /// What carries the byte: `header`, `toc frame`, `chunk index entry 7`.
        what: String,
        /// The method byte.
        method: u8,
        /// The archive's format minor version.
        minor: u16,
    },
    /// A section or record lies (partly) beyond the end of the file or its section.
    #[error("archive truncated: {section} needs bytes {offset}..{end} but only {len} are there", end = offset.saturating_add(*need))]
    Truncated {
        /// The section being read.
        section: &'static str,
        /// Where the read starts.
        offset: u64,
        /// How many bytes it needs.
        need: u64,
        /// How many bytes are available.
        len: u64,
    },
    /// A structural rule of the format is broken.
    #[error("corrupt archive: {section}: {reason}")]
    Corrupt {
        /// The section (or record) that is wrong, e.g. `header`, `toc entry 17`.
        section: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The metadata (header, manifest, TOC, chunk index) does not hash to the id in the trailer.
    #[error("corrupt archive: metadata hash {actual} does not match the package id {expected} in the trailer")]
    MetadataHash {
        /// The id recorded in the trailer.
        expected: String,
        /// The hash of the metadata as found.
        actual: String,
    },
    /// A chunk's stored bytes do not match the hash in the chunk index.
    #[error("chunk {chunk} does not match its hash")]
    ChunkHash {
        /// Chunk number.
        chunk: u32,
    },
    /// A chunk's stored bytes match their hash but do not decompress to the recorded length.
    #[error("chunk {chunk} does not decompress: {reason}")]
    Decompress {
        /// Chunk number.
        chunk: u32,
        /// What the decompressor said.
        reason: String,
    },
    /// The package carries no signature.
    #[error("package is not signed")]
    Unsigned,
    /// The signature does not verify against the embedded public key.
    #[error("signature by key {key} is not valid")]
    BadSignature {
        /// Key id of the embedded public key.
        key: String,
    },
    /// The package is signed by a key that is not trusted.
    #[error("package is signed by key {key}, which is not a trusted key")]
    UnknownKey {
        /// Key id of the signer.
        key: String,
    },
    /// A key file is malformed.
    #[error("bad key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest does not validate.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A source tree cannot be packaged as it is.
    #[error("{}: {reason}", path.display())]
    Source {
        /// The offending source path.
        path: PathBuf,
        /// Why it cannot be packaged.
        reason: String,
    },
    /// Bad build options.
    #[error("invalid option: {0}")]
    Options(String),
    /// A chunk of a thin package that is not on this machine, and this reader was given
    /// no way to fetch it.
    #[error(
        "chunk {chunk} is not on this machine (a thin package: `pkgtool fetch` makes it whole)"
    )]
    NotLocal {
        /// Chunk number.
        chunk: u32,
    },
    /// A thin package's heap could not be reached, or a chunk of it fetched.
    #[error("{}cannot be fetched: {reason}", chunk.map(|c| format!("chunk {c} ")).unwrap_or_default())]
    Fetch {
        /// Chunk number (`None`: the heap as a whole).
        chunk: Option<u32>,
        /// Why, one line.
        reason: String,
    },
    /// An entry number that does not exist in this archive.
    #[error("no entry {0} in this archive")]
    NoEntry(u32),
    /// The entry is not of the kind the operation needs.
    #[error("entry {entry} is a {actual}, not a {wanted}")]
    WrongKind {
        /// Entry number.
        entry: u32,
        /// What the operation needs.
        wanted: crate::archive::Kind,
        /// What the entry is.
        actual: crate::archive::Kind,
    },
    /// A package delta's bytes are damaged or malformed (or it is not a delta).
    #[error("corrupt delta: {reason}")]
    DeltaCorrupt {
        /// What is wrong, and where.
        reason: String,
    },
    /// A delta was applied to another package than the one it was made from.
    #[error("the delta applies to package {wanted}, not to {actual}")]
    DeltaWrongBase {
        /// The id of the old package the delta was made from.
        wanted: String,
        /// The id of the package it was applied to.
        actual: String,
    },
    /// A chunk rebuilt from a delta does not match the new package's chunk index.
    #[error("delta: chunk {chunk} of the new package: {reason}")]
    DeltaChunk {
        /// Chunk number in the new package.
        chunk: u32,
        /// What does not match.
        reason: String,
    },
    /// A delta cannot be made between these two packages.
    #[error("cannot make a delta: {0}")]
    DeltaUnsupported(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(section: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            section: section.into(),
            reason: reason.into(),
        }
    }

    /// True if the error means the archive's bytes are damaged or malformed (as opposed to
    /// an I/O failure, an untrusted key or a caller mistake).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::BadMagic
                | Error::Truncated { .. }
                | Error::Corrupt { .. }
                | Error::MetadataHash { .. }
                | Error::ChunkHash { .. }
                | Error::Decompress { .. }
                | Error::BadSignature { .. }
                | Error::DeltaCorrupt { .. }
                | Error::DeltaChunk { .. }
        )
    }
}

/// A temporary file beside `out` (in its directory, named `PREFIX…SUFFIX`), which a
/// writer fills, fsyncs and renames over `out` last, so that `out` is either whole or
/// untouched. An error names the directory (tempfile's own message names a file that was
/// never made).
pub(crate) fn temp_beside(
    out: &std::path::Path,
    prefix: &str,
    suffix: &str,
) -> Result<tempfile::NamedTempFile> {
    let dir = dir_of(out);
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(|e| {
            Error::io(
                dir,
                e.raw_os_error().map_or(e, io::Error::from_raw_os_error),
            )
        })
}

/// Renames `tmp` (from [`temp_beside`], written and fsynced) over `out` and fsyncs the
/// directory, so that the new name survives a power cut.
pub(crate) fn persist_beside(tmp: tempfile::NamedTempFile, out: &std::path::Path) -> Result<()> {
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    if let Ok(d) = std::fs::File::open(dir_of(out)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The directory a file `out` is in (`.` for a bare name).
fn dir_of(out: &std::path::Path) -> &std::path::Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    }
}
