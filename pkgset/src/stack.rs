//! A stack of layers and the changes to its active sets: the reconcile step that both
//! `pkgtool` (install, remove, rollback) and the `packagefs` daemon (a file dropped,
//! deleted, an `active.list` replaced) go through, so they decide alike.
//!
//! ```text
//! Stack::load_active(layer)          active.list ─► the packages (pool first, then packages/)
//! Stack::scan(layer)                 packages/   ─► every trusted package there, or why not
//! plan(current sets, layer, Change)  ─► Plan { new sets, what changed, what broke } | Refused
//! Stack::commit(plan)                ─► a new generation in every layer the plan changed
//! ```
//!
//! A plan is computed from the whole stack: requirements are met by the same or a lower
//! layer, so a change to a low layer is checked against every layer above it too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use format::active_list::{ActiveList, Entry};
use format::archive::{Archive, PackageId};
use format::keys::TrustedKeys;

use crate::generation::{self, LayerPaths, StateError};
use crate::resolve::{resolve, Want};
use crate::set::{check, Candidate, Problem, Refused};

/// One layer of a stack: its name (`system`, `common`, `user`, ...) and directory.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// The name.
    pub name: String,
    /// Its paths.
    pub paths: LayerPaths,
}

impl LayerSpec {
    /// A layer named `name` at `dir`.
    pub fn new(name: &str, dir: impl Into<PathBuf>) -> LayerSpec {
        LayerSpec {
            name: name.to_owned(),
            paths: LayerPaths::new(dir),
        }
    }

    /// Parses `NAME=DIR`, or `DIR` (the name is then the directory's last component).
    pub fn parse(s: &str) -> Result<LayerSpec, String> {
        let (name, dir) = match s.split_once('=') {
            Some((n, d)) => (n.to_owned(), d),
            None => {
                let name = Path::new(s)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| format!("{s}: cannot name the layer (use NAME=DIR)"))?;
                (name.to_owned(), s)
            }
        };
        if !is_layer_name(&name) {
            return Err(format!(
                "{s}: a layer name is letters, digits, `-`, `_` and `.`"
            ));
        }
        if dir.is_empty() {
            return Err(format!("{s}: no layer directory"));
        }
        Ok(LayerSpec::new(&name, dir))
    }
}

/// The rule for layer names (`system`, `user.alice`): not empty; ASCII letters, digits,
/// `-`, `_` and `.`. pkgtool and packagefs both check names by it.
pub fn is_layer_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A package file that is not usable, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: OpenError,
}

/// Why a package file was not opened, by kind; each prints as one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// It cannot be opened safely: a symbolic link (never followed in a layer), a FIFO or
    /// a device, or an I/O error.
    #[error("{0}")]
    Unreadable(Arc<std::io::Error>),
    /// It is not signed, or not by a trusted key, or the signature is wrong.
    #[error("{}", one_line(.0.as_ref()))]
    Untrusted(Arc<format::Error>),
    /// It is not a valid package (truncated, corrupt, an unknown format version).
    #[error("{}", one_line(.0.as_ref()))]
    Invalid(Arc<format::Error>),
    /// It asks for more than its signer may (the capability policy), or declares services
    /// it does not ship ([`crate::capabilities`]).
    #[error("{0}")]
    Policy(String),
    /// It is thin and names a repository its layer may not name
    /// ([`repo::allow::AllowList`]).
    #[error("{0}")]
    Repository(String),
    /// It is thin, and only whole packages are used (a boot: the network is not up).
    #[error(
        "it is thin (its data is in repository {0}): a boot uses whole packages only \
         (`pkgtool fetch` makes it whole)"
    )]
    Thin(String),
}

impl OpenError {
    /// The kind, as JSON output names it: `unreadable`, `untrusted`, `invalid` or `policy`.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::Unreadable(_) => "unreadable",
            OpenError::Untrusted(_) => "untrusted",
            OpenError::Invalid(_) => "invalid",
            OpenError::Policy(_) => "policy",
            OpenError::Repository(_) => "repository",
            OpenError::Thin(_) => "thin",
        }
    }

    fn io(e: std::io::Error) -> OpenError {
        OpenError::Unreadable(Arc::new(e))
    }

    fn archive(e: format::Error) -> OpenError {
        match e {
            format::Error::Io { .. } => OpenError::Invalid(Arc::new(e)),
            format::Error::Unsigned
            | format::Error::BadSignature { .. }
            | format::Error::UnknownKey { .. } => OpenError::Untrusted(Arc::new(e)),
            e => OpenError::Invalid(Arc::new(e)),
        }
    }
}

/// Why a package an active list names cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unusable {
    /// The file that holds it does not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// No file holds it.
    #[error("neither the pool nor packages/ holds this package")]
    Missing,
    /// The file found holds another package.
    #[error("{} holds package {found} instead", path.display())]
    OtherId {
        /// The file.
        path: PathBuf,
        /// The id of what it holds.
        found: PackageId,
    },
    /// The package has another name or version than the list says.
    #[error("the package is {found}")]
    OtherLabel {
        /// `name-version` of the package.
        found: String,
    },
}

/// Errors of loading a layer's active set.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// A package the active set names is missing or not usable.
    #[error("layer {layer}: {label} ({id}): {reason}")]
    Package {
        /// The layer.
        layer: String,
        /// `name-version` as listed.
        label: String,
        /// Its id.
        id: PackageId,
        /// What is wrong.
        reason: Box<Unusable>,
    },
}

/// The identity of a file's current contents, as far as metadata tells. (Not its ctime:
/// hard-linking a package into the pool changes that, and the contents stay the same.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileKey {
    fn of(md: &fs::Metadata) -> FileKey {
        FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

/// Opens package files and checks their signatures, remembering what it opened: a file
/// whose metadata has not changed is not opened again. Each file keeps an archive of its
/// own, even when two files hold the same package: reads go to the file an archive was
/// opened from, and only the pool's copy is safe from writes to `packages/`.
#[derive(Debug)]
pub struct Opener {
    keys: TrustedKeys,
    policy: crate::capabilities::Policy,
    files: HashMap<FileKey, (PathBuf, Result<Arc<Archive>, OpenError>)>,
    /// Where thin packages' heaps are read from (none: their chunks are `NotLocal`).
    heaps: Option<Arc<dyn format::archive::thin::Heaps>>,
    /// The repositories thin packages in layers not owned by root may name.
    repositories: Arc<repo::allow::AllowList>,
    /// Thin packages are refused (a boot).
    whole_only: bool,
}

/// The rules a package must meet besides its signature: the capability policy, and for a
/// thin package opened for a user other than root (`uid`), the repository allow-list.
fn admit(
    a: &Archive,
    keys: &TrustedKeys,
    policy: &crate::capabilities::Policy,
    repositories: &repo::allow::AllowList,
    uid: u32,
) -> Result<(), OpenError> {
    policy.check(a, keys).map_err(OpenError::Policy)?;
    match a.thin_source() {
        Some(s) if uid != 0 => repositories
            .check(&s.mirrors)
            .map_err(OpenError::Repository),
        _ => Ok(()),
    }
}

/// Opens the package in `file` (opened as the layer's owner, whose uid is `uid`). A thin
/// package's heap is opened only if its repositories are ones its layer may name: a
/// package the allow-list refuses never makes the daemon connect anywhere, not even for
/// its prefetch list.
fn open_archive(
    file: fs::File,
    path: &Path,
    keys: &TrustedKeys,
    heaps: Option<&dyn format::archive::thin::Heaps>,
    repositories: &repo::allow::AllowList,
    uid: u32,
) -> Result<Archive, OpenError> {
    // The file is open; the rest reads it by descriptor, and a thin package's heap is in
    // the daemon's chunk store, which the owner cannot reach.
    let _daemon = crate::owner::AsOwner::daemon();
    match heaps {
        Some(h) => {
            let guarded = Guarded {
                inner: h,
                list: (uid != 0).then_some(repositories),
                refused: std::sync::Mutex::new(None),
            };
            Archive::from_file_with(file, path, Some(keys), &guarded).map_err(|e| {
                match guarded
                    .refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    Some(why) => OpenError::Repository(why),
                    None => OpenError::archive(e),
                }
            })
        }
        None => Archive::from_file_trusted(file, path, keys).map_err(OpenError::archive),
    }
}

/// Heaps that first check a thin package's repositories against an allow-list.
#[derive(Debug)]
struct Guarded<'a> {
    inner: &'a dyn format::archive::thin::Heaps,
    list: Option<&'a repo::allow::AllowList>,
    refused: std::sync::Mutex<Option<String>>,
}

impl format::archive::thin::Heaps for Guarded<'_> {
    fn open(
        &self,
        pkg: &format::archive::thin::ThinPackage,
    ) -> Result<Arc<dyn format::archive::thin::RemoteHeap>, String> {
        if let Some(list) = self.list {
            if let Err(why) = list.check(&pkg.source.mirrors) {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                return Err(why);
            }
        }
        self.inner.open(pkg)
    }
}

impl Opener {
    /// An opener trusting `keys`.
    pub fn new(keys: TrustedKeys) -> Opener {
        Opener {
            keys,
            policy: crate::capabilities::Policy::unrestricted(),
            files: HashMap::new(),
            heaps: None,
            repositories: Arc::new(repo::allow::AllowList::none()),
            whole_only: false,
        }
    }

    /// The repositories thin packages may name in layers not owned by root (by default,
    /// none).
    pub fn set_repositories(&mut self, list: repo::allow::AllowList) {
        self.repositories = Arc::new(list);
    }

    /// Refuse thin packages (`true`, for a boot's choice) or not.
    pub fn set_whole_only(&mut self, on: bool) {
        self.whole_only = on;
    }

    fn whole(&self, r: Result<Arc<Archive>, OpenError>) -> Result<Arc<Archive>, OpenError> {
        match r {
            Ok(a) if self.whole_only && a.is_thin() => Err(OpenError::Thin(
                a.thin_source()
                    .and_then(|s| s.mirrors.first().cloned())
                    .unwrap_or_default(),
            )),
            r => r,
        }
    }

    /// Reads the heaps of thin packages through `heaps` (the daemon's repository client):
    /// packages opened from now on read their missing chunks there.
    pub fn set_heaps(&mut self, heaps: Arc<dyn format::archive::thin::Heaps>) {
        self.heaps = Some(heaps);
    }

    /// An opener trusting `keys` within `policy`: a package asking for more than its
    /// signer may is refused like an untrusted one ([`crate::capabilities`]).
    pub fn with_policy(keys: TrustedKeys, policy: crate::capabilities::Policy) -> Opener {
        Opener {
            policy,
            ..Opener::new(keys)
        }
    }

    /// Opens `path`, a file of a layer, validates it and checks it is signed by a trusted
    /// key. A symlink is refused ([`crate::owner::open_in_layer`]).
    pub fn open(&mut self, path: &Path) -> Result<Arc<Archive>, OpenError> {
        // A file seen before, unchanged: one lstat, not an open (a reconcile looks at
        // every file of packages/ after every batch of events).
        if let Ok(md) = fs::symlink_metadata(path) {
            if md.is_file() {
                if let Some((known, r)) = self.files.get_mut(&FileKey::of(&md)) {
                    if known != path {
                        *known = path.to_owned();
                    }
                    let r = r.clone();
                    return self.whole(r);
                }
            }
        }
        let file = crate::owner::open_in_layer(path).map_err(OpenError::io)?;
        self.open_file(file, path)
    }

    /// Like [`Opener::open`], for a file named by the user outside any layer (a package to
    /// install): symlinks are followed, as for any command-line argument.
    pub fn open_given(&mut self, path: &Path) -> Result<Arc<Archive>, OpenError> {
        let file = format::archive::open_regular(path).map_err(OpenError::io)?;
        self.open_file(file, path)
    }

    fn open_file(&mut self, file: fs::File, path: &Path) -> Result<Arc<Archive>, OpenError> {
        let md = file.metadata().map_err(OpenError::io)?;
        if !md.is_file() {
            return Err(OpenError::io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let key = FileKey::of(&md);
        if let Some((known, r)) = self.files.get_mut(&key) {
            // The newest name of the file: `prune` forgets files whose name is gone, and
            // a package deleted from packages/ lives on in the pool under another name.
            if known != path {
                *known = path.to_owned();
            }
            let r = r.clone();
            return self.whole(r);
        }
        // Trust first: an unsigned or untrusted file costs its header and trailer.
        let uid = crate::owner::current().0;
        let r = open_archive(
            file,
            path,
            &self.keys,
            self.heaps.as_deref(),
            &self.repositories,
            uid,
        )
        .and_then(|a| admit(&a, &self.keys, &self.policy, &self.repositories, uid).map(|()| a))
        .map(Arc::new);
        self.files.insert(key, (path.to_owned(), r.clone()));
        self.whole(r)
    }

    /// Opens (and checks) the files of `paths` not opened before, in parallel: opening is
    /// mostly hashing and a signature check, so a thousand packages take a fraction of the
    /// time on several cores. Errors are remembered like [`Opener::open`]'s.
    pub fn preload(&mut self, paths: &[PathBuf]) {
        use rayon::prelude::*;
        let mut todo: Vec<(FileKey, &PathBuf)> = Vec::new();
        for p in paths {
            let Some(md) = fs::symlink_metadata(p).ok().filter(|m| m.is_file()) else {
                continue;
            };
            let key = FileKey::of(&md);
            match self.files.get_mut(&key) {
                Some((known, _)) => {
                    if known != p {
                        *known = p.clone();
                    }
                }
                None => todo.push((key, p)),
            }
        }
        let keys = &self.keys;
        let policy = &self.policy;
        let repositories = &self.repositories;
        let heaps = self.heaps.as_deref();
        // Each worker opens with this thread's identity (a user's layer: the user's).
        let (uid, gid) = crate::owner::current();
        let opened: Vec<(FileKey, &PathBuf, Result<Archive, OpenError>)> = todo
            .into_par_iter()
            .map(|(key, p)| {
                let _as = crate::owner::AsOwner::of(uid, gid);
                let r = crate::owner::open_in_layer(p)
                    .map_err(OpenError::io)
                    .and_then(|f| open_archive(f, p, keys, heaps, repositories, uid))
                    .and_then(|a| admit(&a, keys, policy, repositories, uid).map(|()| a));
                (key, p, r)
            })
            .collect();
        for (key, p, r) in opened {
            let r = r.map(Arc::new);
            self.files.insert(key, (p.clone(), r));
        }
    }

    /// Forgets files that are gone or changed, and archives nobody else holds, so that a
    /// long-lived opener neither grows nor keeps deleted package files allocated.
    pub fn prune(&mut self) {
        self.files
            .retain(|key, (path, _)| fs::metadata(path).is_ok_and(|md| FileKey::of(&md) == *key));
    }
}

/// An error and its sources on one line: each source once (not when the message already
/// ends with it), separated by `: `, newlines as spaces. Every binary prints errors so.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !t.is_empty() && !s.ends_with(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}

/// The active set of one layer as loaded from disk.
#[derive(Debug, Clone, Default)]
pub struct LayerSet {
    /// The list (None: the layer has no `active.list` yet).
    pub list: Option<ActiveList>,
    /// Its packages that open whole, in list order.
    pub packages: Vec<Candidate>,
    /// The packages it names that do not (missing, corrupt, untrusted), each with why.
    pub damaged: Vec<Damaged>,
}

/// A package an active list names that cannot be used.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// `name-version` as listed.
    pub label: String,
    /// Its id.
    pub id: PackageId,
    /// Why.
    pub reason: Unusable,
}

impl Damaged {
    /// The package name, taken from the label (`name-version`: the longest name whose rest
    /// is a version).
    pub fn name(&self) -> &str {
        for (i, _) in self.label.match_indices('-') {
            if semver::Version::parse(&self.label[i + 1..]).is_ok() {
                return &self.label[..i];
            }
        }
        &self.label
    }
}

/// A stack of layers, lowest first.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The layers.
    pub layers: Vec<LayerSpec>,
}

impl Stack {
    /// A stack of `layers` (lowest first).
    pub fn new(layers: Vec<LayerSpec>) -> Stack {
        Stack { layers }
    }

    /// The layer names, lowest first.
    pub fn names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }

    /// Every `.hpkg` file in `packages/` of layer `l`, sorted (hidden files, which are
    /// copies in progress by convention, are skipped).
    pub fn package_files(&self, l: usize) -> Result<Vec<PathBuf>, StateError> {
        let dir = self.layers[l].paths.packages();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StateError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| is_package_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Opens every package file in `packages/` of layer `l`: the usable ones as candidates,
    /// the others with the reason.
    pub fn scan(
        &self,
        l: usize,
        opener: &mut Opener,
    ) -> Result<(Vec<Candidate>, Vec<Refusal>), StateError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let files = self.package_files(l)?;
        opener.preload(&files);
        for path in files {
            match opener.open(&path) {
                Ok(archive) => ok.push(Candidate {
                    layer: l,
                    path,
                    archive,
                }),
                Err(reason) => bad.push(Refusal { path, reason }),
            }
        }
        Ok((ok, bad))
    }

    /// Loads the active set of layer `l` from `state/active.list`: each package from the
    /// pool, or else from the file in `packages/` that holds it. Fails if any of them
    /// cannot be used ([`Stack::load_active_damaged`] reports those instead).
    pub fn load_active(&self, l: usize, opener: &mut Opener) -> Result<LayerSet, StackError> {
        let paths = &self.layers[l].paths;
        let Some(list) = generation::read_list(&paths.active_list())? else {
            return Ok(LayerSet::default());
        };
        let packages = self.open_list(l, &list, opener)?;
        Ok(LayerSet {
            list: Some(list),
            packages,
            damaged: Vec::new(),
        })
    }

    /// Like [`Stack::load_active`], but a package that cannot be used is reported in
    /// [`LayerSet::damaged`] instead of failing the whole load: the rescue commands
    /// (status, rollback, remove) must work when a package is damaged.
    pub fn load_active_damaged(
        &self,
        l: usize,
        opener: &mut Opener,
    ) -> Result<LayerSet, StateError> {
        let paths = &self.layers[l].paths;
        let Some(list) = generation::read_list(&paths.active_list())? else {
            return Ok(LayerSet::default());
        };
        let mut set = LayerSet {
            list: None,
            packages: Vec::new(),
            damaged: Vec::new(),
        };
        for (e, r) in list.entries.iter().zip(self.open_entries(l, &list, opener)) {
            match r {
                Ok(c) => set.packages.push(c),
                Err(StackError::State(s)) => return Err(s),
                Err(StackError::Package { reason, .. }) => set.damaged.push(Damaged {
                    label: e.label.clone(),
                    id: e.id,
                    reason: *reason,
                }),
            }
        }
        set.list = Some(list);
        Ok(set)
    }

    /// True if every package generation `n` of layer `l` names opens, is trusted and is
    /// the package named.
    pub fn opens_whole(&self, l: usize, n: u64, opener: &mut Opener) -> bool {
        match generation::read_list(&self.layers[l].paths.generation_list(n)) {
            Ok(Some(list)) => self.open_list(l, &list, opener).is_ok(),
            _ => false,
        }
    }

    /// Opens the packages an active list names, in layer `l`.
    pub fn open_list(
        &self,
        l: usize,
        list: &ActiveList,
        opener: &mut Opener,
    ) -> Result<Vec<Candidate>, StackError> {
        self.open_entries(l, list, opener).into_iter().collect()
    }

    /// Opens each package an active list names, in layer `l`, each with its own result.
    pub fn open_entries(
        &self,
        l: usize,
        list: &ActiveList,
        opener: &mut Opener,
    ) -> Vec<Result<Candidate, StackError>> {
        let paths = &self.layers[l].paths;
        let mut out = Vec::with_capacity(list.entries.len());
        let mut scanned: Option<HashMap<PackageId, PathBuf>> = None;
        let pool: Vec<PathBuf> = list
            .entries
            .iter()
            .map(|e| paths.pool_file(&e.id))
            .collect();
        opener.preload(&pool);
        for e in &list.entries {
            let bad = |reason: Unusable| StackError::Package {
                layer: self.layers[l].name.clone(),
                label: e.label.clone(),
                id: e.id,
                reason: Box::new(reason),
            };
            let pool = paths.pool_file(&e.id);
            let opened = match opener.open(&pool) {
                Ok(a) => Ok((pool, a)),
                Err(pool_err) => {
                    // Not (yet) in the pool: an admin's hand-written list naming a file
                    // of packages/.
                    if scanned.is_none() {
                        let mut m = HashMap::new();
                        match self.package_files(l) {
                            Ok(files) => {
                                for p in files {
                                    if let Ok(a) = opener.open(&p) {
                                        m.entry(a.id()).or_insert(p);
                                    }
                                }
                            }
                            Err(err) => {
                                out.push(Err(StackError::State(err)));
                                continue;
                            }
                        }
                        scanned = Some(m);
                    }
                    match scanned.as_ref().and_then(|m| m.get(&e.id)) {
                        Some(p) => opener
                            .open(p)
                            .map(|a| (p.clone(), a))
                            .map_err(|e| bad(e.into())),
                        None if pool.exists() => Err(bad(pool_err.into())),
                        None => Err(bad(Unusable::Missing)),
                    }
                }
            };
            let r = opened.and_then(|(path, archive)| {
                if archive.id() != e.id {
                    return Err(bad(Unusable::OtherId {
                        path,
                        found: archive.id(),
                    }));
                }
                let c = Candidate {
                    layer: l,
                    path,
                    archive,
                };
                if c.label() != e.label {
                    return Err(bad(Unusable::OtherLabel { found: c.label() }));
                }
                Ok(c)
            });
            out.push(r);
        }
        out
    }

    /// Loads the active sets of layers `0..=upto`, bottom up. A layer without an
    /// `active.list` gets its first set from `packages/` ([`Change::Initial`], checked against
    /// the layers below); that plan is returned so the caller can commit it (under the
    /// layer's lock) or just use it.
    ///
    /// A package a list names that cannot be used does not fail the load: it is left out
    /// of the set and reported in [`Loaded::damaged`], so the commands that repair a layer
    /// (status, rollback, remove) work when they are needed most.
    pub fn load_all(&self, upto: usize, opener: &mut Opener) -> Result<Loaded, StackError> {
        let names = self.names();
        let mut out = Loaded::default();
        for l in 0..=upto.min(self.layers.len().saturating_sub(1)) {
            let ls = self.load_active_damaged(l, opener)?;
            out.damaged.push(ls.damaged);
            if ls.list.is_some() {
                out.sets.push(ls.packages);
                out.lists.push(ls.list);
                out.initial.push(None);
                continue;
            }
            let (cands, refused) = self.scan(l, opener)?;
            out.refused.extend(refused);
            let mut cur = out.sets.clone();
            cur.push(Vec::new());
            let p = plan(&names, &cur, l, &[], Change::Initial(cands)).map_err(|r| {
                StackError::State(StateError::Bad {
                    path: self.layers[l].paths.packages(),
                    reason: r.to_string(),
                })
            })?;
            out.sets.push(p.sets[l].clone());
            out.lists.push(None);
            out.initial.push(Some(p));
        }
        Ok(out)
    }

    /// Records the layers a plan changed as new generations (the caller holds their locks).
    /// Returns (layer, generation) for each.
    pub fn commit(
        &self,
        plan: &Plan,
        reason: &str,
        time: &str,
    ) -> Result<Vec<(usize, u64)>, StateError> {
        let mut out = Vec::new();
        for &l in &plan.changed {
            let _as = crate::owner::AsOwner::enter(&self.layers[l].paths);
            let set = &plan.sets[l];
            let list = list_of(set);
            let files: HashMap<PackageId, PathBuf> =
                set.iter().map(|c| (c.id(), c.path.clone())).collect();
            let n = generation::commit(&self.layers[l].paths, list, reason, time, &|id| {
                files.get(id).cloned()
            })?;
            out.push((l, n));
        }
        Ok(out)
    }

    /// Commits a layer's first generation ([`Change::Initial`]) and starts its record of
    /// accounted-for files empty: the next reconcile then decides every file of
    /// `packages/` (those already active change nothing, those left out wait).
    pub fn commit_first(
        &self,
        plan: &mut Plan,
        opener: &mut Opener,
    ) -> Result<Vec<(usize, u64)>, StateError> {
        let gens =
            self.commit_pooled(plan, "first generation from packages/", &now_utc(), opener)?;
        for &(l, _) in &gens {
            generation::Seen::default().write(&self.layers[l].paths)?;
        }
        Ok(gens)
    }

    /// [`Stack::commit`], then points every package of the changed layers at its pool
    /// copy (reopened through `opener`): what is served and planned from then on are the
    /// pool's own bytes, which no write to `packages/` can reach.
    pub fn commit_pooled(
        &self,
        plan: &mut Plan,
        reason: &str,
        time: &str,
        opener: &mut Opener,
    ) -> Result<Vec<(usize, u64)>, StateError> {
        let gens = self.commit(plan, reason, time)?;
        for &l in &plan.changed {
            let paths = &self.layers[l].paths;
            for c in plan.sets[l].iter_mut() {
                let pool = paths.pool_file(&c.id());
                if c.path == pool {
                    continue;
                }
                if let Ok(a) = opener.open(&pool) {
                    if a.id() == c.id() {
                        c.path = pool;
                        c.archive = a;
                    }
                }
            }
        }
        Ok(gens)
    }
}

/// The active sets of a stack as loaded by [`Stack::load_all`].
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The set of each layer.
    pub sets: Vec<Vec<Candidate>>,
    /// Each layer's `active.list` (None: it has none yet).
    pub lists: Vec<Option<ActiveList>>,
    /// For a layer without `active.list`: the plan of its first generation.
    pub initial: Vec<Option<Plan>>,
    /// Package files of those layers that could not be used, and why.
    pub refused: Vec<Refusal>,
    /// Per layer: the packages its list names that cannot be used (left out of `sets`).
    pub damaged: Vec<Vec<Damaged>>,
}

/// True for a file name `packages/` treats as a package: `*.hpkg`, not hidden.
pub fn is_package_name(name: &str) -> bool {
    name.ends_with(".hpkg") && !name.starts_with('.') && name.len() > ".hpkg".len()
}

/// The active list of a set.
pub fn list_of(set: &[Candidate]) -> ActiveList {
    let mut entries: Vec<Entry> = set
        .iter()
        .map(|c| Entry {
            label: c.label(),
            id: c.id(),
        })
        .collect();
    entries.sort();
    ActiveList {
        meta: Default::default(),
        entries,
    }
}

/// A change to the active set of one layer.
#[derive(Debug, Clone)]
pub enum Change {
    /// Activate these packages (of the changed layer), each replacing the active package of
    /// its name. With `only_newer`, a package older than (or as old as) the active one of
    /// its name is not activated (a dropped file); otherwise it replaces it (an explicit
    /// install, which may downgrade).
    Install {
        /// The packages.
        packages: Vec<Candidate>,
        /// Skip packages not newer than the active one.
        only_newer: bool,
    },
    /// Deactivate the packages of these names. Without `force`, refused if anything would
    /// be left broken; with it, what would be left broken is deactivated too.
    Remove {
        /// Package names.
        names: Vec<String>,
        /// Deactivate what breaks, too.
        force: bool,
    },
    /// These packages' files are gone: deactivate them and whatever is left broken.
    Vanished(Vec<PackageId>),
    /// Make exactly this the layer's set (an `active.list` replaced, a rollback).
    Replace(Vec<Candidate>),
    /// The first generation: from every usable package of `packages/` (newest version per
    /// name), leaving out (and reporting) those whose requirements cannot be met.
    Initial(Vec<Candidate>),
}

/// The outcome of a change.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The new set of every layer.
    pub sets: Vec<Vec<Candidate>>,
    /// The layers whose set changed (ascending).
    pub changed: Vec<usize>,
    /// `name-version` of packages activated.
    pub added: Vec<String>,
    /// `name-version` of packages deactivated.
    pub removed: Vec<String>,
    /// Packages deactivated (or not activated) because they would be left broken: the
    /// problem of each (which names the package).
    pub broken: Vec<Problem>,
    /// Packages not activated and why (a dropped file older than the active version, a
    /// package the first generation cannot include).
    pub skipped: Vec<Skipped>,
}

/// A package a change did not activate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `name-version` of the package.
    pub package: String,
    /// Why.
    pub why: Skip,
}

/// Why a package was not activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A dropped file no newer than the active version (`name-version` of that one).
    NotNewer {
        /// `name-version` of the active package.
        active: String,
    },
    /// The set with it breaks the invariant.
    Refused(Refused),
}

impl Skip {
    /// The kind, as JSON output names it: `not-newer` or `refused`.
    pub fn kind(&self) -> &'static str {
        match self {
            Skip::NotNewer { .. } => "not-newer",
            Skip::Refused(_) => "refused",
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.why {
            Skip::NotNewer { active } => {
                write!(f, "{}: not newer than the active {active}", self.package)
            }
            Skip::Refused(r) => write!(f, "{}: {r}", self.package),
        }
    }
}

impl Plan {
    /// The plan that takes the sets `current` to `new`, with the packages left broken and
    /// skipped on the way.
    pub fn between(
        current: &[Vec<Candidate>],
        new: Vec<Vec<Candidate>>,
        broken: Vec<Problem>,
        skipped: Vec<Skipped>,
    ) -> Plan {
        finish(
            Plan {
                broken,
                skipped,
                ..Plan::default()
            },
            current,
            new,
        )
    }

    /// True if no layer changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// A one-line summary: `+a-1.0.0 -b-2.0.0` (past 12 packages: the counts and the
    /// first few, so a log line stays a line).
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self.added.iter().map(|a| format!("+{a}")).collect();
        parts.extend(self.removed.iter().map(|r| format!("-{r}")));
        if parts.is_empty() {
            "no change".into()
        } else if parts.len() > 12 {
            format!(
                "+{} -{} packages: {} ...",
                self.added.len(),
                self.removed.len(),
                parts[..6].join(" ")
            )
        } else {
            parts.join(" ")
        }
    }
}

fn flatten(sets: &[Vec<Candidate>]) -> Vec<Candidate> {
    sets.iter().flatten().cloned().collect()
}

fn ids(set: &[Candidate]) -> BTreeSet<PackageId> {
    set.iter().map(|c| c.id()).collect()
}

/// Computes the effect of `change` to layer `layer` of a stack whose current sets are
/// `current` (one per layer, lowest first). `available` are further packages of `layer`
/// (inactive files of its `packages/`) that may be activated to meet the requirements of
/// what is installed. The result satisfies the invariant ([`check`]) or is refused whole.
pub fn plan(
    names: &[String],
    current: &[Vec<Candidate>],
    layer: usize,
    available: &[Candidate],
    change: Change,
) -> Result<Plan, Refused> {
    let mut sets: Vec<Vec<Candidate>> = current.to_vec();
    let mut plan = Plan::default();
    match change {
        Change::Install {
            packages,
            only_newer,
        } => {
            let mut new: Vec<Candidate> = Vec::new();
            for p in packages {
                let active = sets[layer]
                    .iter()
                    .find(|c| c.manifest().name == p.manifest().name);
                if let Some(a) = active {
                    if a.id() == p.id() {
                        continue;
                    }
                    if only_newer && a.manifest().version >= p.manifest().version {
                        plan.skipped.push(Skipped {
                            package: p.label(),
                            why: Skip::NotNewer { active: a.label() },
                        });
                        continue;
                    }
                }
                if let Some(dup) = new
                    .iter_mut()
                    .find(|c| c.manifest().name == p.manifest().name)
                {
                    // Two versions of one name in one request: the newer one.
                    if p.manifest().version > dup.manifest().version {
                        *dup = p;
                    }
                    continue;
                }
                new.push(p);
            }
            if new.is_empty() {
                return Ok(finish(plan, current, sets));
            }
            let replaced: HashSet<&str> = new.iter().map(|c| c.manifest().name.as_str()).collect();
            // Candidates: every active package (pinned), the new ones (pinned), and the
            // other available packages of the layer (free, to meet requirements).
            let mut pool: Vec<Candidate> = Vec::new();
            let mut wants: Vec<Want> = Vec::new();
            for (l, set) in sets.iter().enumerate() {
                for c in set {
                    if l == layer && replaced.contains(c.manifest().name.as_str()) {
                        continue;
                    }
                    wants.push(Want {
                        layer: l,
                        name: c.manifest().name.clone(),
                        pin: Some(c.id()),
                    });
                    pool.push(c.clone());
                }
            }
            for c in &new {
                wants.push(Want {
                    layer,
                    name: c.manifest().name.clone(),
                    pin: Some(c.id()),
                });
                pool.push(c.clone());
            }
            let have = ids(&pool);
            let mut seen = HashSet::new();
            for c in available {
                if c.layer == layer && !have.contains(&c.id()) && seen.insert(c.id()) {
                    pool.push(c.clone());
                }
            }
            let chosen = resolve(names, &pool, &wants)?;
            for s in sets.iter_mut() {
                s.clear();
            }
            for i in chosen {
                let c = &pool[i];
                sets[c.layer].push(c.clone());
            }
        }
        Change::Remove { names: gone, force } => {
            let known: HashSet<&str> = sets[layer]
                .iter()
                .map(|c| c.manifest().name.as_str())
                .collect();
            let missing: Vec<&String> = gone
                .iter()
                .filter(|n| !known.contains(n.as_str()))
                .collect();
            if !missing.is_empty() {
                return Err(Refused {
                    problems: missing
                        .iter()
                        .map(|n| Problem::NoSolution {
                            explanation: format!(
                                "{n} is not active in layer {}",
                                names.get(layer).map(String::as_str).unwrap_or("?")
                            ),
                        })
                        .collect(),
                });
            }
            sets[layer].retain(|c| !gone.contains(&c.manifest().name));
            if force {
                cascade(names, &mut sets, layer, &mut plan)?;
            } else {
                check(names, &flatten(&sets))?;
            }
        }
        Change::Vanished(gone) => {
            sets[layer].retain(|c| !gone.contains(&c.id()));
            cascade(names, &mut sets, layer, &mut plan)?;
        }
        Change::Replace(set) => {
            sets[layer] = set;
            check(names, &flatten(&sets))?;
        }
        Change::Initial(cands) => {
            sets[layer].clear();
            let mut newest: Vec<Candidate> = Vec::new();
            let mut all = cands.clone();
            all.sort_by(|a, b| {
                (&a.manifest().name, &b.manifest().version)
                    .cmp(&(&b.manifest().name, &a.manifest().version))
            });
            for c in all {
                if newest
                    .last()
                    .is_some_and(|n| n.manifest().name == c.manifest().name)
                {
                    continue;
                }
                newest.push(c);
            }
            let try_set = |subset: &[Candidate]| -> Result<Vec<Vec<Candidate>>, Refused> {
                let mut s = sets.clone();
                s[layer] = subset.to_vec();
                check(names, &flatten(&s))?;
                Ok(s)
            };
            match try_set(&newest) {
                Ok(s) => sets = s,
                Err(_) => {
                    // Leave out what cannot be met, one package at a time, in an order
                    // where providers come before their users.
                    let mut accepted: Vec<Candidate> = Vec::new();
                    let mut pending = newest;
                    loop {
                        let before = pending.len();
                        let mut still = Vec::new();
                        let mut last_err = HashMap::new();
                        for c in pending {
                            let mut t = accepted.clone();
                            t.push(c.clone());
                            match try_set(&t) {
                                Ok(_) => accepted.push(c),
                                Err(r) => {
                                    last_err.insert(c.id(), r);
                                    still.push(c);
                                }
                            }
                        }
                        if still.len() == before || still.is_empty() {
                            for c in &still {
                                if let Some(r) = last_err.remove(&c.id()) {
                                    plan.skipped.push(Skipped {
                                        package: c.label(),
                                        why: Skip::Refused(r),
                                    });
                                }
                            }
                            break;
                        }
                        pending = still;
                    }
                    sets[layer] = accepted;
                }
            }
        }
    }
    Ok(finish(plan, current, sets))
}

/// Removes, from layers at or above `from`, the packages the set leaves broken, until it
/// meets the invariant.
fn cascade(
    names: &[String],
    sets: &mut [Vec<Candidate>],
    from: usize,
    plan: &mut Plan,
) -> Result<(), Refused> {
    loop {
        let r = match check(names, &flatten(sets)) {
            Ok(_) => return Ok(()),
            Err(r) => r,
        };
        let mut victims: Vec<(String, &Problem)> = Vec::new();
        for p in &r.problems {
            match p {
                Problem::MissingRequirement { package, .. }
                | Problem::MissingSystemComponent { package, .. } => {
                    victims.push((package.clone(), p))
                }
                Problem::Cycle { packages } => {
                    for q in packages {
                        victims.push((q.clone(), p));
                    }
                }
                _ => {}
            }
        }
        let mut removed_any = false;
        for (display, why) in victims {
            for s in sets.iter_mut().skip(from) {
                let before = s.len();
                s.retain(|c| c.display() != display);
                if s.len() != before {
                    removed_any = true;
                    plan.broken.push(why.clone());
                }
            }
        }
        if !removed_any {
            return Err(r);
        }
    }
}

fn finish(mut plan: Plan, current: &[Vec<Candidate>], mut sets: Vec<Vec<Candidate>>) -> Plan {
    for (l, s) in sets.iter_mut().enumerate() {
        s.sort_by(|a, b| {
            (&a.manifest().name, &a.manifest().version)
                .cmp(&(&b.manifest().name, &b.manifest().version))
        });
        let (old, new) = (ids(&current[l]), ids(s));
        if old != new {
            plan.changed.push(l);
            for c in s.iter().filter(|c| !old.contains(&c.id())) {
                plan.added.push(c.label());
            }
            for c in current[l].iter().filter(|c| !new.contains(&c.id())) {
                plan.removed.push(c.label());
            }
        }
    }
    plan.broken.dedup();
    plan.sets = sets;
    plan
}

/// The time now, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub use format::text::utc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_430_096), "2026-11-23T10:34:56Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn layer_specs_parse() {
        let l = LayerSpec::parse("user=/home/u/pkg").unwrap();
        assert_eq!(
            (l.name.as_str(), l.paths.dir.as_path()),
            ("user", Path::new("/home/u/pkg"))
        );
        let l = LayerSpec::parse("/pkg/system").unwrap();
        assert_eq!(l.name, "system");
        assert!(LayerSpec::parse("a b=/x").is_err());
        assert!(LayerSpec::parse("x=").is_err());
        assert!(LayerSpec::parse("/").is_err());
    }

    #[test]
    fn package_names() {
        assert!(is_package_name("hello-1.0.0.hpkg"));
        assert!(!is_package_name(".hello.hpkg"));
        assert!(!is_package_name("hello.hpkg.part"));
        assert!(!is_package_name(".hpkg"));
    }
}
