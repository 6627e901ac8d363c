//! packagefs on-disk formats: the `.hpkg` package archive, package manifests and signing keys.
//!
//! This crate knows nothing of FUSE or of package sets. Its data flow:
//!
//! ```text
//! Tree::from_dir(dir) ──► archive::writer::write_archive(tree, manifest, key, opts, out)
//!                                                   │  .hpkg (see FORMAT.md)
//! Archive::open(path) ◄─────────────────────────────┘
//!   ├─ id(), signer(), check_trust(keys), manifest()
//!   ├─ lookup(dir, name), read_dir(dir), attr(e), read_link(e), xattrs(e), walk()
//!   └─ read_at(e, off, buf) / read_at_with(e, off, buf, chunk loader) / read_chunk(c)
//! Archive::from_file_with(file, path, keys, heaps)   a thin package (archive::thin): the
//!   same metadata, its heap read through the caller's Heaps (this crate knows no network)
//! ```
//!
//! ```no_run
//! use format::archive::{Archive, Tree, BuildOptions, writer::write_archive};
//! use format::{keys::SecretKey, manifest::Manifest};
//! # fn main() -> format::Result<()> {
//! let key = SecretKey::generate("me")?;
//! let manifest = Manifest::from_json(br#"{"name": "hello", "version": "1.0.0"}"#)?;
//! let tree = Tree::from_dir("/usr/share/doc/bash".as_ref())?;
//! write_archive(&tree, &manifest, Some(&key), &BuildOptions::default(), "hello.hpkg".as_ref(), &|_, _| {})?;
//! let a = Archive::open("hello.hpkg".as_ref())?;
//! let e = a.lookup_path(b"copyright")?.expect("present");
//! let mut buf = vec![0; 100];
//! let n = a.read_at(e, 0, &mut buf)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod active_list;
pub mod archive;
pub mod delta;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod text;

pub use error::{Error, Result};
