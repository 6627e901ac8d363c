//! packagefs repositories: where thin packages' heaps live, and how a client reads them.
//!
//! ```text
//! publish(packages, target, key)   ─► objects (whole packages, by sha256) + signed index
//! Repository::index(keys)          ─► index::Verified      (signature, rules; freshness: index::check_fresh)
//! Repository::thin(entry)          ─► thin package bytes   (Range GETs of metadata + trailer)
//! RepoHeaps (format::thin::Heaps)  ─► LazyHeap per thin package: store ─► Range GET ─► verify ─► store
//! ```
//!
//! Two kinds of server, both existing software: a static HTTP server with Range requests
//! (`http://host:port/path`: the index at `index`, objects at `blobs/sha256/<hex>`; published
//! into a directory it serves, or by HTTP PUT) and an OCI distribution registry
//! (`oci://host:port/name`: objects are blobs, the index a blob referenced by the manifest
//! tagged `index`). No transport is trusted: the index is signed, a package must match the
//! id the index names, and every chunk its hash in the signed chunk index.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = format::keys::TrustedKeys::load_dir("/etc/packagefs/keys".as_ref())?;
//! let addresses = ["http://repo.lan:8080/main".to_string()];
//! let repo = repo::Repository::new(&addresses, repo::Policy::default())?;
//! let index = repo.index(&keys)?; // signed by a trusted key
//! let entry = &index.index.packages[0];
//! std::fs::write("app.hpkg", repo.thin(entry)?)?; // a thin package: metadata + source
//! // Reading it: chunks come from the chunk store, or from the repository, checked.
//! let store = "/var/cache/packagefs/chunks".as_ref();
//! let heaps = repo::RepoHeaps::at(store, 4 << 30, repo::Policy::default());
//! let file = std::fs::File::open("app.hpkg")?;
//! let path = "app.hpkg".as_ref();
//! let a = format::archive::Archive::from_file_with(file, path, Some(&keys), &heaps)?;
//! let e = a.lookup_path(b"bin/app")?.expect("present");
//! let mut buf = vec![0; 4096];
//! a.read_at(e, 0, &mut buf)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod allow;
pub mod heap;
pub mod http;
pub mod index;
pub mod oci;
pub mod remote;
pub mod store;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use format::archive::thin::Source;
use format::archive::Archive;
use format::keys::{SecretKey, TrustedKeys};
use sha2::Digest;

pub use heap::{LazyHeap, RepoHeaps};
pub use index::{DeltaRef, Index, IndexEntry, Verified};
pub use remote::{Base, Mirrors, Policy};
pub use store::ChunkStore;

use http::{Body, Url};

/// A repository as a client sees it: its mirrors, in order.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The addresses as given.
    pub addresses: Vec<String>,
    mirrors: Mirrors,
}

impl Repository {
    /// A repository at `addresses` (mirrors, first preferred).
    pub fn new(addresses: &[String], policy: Policy) -> Result<Repository, String> {
        if addresses.is_empty() {
            return Err("no repository address".into());
        }
        let list = addresses
            .iter()
            .map(|a| Base::parse(a).map(|b| std::sync::Arc::new(remote::Mirror::new(b))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Repository {
            addresses: addresses.to_vec(),
            mirrors: Mirrors { list, policy },
        })
    }

    /// The index, from the first mirror that serves one signed by a trusted key.
    pub fn index(&self, keys: &TrustedKeys) -> Result<Verified, String> {
        let mut why = Vec::new();
        for m in &self.mirrors.list {
            let got = match &m.base {
                Base::Http(u) => get_small(&u.join("index"), &self.mirrors.policy),
                Base::Oci { registry, name } => {
                    oci::fetch_index(registry, name, &self.mirrors.policy)
                }
            };
            match got.and_then(|b| index::verify(&b, keys)) {
                Ok(v) => return Ok(v),
                Err(e) => why.push(format!("{}: {e}", m.base)),
            }
        }
        Err(format!("no usable index: {}", why.join("; ")))
    }

    /// The bytes of a thin package of `e`: its metadata and trailer, fetched by range,
    /// with this repository's mirrors as the source. Checked by the caller on open (the id
    /// must be `e.id`).
    pub fn thin(&self, e: &IndexEntry) -> Result<Vec<u8>, String> {
        // The package id is the BLAKE3 hash of the metadata, and the trailer records it:
        // a mirror that serves other bytes is caught here, and the next one asked.
        let id = e.package_id().ok_or("bad id in the index")?;
        let meta = self.mirrors.fetch_range(&e.object, 0, e.metadata, &|b| {
            if blake3::hash(b).as_bytes() == &id.0 {
                Ok(())
            } else {
                Err("served metadata that does not match the package id".into())
            }
        })?;
        let trailer = self
            .mirrors
            .fetch_range(&e.object, e.size - 136, 136, &|b| {
                if b.get(40..72) == Some(&id.0[..]) {
                    Ok(())
                } else {
                    Err("served a trailer of another package".into())
                }
            })?;
        format::archive::thin::assemble(
            &meta,
            &trailer,
            &Source {
                mirrors: self.addresses.clone(),
                object: e.object.clone(),
                prefetch: e.prefetch.clone(),
            },
        )
        .map_err(|e| e.to_string())
    }
}

impl Repository {
    /// Object `digest` of `size` bytes, whole, into a temp file of `dir`: fetched in
    /// ranges from the mirrors, and its sha256 checked at the end.
    pub fn object_to(
        &self,
        digest: &str,
        size: u64,
        dir: &Path,
    ) -> Result<tempfile::NamedTempFile, String> {
        use std::io::Write;
        const PIECE: u64 = 8 << 20;
        let mut tmp = tempfile::Builder::new()
            .prefix(".object-")
            .tempfile_in(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut h = sha2::Sha256::new();
        let mut at = 0;
        while at < size {
            let len = PIECE.min(size - at);
            let b = self.mirrors.fetch_range(digest, at, len, &|_| Ok(()))?;
            h.update(&b);
            tmp.write_all(&b)
                .map_err(|e| format!("{}: {e}", tmp.path().display()))?;
            at += len;
        }
        let got = format!("sha256:{}", format::keys::hex(&h.finalize()));
        if got != digest {
            return Err(format!(
                "{digest}: the repository served other bytes ({got})"
            ));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| format!("{}: {e}", tmp.path().display()))?;
        Ok(tmp)
    }
}

fn get_small(url: &Url, p: &Policy) -> Result<Vec<u8>, String> {
    match http::request("GET", url, &[], Body::Empty, index::INDEX_MAX, p.timeouts) {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("{url}: HTTP {}", r.status)),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// `sha256:<hex>` of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", format::keys::hex(&h.finalize())))
}

/// `sha256:<hex>` of bytes.
pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", format::keys::hex(&sha2::Sha256::digest(b)))
}

/// Where `publish` writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A directory a static HTTP server serves.
    Dir(PathBuf),
    /// A static HTTP server that takes PUT (nginx's dav module).
    Http(Url),
    /// An OCI registry.
    Oci {
        /// The registry.
        registry: Url,
        /// The repository name.
        name: String,
    },
}

impl Target {
    /// `http://...`, `oci://...`, or a directory.
    pub fn parse(s: &str) -> Result<Target, String> {
        if s.contains("://") {
            return Ok(match Base::parse(s)? {
                Base::Http(u) => Target::Http(u),
                Base::Oci { registry, name } => Target::Oci { registry, name },
            });
        }
        Ok(Target::Dir(PathBuf::from(s)))
    }
}

/// What `publish` did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new index.
    pub index: Index,
    /// Entries added by this publication.
    pub added: Vec<IndexEntry>,
    /// Objects uploaded (not there before): packages and deltas.
    pub uploaded: usize,
    /// What was not done and why (a delta that could not be made).
    pub notes: Vec<String>,
}

/// How `publish` publishes.
#[derive(Debug, Clone)]
pub struct PublishOptions<'a> {
    /// The repository's name, for a new repository (default `main`).
    pub name: Option<&'a str>,
    /// Where prefetch lists are (`<id>.prefetch`).
    pub prefetch: Option<&'a Path>,
    /// The new index expires this many seconds from now.
    pub expires_in: u64,
    /// Deltas to each new package from up to this many earlier versions.
    pub deltas: usize,
    /// zstd level of the deltas' patches.
    pub delta_level: i32,
}

/// Indexes expire a week after publication unless told otherwise.
pub const DEFAULT_EXPIRY: u64 = 7 * 86_400;

impl Default for PublishOptions<'_> {
    fn default() -> Self {
        PublishOptions {
            name: None,
            prefetch: None,
            expires_in: DEFAULT_EXPIRY,
            deltas: 2,
            delta_level: format::delta::DEFAULT_LEVEL,
        }
    }
}

/// Publishes `packages` to `target` under repository name `name` (the existing index's
/// name when there is one), signing the new index with `key`. An existing index must be
/// signed by `key` (the publisher does not take over someone else's repository), and a
/// name and version already published with another id is refused. Objects go first, the
/// index last, so a client never sees an index naming an object not there yet.
pub fn publish(
    packages: &[PathBuf],
    target: &Target,
    key: &SecretKey,
    o: &PublishOptions<'_>,
    p: &Policy,
) -> Result<Published, String> {
    let (name, prefetch) = (o.name, o.prefetch);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut own = TrustedKeys::new();
    own.insert(key.public(), key.name());
    let old = match target {
        Target::Dir(d) => match fs::read(d.join("index")) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", d.join("index").display())),
        },
        Target::Http(u) => {
            let url = u.join("index");
            match http::request("GET", &url, &[], Body::Empty, index::INDEX_MAX, p.timeouts) {
                Ok(r) if r.status == 200 => Some(r.body),
                Ok(r) if r.status == 404 => None,
                Ok(r) => return Err(format!("{url}: HTTP {}", r.status)),
                Err(e) => return Err(format!("{url}: {e}")),
            }
        }
        Target::Oci { registry, name } => oci::fetch_index_opt(registry, name, p)?,
    };
    let mut idx = match old {
        Some(b) => {
            index::verify(&b, &own)
                .map_err(|e| format!("the repository's index is not one this key may extend: {e}"))?
                .index
        }
        None if packages.is_empty() => {
            return Err("nothing to publish: no package, and no index to re-sign".into())
        }
        None => Index {
            repository: name.unwrap_or("main").to_owned(),
            version: 0,
            expires: None,
            packages: Vec::new(),
        },
    };
    if let Some(n) = name {
        if n != idx.repository {
            return Err(format!(
                "the repository is named {}, not {n}",
                idx.repository
            ));
        }
    }
    if !index::valid_name(&idx.repository) {
        return Err(format!("bad repository name {:?}", idx.repository));
    }
    // Check everything before anything is written.
    let mut todo = Vec::new();
    for path in packages {
        let a = Archive::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if a.is_thin() {
            return Err(format!(
                "{}: a thin package cannot be published",
                path.display()
            ));
        }
        if a.signer().is_none() {
            return Err(format!("{}: the package is not signed", path.display()));
        }
        let m = a.manifest();
        let e = IndexEntry {
            name: m.name.clone(),
            version: m.version.to_string(),
            id: a.id().to_string(),
            object: sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?,
            size: a.header().file_size,
            metadata: a.header().heap.offset,
            prefetch: match prefetch {
                Some(dir) => {
                    heap::read_prefetch(&dir.join(format!("{}.prefetch", a.id())), a.chunk_count())?
                }
                None => Vec::new(),
            },
            provides: m
                .provides
                .iter()
                .filter(|p| p.api != m.name)
                .map(|p| format!("{} {}", p.api, p.version))
                .collect(),
            deltas: Vec::new(),
        };
        if let Some(o) = idx
            .packages
            .iter()
            .find(|o| o.name == e.name && o.version == e.version)
        {
            if o.id != e.id {
                return Err(format!(
                    "{} is already published with another id ({}); publish a new version",
                    e.label(),
                    &o.id[..16]
                ));
            }
            continue;
        }
        todo.push((path.clone(), e));
    }
    if todo.is_empty() && !packages.is_empty() {
        // Everything is published already: the index stays as it is.
        return Ok(Published {
            index: idx,
            added: Vec::new(),
            uploaded: 0,
            notes: Vec::new(),
        });
    }
    let mut uploaded = 0;
    for (path, e) in &todo {
        if put_object(target, path, &e.object, p)? {
            uploaded += 1;
        }
    }
    // Deltas from the newest earlier versions to each new package; a delta that cannot be
    // made is said, and the package is published without it.
    let mut notes = Vec::new();
    let scratch = tempfile::Builder::new()
        .prefix("packagefs-publish-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    for (path, e) in &mut todo {
        let mut bases: Vec<&IndexEntry> = idx
            .packages
            .iter()
            .filter(|b| b.name == e.name && older(&b.version, &e.version))
            .collect();
        bases.sort_by(|a, b| {
            semver::Version::parse(&b.version)
                .ok()
                .cmp(&semver::Version::parse(&a.version).ok())
        });
        for base in bases.into_iter().take(o.deltas) {
            match make_delta(target, base, path, o.delta_level, scratch.path(), p) {
                Ok(Some((d, file))) => {
                    if put_object(target, file.path(), &d.object, p)? {
                        uploaded += 1;
                    }
                    e.deltas.push(d);
                }
                Ok(None) => notes.push(format!(
                    "no delta from {} to {}: it would not be smaller than the package",
                    base.label(),
                    e.label()
                )),
                Err(why) => notes.push(format!(
                    "no delta from {} to {}: {why}",
                    base.label(),
                    e.label()
                )),
            }
        }
    }
    idx.version += 1;
    idx.expires = Some(now.saturating_add(o.expires_in));
    idx.packages.extend(todo.iter().map(|(_, e)| e.clone()));
    idx.packages.sort_by(|a, b| {
        (a.name.as_str(), semver::Version::parse(&a.version).ok())
            .cmp(&(b.name.as_str(), semver::Version::parse(&b.version).ok()))
    });
    let bytes = idx.sign(key);
    match target {
        Target::Dir(d) => write_atomic(&d.join("index"), &bytes)?,
        Target::Http(u) => put(&u.join("index"), Body::Bytes(&bytes), p)?,
        Target::Oci { registry, name } => {
            let objects: Vec<(String, u64, bool)> = idx
                .packages
                .iter()
                .flat_map(|e| {
                    std::iter::once((e.object.clone(), e.size, false))
                        .chain(e.deltas.iter().map(|d| (d.object.clone(), d.size, true)))
                })
                .collect();
            oci::push_index(registry, name, &bytes, &objects, p)?
        }
    }
    Ok(Published {
        index: idx,
        added: todo.into_iter().map(|(_, e)| e).collect(),
        uploaded,
        notes,
    })
}

fn older(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// The delta from published package `base` to the package file `new`, in a temp file of
/// `dir`, unless it is not smaller than `new`. The base's bytes come from the target
/// (checked: its digest, and its id the index names).
fn make_delta(
    target: &Target,
    base: &IndexEntry,
    new: &Path,
    level: i32,
    dir: &Path,
    p: &Policy,
) -> Result<Option<(index::DeltaRef, tempfile::NamedTempFile)>, String> {
    let fetched;
    let old_path = match target {
        Target::Dir(d) => d.join(format!("blobs/{}", base.object.replacen(':', "/", 1))),
        Target::Http(u) => {
            let r = Repository::new(&[u.to_string()], *p)?;
            fetched = r.object_to(&base.object, base.size, dir)?;
            fetched.path().to_owned()
        }
        Target::Oci { registry, name } => {
            let a = format!("oci://{}:{}/{name}", registry.host, registry.port);
            let r = Repository::new(&[a], *p)?;
            fetched = r.object_to(&base.object, base.size, dir)?;
            fetched.path().to_owned()
        }
    };
    let old = Archive::open(&old_path).map_err(|e| format!("{}: {e}", base.label()))?;
    if old.id().to_string() != base.id {
        return Err(format!(
            "the repository's object of {} is package {}, its index names {}",
            base.label(),
            old.id(),
            base.id
        ));
    }
    let new_a = Archive::open(new).map_err(|e| format!("{}: {e}", new.display()))?;
    let file = tempfile::Builder::new()
        .prefix(".delta-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let stats = format::delta::write(
        &old,
        &new_a,
        &format::delta::DeltaOptions { level },
        file.path(),
    )
    .map_err(|e| e.to_string())?;
    if stats.delta_size >= stats.new_size {
        return Ok(None);
    }
    let object = sha256_file(file.path()).map_err(|e| e.to_string())?;
    Ok(Some((
        index::DeltaRef {
            from: base.id.clone(),
            object,
            size: stats.delta_size,
        },
        file,
    )))
}

fn write_atomic(dst: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = dst.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("{}: {e}", dst.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = tmp
        .as_file()
        .set_permissions(fs::Permissions::from_mode(0o644));
    tmp.persist(dst)
        .map_err(|e| format!("{}: {}", dst.display(), e.error))?;
    Ok(())
}

fn put(url: &Url, body: Body<'_>, p: &Policy) -> Result<(), String> {
    let t = http::Timeouts {
        total: std::time::Duration::from_secs(3600),
        ..p.timeouts
    };
    match http::request("PUT", url, &[], body, 1 << 16, t) {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(format!("PUT {url}: HTTP {}", r.status)),
        Err(e) => Err(format!("PUT {url}: {e}")),
    }
}

/// Uploads one object unless it is there; true if uploaded.
fn put_object(target: &Target, path: &Path, digest: &str, p: &Policy) -> Result<bool, String> {
    let rel = format!("blobs/{}", digest.replacen(':', "/", 1));
    match target {
        Target::Dir(d) => {
            let dst = d.join(&rel);
            if dst.exists() {
                return Ok(false);
            }
            let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            write_atomic(&dst, &bytes)?;
            Ok(true)
        }
        Target::Http(u) => {
            let url = u.join(&rel);
            if let Ok(r) = http::request("HEAD", &url, &[], Body::Empty, 0, p.timeouts) {
                if r.status == 200 {
                    return Ok(false);
                }
            }
            let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            put(&url, Body::File(&f, len), p)?;
            Ok(true)
        }
        Target::Oci { registry, name } => oci::push_blob_file(registry, name, path, digest, p),
    }
}

/// Makes thin package `thin` whole: fetches every chunk not stored (with `parallel`
/// requests in flight), writes the whole package, checks it (id, every chunk) and returns
/// its bytes' path (a temp file in `dir`, to be renamed by the caller).
pub fn make_whole(
    heaps: &RepoHeaps,
    thin: &Archive,
    dir: &Path,
    parallel: usize,
) -> Result<tempfile::NamedTempFile, String> {
    use std::io::Write;
    let source = thin.thin_source().ok_or("not a thin package")?;
    let n = thin.chunk_count();
    let chunks = (0..n)
        .map(|c| thin.chunk_info(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let pkg = format::archive::thin::ThinPackage {
        id: thin.id(),
        source: source.clone(),
        heap_offset: thin.header().heap.offset,
        file_size: thin.header().file_size,
        chunks: chunks.clone(),
    };
    let lazy = heaps.heap(&pkg)?;
    let hashes: Vec<[u8; 32]> = chunks.iter().map(|c| c.hash).collect();
    // Pinned while the file is assembled, so a daemon's eviction cannot race it.
    heaps
        .store()?
        .pin(&thin.id(), &hashes)
        .map_err(|e| format!("cannot pin chunks: {e}"))?;
    let r = (|| {
        let (failed, why) = lazy.fetch_all(parallel);
        if failed > 0 {
            return Err(format!(
                "{failed} chunks cannot be fetched: {}",
                why.unwrap_or_default()
            ));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempfile_in(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |tmp: &mut tempfile::NamedTempFile, b: &[u8]| {
            tmp.write_all(b)
                .map_err(|e| format!("{}: {e}", dir.display()))
        };
        w(&mut tmp, thin.metadata_bytes())?;
        let mut order: Vec<_> = chunks.clone();
        order.sort_by_key(|c| c.offset);
        let mut at = 0u64;
        let mut heap_len = 0u64;
        for c in &order {
            if c.offset < at {
                continue; // bytes shared with an earlier chunk
            }
            if c.offset != at {
                return Err("the chunk index leaves a gap in the heap".into());
            }
            let b = heaps
                .store()?
                .get(&c.hash)
                .ok_or("a fetched chunk left the store")?;
            w(&mut tmp, &b)?;
            at += b.len() as u64;
            heap_len = at;
        }
        if heap_len != thin.header().heap.len {
            return Err("the chunks do not fill the heap".into());
        }
        w(&mut tmp, &thin.trailer_bytes())?;
        tmp.as_file().sync_all().map_err(|e| e.to_string())?;
        let whole = Archive::open(tmp.path()).map_err(|e| format!("the whole package: {e}"))?;
        if whole.id() != thin.id() || whole.is_thin() {
            return Err("the whole package is not the thin one's".into());
        }
        for c in 0..whole.chunk_count() {
            whole
                .verify_chunk(c)
                .map_err(|e| format!("the whole package: {e}"))?;
        }
        Ok(tmp)
    })();
    if let Ok(s) = heaps.store() {
        let _ = s.unpin(&thin.id());
    }
    r
}
