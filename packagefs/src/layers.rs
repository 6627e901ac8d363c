//! The layer directories given on the command line, and the one-line error printer.
//! (Which packages of a layer are active is decided by `live.rs` through `pkgset`.)

use std::path::PathBuf;

/// A layer directory given on the command line.
#[derive(Debug, Clone)]
pub struct LayerDir {
    /// Layer name (`system`, `common`, `user`, ...).
    pub name: String,
    /// Its directory (holding `packages/`).
    pub dir: PathBuf,
}

/// An error and its sources on one line (the package-set library's printer).
pub use pkgset::stack::one_line;
