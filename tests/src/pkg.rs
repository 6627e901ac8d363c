//! Keys, packages and layers, made with the real `pkgtool`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{pkgtool, run_ok};

/// A signing key pair made by `pkgtool keygen`, and a trusted-keys directory holding its
/// public key.
#[derive(Debug)]
pub struct Keys {
    _dir: Option<TempDir>,
    secret: PathBuf,
    public: PathBuf,
    trusted: PathBuf,
}

impl Keys {
    /// Generates `NAME.key` and `NAME.pub` in a new temporary directory.
    pub fn new(name: &str) -> Keys {
        let dir = tempfile::Builder::new()
            .prefix("e2e-keys-")
            .tempdir()
            .unwrap();
        let mut keys = Self::in_dir(dir.path(), name);
        keys._dir = Some(dir);
        keys
    }

    /// Generates the pair inside the existing directory `dir` (which must not hold keys of
    /// that name, nor a `trusted/` directory yet), and leaves them there.
    pub fn in_dir(dir: &Path, name: &str) -> Keys {
        run_ok(
            Command::new(pkgtool())
                .args(["keygen", name, "--dir"])
                .arg(dir),
        );
        let trusted = dir.join("trusted");
        fs::create_dir(&trusted).unwrap();
        let public = dir.join(format!("{name}.pub"));
        fs::copy(&public, trusted.join(format!("{name}.pub"))).unwrap();
        Keys {
            secret: dir.join(format!("{name}.key")),
            public,
            trusted,
            _dir: None,
        }
    }

    /// The secret key file (`NAME.key`).
    pub fn secret(&self) -> &Path {
        &self.secret
    }

    /// The public key file (`NAME.pub`).
    pub fn public(&self) -> &Path {
        &self.public
    }

    /// A directory holding only this pair's public key, for `--trusted-keys`.
    pub fn trusted(&self) -> &Path {
        &self.trusted
    }
}

/// A `pkgtool build` invocation.
#[derive(Debug, Clone)]
pub struct Pkg {
    src: PathBuf,
    name: String,
    version: String,
    key: Option<PathBuf>,
    chunk_size: Option<String>,
    compression: Option<String>,
    requires: Vec<(String, String)>,
}

impl Pkg {
    /// Packages the tree at `src` as `name` `version` (unsigned unless [`Pkg::key`] is given).
    pub fn new(src: impl AsRef<Path>, name: &str, version: &str) -> Pkg {
        Pkg {
            src: src.as_ref().to_path_buf(),
            name: name.to_owned(),
            version: version.to_owned(),
            key: None,
            chunk_size: None,
            compression: None,
            requires: Vec::new(),
        }
    }

    /// Adds a `requires` entry (`api`, semver range).
    pub fn requires(mut self, api: &str, range: &str) -> Pkg {
        self.requires.push((api.to_owned(), range.to_owned()));
        self
    }

    /// Signs with this key pair.
    pub fn key(mut self, keys: &Keys) -> Pkg {
        self.key = Some(keys.secret().to_path_buf());
        self
    }

    /// `--chunk-size` (`64K` .. `1M`).
    pub fn chunk_size(mut self, size: &str) -> Pkg {
        self.chunk_size = Some(size.to_owned());
        self
    }

    /// `--compression` (`zstd:3`, `zlib:6`, `none`).
    pub fn compression(mut self, c: &str) -> Pkg {
        self.compression = Some(c.to_owned());
        self
    }

    /// Runs `pkgtool build`, writing `out`; panics with pkgtool's output if it fails.
    pub fn build(&self, out: impl AsRef<Path>) -> PathBuf {
        let out = out.as_ref();
        let mdir = tempfile::Builder::new()
            .prefix("e2e-manifest-")
            .tempdir()
            .unwrap();
        let manifest = mdir.path().join("manifest.json");
        fs::write(
            &manifest,
            format!(
                "{{\"name\": \"{}\", \"version\": \"{}\", \"requires\": [{}]}}\n",
                self.name,
                self.version,
                self.requires
                    .iter()
                    .map(|(a, r)| format!("{{\"api\": \"{a}\", \"version\": \"{r}\"}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .unwrap();
        let mut cmd = Command::new(pkgtool());
        cmd.arg("build")
            .arg(&self.src)
            .arg("-o")
            .arg(out)
            .arg("--manifest")
            .arg(&manifest)
            .args(["--quiet", "--jobs", "2"])
            // mtimes are part of what the tests compare
            .env_remove("SOURCE_DATE_EPOCH");
        match &self.key {
            Some(k) => cmd.arg("--key").arg(k),
            None => cmd.arg("--unsigned"),
        };
        if let Some(c) = &self.chunk_size {
            cmd.args(["--chunk-size", c]);
        }
        if let Some(c) = &self.compression {
            cmd.args(["--compression", c]);
        }
        run_ok(&mut cmd);
        out.to_path_buf()
    }
}

/// Builds a package signed by `keys` with pkgtool's default options; returns `out`.
pub fn build_pkg(
    src: impl AsRef<Path>,
    name: &str,
    version: &str,
    out: impl AsRef<Path>,
    keys: &Keys,
) -> PathBuf {
    Pkg::new(src, name, version).key(keys).build(out)
}

/// A layer directory: `packages/` (the daemon adds `state/`).
#[derive(Debug)]
pub struct Layer {
    dir: TempDir,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty layer (with an empty `packages/`) in a new temporary directory.
    pub fn new() -> Layer {
        let dir = tempfile::Builder::new()
            .prefix("e2e-layer-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("packages")).unwrap();
        Layer { dir }
    }

    /// The layer directory (for `--layer NAME=DIR`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `packages/NAME.hpkg`: where to build a package into this layer.
    pub fn package(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("packages")
            .join(format!("{name}.hpkg"))
    }

    /// Adds an existing package file to `packages/` (a hard link, or a copy across file
    /// systems).
    pub fn add(&self, pkg: impl AsRef<Path>) -> PathBuf {
        let pkg = pkg.as_ref();
        let dst = self
            .dir
            .path()
            .join("packages")
            .join(pkg.file_name().unwrap());
        if fs::hard_link(pkg, &dst).is_err() {
            fs::copy(pkg, &dst).unwrap();
        }
        dst
    }
}

/// A key pair and a stack of named layers (lowest first): the usual set-up of a mount test.
/// Declare the [`Mount`](crate::Mount) after the stack, so that it is dropped (unmounted)
/// before the layers are deleted.
#[derive(Debug)]
pub struct Stack {
    keys: Keys,
    layers: Vec<(String, Layer)>,
}

impl Stack {
    /// A new key pair and one empty layer per name, lowest first.
    pub fn new(layer_names: &[&str]) -> Stack {
        Stack {
            keys: Keys::new("e2e"),
            layers: layer_names
                .iter()
                .map(|n| ((*n).to_owned(), Layer::new()))
                .collect(),
        }
    }

    /// The key pair every package of the stack is signed with.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The layer called `name`.
    pub fn layer(&self, name: &str) -> &Layer {
        self.layers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l)
            .unwrap_or_else(|| panic!("no layer {name}"))
    }

    /// Builds `src` as package `name` 1.0.0, signed, into layer `layer`.
    pub fn add(&self, layer: &str, src: impl AsRef<Path>, name: &str) -> PathBuf {
        self.add_pkg(layer, name, Pkg::new(src, name, "1.0.0"))
    }

    /// Builds `pkg` (signed with the stack's key) into layer `layer` as `FILE.hpkg`.
    pub fn add_pkg(&self, layer: &str, file: &str, pkg: Pkg) -> PathBuf {
        pkg.key(&self.keys).build(self.layer(layer).package(file))
    }

    /// A mount builder with every layer of the stack, trusting the stack's key.
    pub fn builder(&self) -> crate::MountBuilder {
        let mut b = crate::Mount::builder().trusting(&self.keys);
        for (n, l) in &self.layers {
            b = b.layer_of(n, l);
        }
        b
    }

    /// Mounts the stack and waits until the mount is live.
    pub fn mount(&self) -> crate::Mount {
        self.builder().start()
    }
}
