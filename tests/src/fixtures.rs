//! Large fixtures shared by the tests of one run, each built once (`OnceLock`): packages of
//! real trees (`/usr/share/doc`, `/usr/include`) and of a big generated file.
//!
//! They live in one temporary directory that is removed when the test process exits
//! (see [`crate::process_temp_dir`]). The real trees are first copied there, so that a package installed on this
//! machine while the tests run cannot make a comparison fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tree::{random_bytes, text_bytes};
use crate::{run_ok, Keys, Pkg};

static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();
static KEYS: OnceLock<Keys> = OnceLock::new();
static DOC: OnceLock<SharedPkg> = OnceLock::new();
static INCLUDE: OnceLock<SharedPkg> = OnceLock::new();
static BIG: OnceLock<SharedPkg> = OnceLock::new();

/// Size of the big generated file of [`big`].
pub const BIG_FILE_LEN: usize = 24 << 20;

/// The directory of the shared fixtures (removed at exit).
pub fn shared_dir() -> &'static Path {
    SHARED_DIR.get_or_init(|| crate::process_temp_dir("e2e-shared-"))
}

/// The key pair that signs the shared packages.
pub fn keys() -> &'static Keys {
    KEYS.get_or_init(|| {
        let d = shared_dir().join("keys");
        fs::create_dir(&d).unwrap();
        Keys::in_dir(&d, "e2e")
    })
}

/// A package built once per run, alone in a layer of its own.
#[derive(Debug)]
pub struct SharedPkg {
    /// The tree it was built from.
    pub source: PathBuf,
    /// The package file.
    pub package: PathBuf,
    /// A layer directory holding only this package.
    pub layer: PathBuf,
}

fn build_shared(name: &str, source: PathBuf, configure: impl FnOnce(Pkg) -> Pkg) -> SharedPkg {
    let layer = shared_dir().join(format!("layer-{name}"));
    fs::create_dir_all(layer.join("packages")).unwrap();
    let package = layer.join("packages").join(format!("{name}.hpkg"));
    configure(Pkg::new(&source, name, "1.0.0").key(keys())).build(&package);
    SharedPkg {
        source,
        package,
        layer,
    }
}

/// A private copy of a host tree (cp -a: modes, mtimes, links, xattrs kept).
fn copy_host_tree(from: &str, name: &str) -> PathBuf {
    let dst = shared_dir().join("src").join(name);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(from).arg(&dst));
    dst
}

/// `/usr/share/doc` (about 4000 files, 100 MiB): zstd level 3, 256 KiB chunks.
pub fn doc() -> &'static SharedPkg {
    DOC.get_or_init(|| {
        let src = copy_host_tree("/usr/share/doc", "doc");
        build_shared("doc", src, |p| p.compression("zstd:3"))
    })
}

/// `/usr/include` (about 8000 files, 110 MiB): zlib level 1, 128 KiB chunks.
pub fn include() -> &'static SharedPkg {
    INCLUDE.get_or_init(|| {
        let src = copy_host_tree("/usr/include", "include");
        build_shared("include", src, |p| {
            p.compression("zlib:1").chunk_size("128K")
        })
    })
}

/// A generated tree: `big/blob` ([`BIG_FILE_LEN`] random bytes, stored raw), `big/text`
/// (8 MiB of text) and 500 small files `small/NNN`; 64 KiB chunks.
pub fn big() -> &'static SharedPkg {
    BIG.get_or_init(|| {
        let src = shared_dir().join("src").join("big");
        fs::create_dir_all(src.join("big")).unwrap();
        fs::create_dir_all(src.join("small")).unwrap();
        fs::write(src.join("big/blob"), random_bytes(7, BIG_FILE_LEN)).unwrap();
        fs::write(src.join("big/text"), text_bytes(8, 8 << 20)).unwrap();
        for i in 0..500u64 {
            let data = text_bytes(1000 + i, 100 + (i as usize * 37) % 9000);
            fs::write(src.join(format!("small/{i:03}")), data).unwrap();
        }
        build_shared("big", src, |p| p.compression("zstd:3").chunk_size("64K"))
    })
}
