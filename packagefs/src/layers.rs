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

/// An error and its sources on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}
