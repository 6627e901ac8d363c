//! Hostile archives: good archives mutated and then re-hashed and re-signed with the test
//! key, so the metadata hash and the signature are valid and only the structural validation
//! (at open) or the chunk checks (at read) stand between them and the reader. Each must be
//! refused with an error that names the problem, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use format::archive::{Archive, Compression, Method};
use format::Error;

use crate::common::layout::*;
use crate::common::*;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// A good archive, its bytes (with the TOC stored raw, so its records can be patched, and
/// as written), and the opened archive to find entries and chunks by.
struct Fixture {
    dir: tempfile::TempDir,
    raw: RawArchive,
    as_written: RawArchive,
    a: Archive,
}

impl Fixture {
    fn new(compression: Compression) -> Fixture {
        let dir = scratch();
        let path = dir.path().join("good.hpkg");
        write_archive(&fixture_tree(true), &opts(compression, 64 * 1024), &path);
        let a = open(&path);
        read_all(&a).expect("the fixture is good");
        Fixture {
            raw: RawArchive::read_raw_toc(&path),
            as_written: RawArchive::read(&path),
            dir,
            a,
        }
    }

    fn entry(&self, path: &str) -> u32 {
        self.a.lookup_path(path.as_bytes()).unwrap().expect(path)
    }

    fn inode(&self, path: &str) -> usize {
        self.raw.inode(self.entry(path))
    }

    /// The dirent naming `path`.
    fn dirent(&self, path: &str) -> usize {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.raw
            .dirent(self.raw.dirent_of(self.entry(parent), name.as_bytes()))
    }

    /// The absolute offset of the string `s` in the string table (it must occur once).
    fn string(&self, s: &str) -> usize {
        let st = self.raw.strings();
        let table = &self.raw.bytes[st..self.raw.section(TOC).0 + self.raw.section(TOC).1];
        let hits: Vec<usize> = table
            .windows(s.len())
            .enumerate()
            .filter(|(_, w)| *w == s.as_bytes())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hits.len(), 1, "{s:?} occurs once in the string table");
        st + hits[0]
    }

    /// A chunk stored with `method`.
    fn chunk_with(&self, method: Method) -> u32 {
        (0..self.a.chunk_count())
            .find(|&c| self.a.chunk_info(c).unwrap().method == method)
            .unwrap_or_else(|| panic!("no {method:?} chunk"))
    }

    /// The largest raw chunk (a piece of `random.bin`): room to write other bytes into.
    fn big_raw_chunk(&self) -> u32 {
        (0..self.a.chunk_count())
            .filter(|&c| self.a.chunk_info(c).unwrap().method == Method::None)
            .max_by_key(|&c| self.a.chunk_info(c).unwrap().stored_len)
            .expect("a raw chunk")
    }

    /// Applies `patch` to a copy of the good bytes, re-seals, writes it out and opens and
    /// reads all of it. Returns the error, or a description of what went wrong instead.
    fn attempt(&self, patch: &dyn Fn(&Fixture, &mut RawArchive)) -> Result<Error, String> {
        self.attempt_on(&self.raw, patch)
    }

    /// [`Fixture::attempt`] on other bytes than the raw-TOC form.
    fn attempt_on(
        &self,
        base: &RawArchive,
        patch: &dyn Fn(&Fixture, &mut RawArchive),
    ) -> Result<Error, String> {
        let mut raw = base.clone();
        patch(self, &mut raw);
        raw.reseal();
        let path: PathBuf = self.dir.path().join("hostile.hpkg");
        raw.write(&path);
        match catch_unwind(AssertUnwindSafe(|| open_and_read_all(&path))) {
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(Ok(_)) => Err("opened and read without error".into()),
            Ok(Err(e)) => Ok(e),
        }
    }
}

type Patch = Box<dyn Fn(&Fixture, &mut RawArchive)>;

/// Runs every case against a fresh fixture; each must fail with a message containing its
/// expected text. Reports every case that did not, at once.
fn refuse_all(compression: Compression, cases: Vec<(&str, &str, Patch)>) {
    refuse_all_on(compression, false, cases)
}

/// [`refuse_all`], patching the archive as written (`as_written`) or with its TOC raw.
fn refuse_all_on(compression: Compression, as_written: bool, cases: Vec<(&str, &str, Patch)>) {
    let fx = Fixture::new(compression);
    let base = if as_written { &fx.as_written } else { &fx.raw };
    let mut problems = Vec::new();
    for (what, expect, patch) in cases {
        match fx.attempt_on(base, &*patch) {
            Ok(e) => {
                let msg = e.to_string();
                if !msg.contains(expect) {
                    problems.push(format!("{what}: error {msg:?} does not mention {expect:?}"));
                }
            }
            Err(p) => problems.push(format!("{what}: {p}")),
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn case(what: &'static str, expect: &'static str, f: Patch) -> (&'static str, &'static str, Patch) {
    (what, expect, f)
}

#[test]
fn resealed_good_archive_still_opens() {
    // The re-sealing (and storing the TOC raw) must not be what makes the cases below fail.
    for c in [
        Compression::default(),
        Compression::Zlib(6),
        Compression::Lz4,
        Compression::None,
    ] {
        let fx = Fixture::new(c);
        let method = fx.as_written.bytes[fx.as_written.section(TOC).0];
        assert_eq!(
            method,
            c.method() as u8,
            "{c}: the TOC is compressed like the chunks"
        );
        for base in [&fx.raw, &fx.as_written] {
            let e = fx.attempt_on(base, &|_, _| {});
            assert_eq!(e.err().as_deref(), Some("opened and read without error"));
        }
    }
}

/// The frame of the TOC section: method u8, 7 reserved bytes, raw length u64.
fn toc_frame(r: &RawArchive) -> usize {
    r.section(TOC).0
}

fn toc_raw_len(f: fn(u64) -> u64) -> Patch {
    Box::new(move |_, r: &mut RawArchive| {
        let at = toc_frame(r) + 8;
        let v = f(r.u64(at));
        r.set_u64(at, v);
    })
}

/// Cases for a compressed TOC frame.
fn compressed_toc_cases() -> Vec<(&'static str, &'static str, Patch)> {
    vec![
        case(
            "unknown method",
            "toc frame: unknown compression method 9",
            Box::new(|_, r| {
                let at = toc_frame(r);
                r.bytes[at] = 9;
            }),
        ),
        case(
            "reserved bytes",
            "toc frame: reserved bytes",
            Box::new(|_, r| {
                let at = toc_frame(r) + 3;
                r.bytes[at] = 1;
            }),
        ),
        case(
            "raw length u64::MAX",
            "exceeds the limit of 536870912",
            toc_raw_len(|_| u64::MAX),
        ),
        case(
            "raw length 4 GiB",
            "exceeds the limit of 536870912",
            toc_raw_len(|_| 1 << 32),
        ),
        case(
            "raw length within the limit, implausible for the body",
            "implausible",
            toc_raw_len(|_| 64 << 20),
        ),
        case(
            "raw length one short",
            "does not decompress",
            toc_raw_len(|v| v - 1),
        ),
        case(
            "raw length one long",
            "does not decompress",
            toc_raw_len(|v| v + 1),
        ),
        case("raw length 0", "does not decompress", toc_raw_len(|_| 0)),
        case(
            "compressed body labelled raw",
            "raw length",
            Box::new(|_, r| {
                let at = toc_frame(r);
                r.bytes[at] = 0;
            }),
        ),
        case(
            "garbage body",
            "does not decompress",
            Box::new(|_, r| {
                let (off, len) = r.section(TOC);
                r.bytes[off + TOC_FRAME_LEN..off + len].fill(0x55);
            }),
        ),
        case(
            "body cut short",
            "does not decompress",
            Box::new(|_, r| {
                let (off, len) = r.section(TOC);
                r.bytes[off + len / 2..off + len].fill(0);
            }),
        ),
    ]
}

#[test]
fn hostile_toc_frames_are_refused() {
    for c in [Compression::default(), Compression::Zlib(6)] {
        refuse_all_on(c, true, compressed_toc_cases());
    }
    refuse_all(
        Compression::default(),
        vec![
            case(
                "raw TOC with a longer raw length",
                "raw length",
                toc_raw_len(|v| v + 1),
            ),
            case(
                "raw TOC with a shorter raw length",
                "raw length",
                toc_raw_len(|v| v - 1),
            ),
            case(
                "raw TOC labelled zstd",
                "does not decompress",
                Box::new(|_, r| {
                    let at = toc_frame(r);
                    r.bytes[at] = 1;
                }),
            ),
        ],
    );
}

#[test]
fn hostile_header_fields_are_refused() {
    let sec_off = |i: usize, v: u64| -> Patch {
        Box::new(move |_, r: &mut RawArchive| {
            r.set_u64(section_offset(i), v);
        })
    };
    let sec_len = |i: usize, f: fn(u64) -> u64| -> Patch {
        Box::new(move |_, r: &mut RawArchive| {
            let v = f(r.u64(section_len(i)));
            r.set_u64(section_len(i), v);
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "manifest offset outside the file",
                "manifest section starts at",
                sec_off(MANIFEST, 1 << 40),
            ),
            case(
                "toc offset outside the file",
                "toc section starts at",
                sec_off(TOC, u64::MAX),
            ),
            case(
                "chunk index offset past its place",
                "chunk index section starts at",
                sec_off(INDEX, 1 << 20),
            ),
            case("heap offset 0", "heap section starts at", sec_off(HEAP, 0)),
            case(
                "trailer offset outside the file",
                "trailer section starts at",
                sec_off(TRAILER, u64::MAX - 7),
            ),
            case("huge toc length", "truncated", sec_len(TOC, |_| u64::MAX)),
            case(
                "huge manifest length",
                "truncated",
                sec_len(MANIFEST, |_| 1 << 62),
            ),
            case(
                "heap length past the file",
                "truncated",
                sec_len(HEAP, |v| v + (1 << 32)),
            ),
            case(
                "heap length 8 too long",
                "trailer section starts at",
                sec_len(HEAP, |v| v + 8),
            ),
            case(
                "chunk index one byte longer",
                "heap section starts at",
                sec_len(INDEX, |v| v + 1),
            ),
            case(
                "trailer length",
                "trailer length",
                sec_len(TRAILER, |v| v - 8),
            ),
            case(
                "file size field",
                "recorded file size",
                Box::new(|_, r| {
                    let v = r.u64(H_FILE_SIZE);
                    r.set_u64(H_FILE_SIZE, v + 1);
                }),
            ),
            case(
                "content size beyond the chunks",
                "content size",
                Box::new(|_, r| {
                    r.set_u64(H_CONTENT_SIZE, u64::MAX);
                }),
            ),
            case(
                "content size off by one",
                "the header says",
                Box::new(|_, r| {
                    let v = r.u64(H_CONTENT_SIZE);
                    r.set_u64(H_CONTENT_SIZE, v - 1);
                }),
            ),
            case(
                "chunk size not a power of two",
                "chunk size 100000",
                Box::new(|_, r| {
                    r.set_u32(H_CHUNK_SIZE, 100_000);
                }),
            ),
            case(
                "chunk size too large",
                "chunk size",
                Box::new(|_, r| {
                    r.set_u32(H_CHUNK_SIZE, 1 << 21);
                }),
            ),
            case(
                "chunk size 0",
                "chunk size",
                Box::new(|_, r| {
                    r.set_u32(H_CHUNK_SIZE, 0);
                }),
            ),
            case(
                "unknown compression method",
                "unknown compression method 9",
                Box::new(|_, r| {
                    r.bytes[H_METHOD] = 9;
                }),
            ),
            case(
                "compression level out of range",
                "compression level",
                Box::new(|_, r| {
                    r.set_u32(H_LEVEL, 99);
                }),
            ),
            case(
                "reserved header bytes",
                "reserved",
                Box::new(|_, r| {
                    r.bytes[H_METHOD + 1] = 1;
                }),
            ),
            case(
                "unknown flags",
                "unknown flags",
                Box::new(|_, r| {
                    let v = r.u32(H_FLAGS);
                    r.set_u32(H_FLAGS, v | 0x100);
                }),
            ),
            case(
                "header length",
                "header length",
                Box::new(|_, r| {
                    r.set_u32(12, 64);
                }),
            ),
            case(
                "future major version",
                "unsupported archive format version 2",
                Box::new(|_, r| {
                    r.set_u16(H_VERSION_MAJOR, 2);
                }),
            ),
            case(
                "bad magic",
                "bad magic",
                Box::new(|_, r| {
                    r.bytes[1] = b'X';
                }),
            ),
            case(
                "bad trailer magic",
                "bad trailer magic",
                Box::new(|_, r| {
                    let t = r.bytes.len() - TRAILER_LEN;
                    r.bytes[t] = b'X';
                }),
            ),
            case(
                "manifest that does not validate",
                "manifest",
                Box::new(|_, r| {
                    let (off, len) = r.section(MANIFEST);
                    let m = &mut r.bytes[off..off + len];
                    let at = m.windows(4).position(|w| w == b"name").unwrap();
                    m[at..at + 4].copy_from_slice(b"nome");
                }),
            ),
        ],
    );
}

#[test]
fn hostile_toc_counts_are_refused() {
    let set_toc = |field: usize, v: u64, wide: bool| -> Patch {
        Box::new(move |_, r: &mut RawArchive| {
            let off = r.toc() + field;
            if wide {
                r.set_u64(off, v);
            } else {
                r.set_u32(off, v as u32);
            }
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "n_inodes = u32::MAX",
                "the section has",
                set_toc(0, u32::MAX as u64, false),
            ),
            case(
                "n_dirents = u32::MAX",
                "the section has",
                set_toc(4, u32::MAX as u64, false),
            ),
            case(
                "n_xattrs = u32::MAX",
                "the section has",
                set_toc(8, u32::MAX as u64, false),
            ),
            case(
                "n_inodes + 1",
                "the section has",
                Box::new(|_, r| {
                    let n = r.n_inodes();
                    r.set_u32(r.toc(), n + 1);
                }),
            ),
            case(
                "strings_len = u64::MAX",
                "string table larger than 4 GiB",
                set_toc(16, u64::MAX, true),
            ),
            case(
                "strings_len off by one",
                "the section has",
                Box::new(|_, r| {
                    let off = r.toc() + 16;
                    let v = r.u64(off);
                    r.set_u64(off, v + 1);
                }),
            ),
            case("no inodes", "no root directory", set_toc(0, 0, false)),
            case("reserved toc field", "reserved", set_toc(12, 1, false)),
            case(
                "reserved toc field (wide)",
                "reserved",
                set_toc(24, 1, true),
            ),
        ],
    );
}

#[test]
fn hostile_names_are_refused() {
    let patch_name = |path: &'static str, f: fn(&mut [u8]) -> Option<u16>| -> Patch {
        Box::new(move |fx, r: &mut RawArchive| {
            let d = fx.dirent(path);
            let name = path.rsplit('/').next().unwrap();
            let at = fx.string(name);
            if let Some(len) = f(&mut r.bytes[at..at + name.len()]) {
                r.set_u16(d + D_NAME_LEN, len);
            }
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "name with /",
                "contains `/`",
                patch_name("dir/nested.txt", |n| {
                    n[6] = b'/';
                    None
                }),
            ),
            case(
                "name ..",
                "is `.` or `..`",
                patch_name("dir/nested.txt", |n| {
                    n[..2].copy_from_slice(b"..");
                    Some(2)
                }),
            ),
            case(
                "name .",
                "is `.` or `..`",
                patch_name("dir/nested.txt", |n| {
                    n[0] = b'.';
                    Some(1)
                }),
            ),
            case(
                "name with NUL",
                "contains NUL",
                patch_name("dir/nested.txt", |n| {
                    n[3] = 0;
                    None
                }),
            ),
            case(
                "empty name",
                "empty name",
                patch_name("dir/nested.txt", |_| Some(0)),
            ),
            case(
                "name longer than 255 bytes",
                "directory entry",
                Box::new(|fx, r| {
                    let d = fx.dirent("text.txt");
                    r.set_u16(d + D_NAME_LEN, 256);
                }),
            ),
            case(
                "name outside the string table",
                "outside the string table",
                Box::new(|fx, r| {
                    let d = fx.dirent("hello.txt");
                    r.set_u32(d + D_NAME_OFF, u32::MAX - 3);
                }),
            ),
            case(
                "name reaching past the string table",
                "outside the string table",
                Box::new(|fx, r| {
                    let d = fx.dirent("text.txt");
                    let strings_len = r.u64(r.toc() + 16) as u32;
                    r.set_u32(d + D_NAME_OFF, strings_len - 2);
                }),
            ),
            case(
                "unsorted names",
                "not sorted or duplicated",
                Box::new(|fx, r| {
                    let (a, b) = (fx.dirent("hello.txt"), fx.dirent("link"));
                    assert_eq!(b, a + DIRENT_LEN);
                    let first = r.bytes[a..a + DIRENT_LEN].to_vec();
                    r.bytes.copy_within(b..b + DIRENT_LEN, a);
                    r.bytes[b..b + DIRENT_LEN].copy_from_slice(&first);
                }),
            ),
            case(
                "duplicate names",
                "not sorted or duplicated",
                Box::new(|fx, r| {
                    let (a, b) = (fx.dirent("hello.txt"), fx.dirent("link"));
                    let (off, len) = (r.u32(a + D_NAME_OFF), r.u16(a + D_NAME_LEN));
                    r.set_u32(b + D_NAME_OFF, off).set_u16(b + D_NAME_LEN, len);
                }),
            ),
            case(
                "reserved dirent bytes",
                "reserved",
                Box::new(|fx, r| {
                    let d = fx.dirent("link");
                    r.set_u16(d + 10, 1);
                }),
            ),
        ],
    );
}

#[test]
fn directory_cycles_and_double_links_are_refused() {
    let retarget = |path: &'static str, to: &'static str| -> Patch {
        Box::new(move |fx, r: &mut RawArchive| {
            let d = fx.dirent(path);
            r.set_u32(d + D_TARGET, fx.entry(to));
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "subdirectory entry pointing at the root",
                "links directory 0",
                retarget("dir/sub", ""),
            ),
            case(
                "subdirectory entry pointing at its ancestor",
                "links directory",
                retarget("dir/sub", "dir"),
            ),
            case(
                "file entry pointing at the root",
                "links directory 0",
                retarget("dir/nested.txt", ""),
            ),
            case(
                "deep entry pointing at an ancestor",
                "links directory",
                retarget("dir/sub/deep.txt", "dir"),
            ),
            case(
                "directory linked twice",
                "is linked twice",
                retarget("empty-dir", "dir"),
            ),
            case(
                "directory linked from a second parent",
                "whose parent is",
                retarget("dir/nested.txt", "empty-dir"),
            ),
            case(
                "directory linked from nowhere",
                "not linked from its parent",
                retarget("empty-dir", "hello.txt"),
            ),
            case(
                "entry pointing past the inodes",
                "points to entry",
                Box::new(|fx, r| {
                    let d = fx.dirent("hello.txt");
                    let n = r.n_inodes();
                    r.set_u32(d + D_TARGET, n);
                }),
            ),
            case(
                "entry pointing at u32::MAX",
                "points to entry",
                Box::new(|fx, r| {
                    let d = fx.dirent("link");
                    r.set_u32(d + D_TARGET, u32::MAX);
                }),
            ),
            case(
                "parent field of a directory lies",
                "whose parent is",
                Box::new(|fx, r| {
                    let i = fx.inode("dir/sub");
                    r.set_u32(i + I_C, 0);
                }),
            ),
            case(
                "root's parent field",
                "root's parent",
                Box::new(|fx, r| {
                    let i = fx.inode("");
                    r.set_u32(i + I_C, 1);
                }),
            ),
            case(
                "root that is a file",
                "root is not a directory",
                Box::new(|fx, r| {
                    let i = fx.inode("");
                    r.set_u32(i + I_MODE, S_IFREG | 0o644);
                }),
            ),
            case(
                "directory entries beyond the records",
                "beyond the",
                Box::new(|fx, r| {
                    let i = fx.inode("dir");
                    r.set_u32(i + I_B, u32::MAX);
                }),
            ),
            case(
                "directory entry range starting at u32::MAX",
                "beyond the",
                Box::new(|fx, r| {
                    let i = fx.inode("empty-dir");
                    r.set_u32(i + I_A, u32::MAX).set_u32(i + I_B, 2);
                }),
            ),
            case(
                "two directories sharing entries",
                "overlap",
                Box::new(|fx, r| {
                    // dir/sub holds only a file, so sharing its entry does not link a
                    // directory twice; the overlap itself must be refused.
                    let (sub, empty) = (fx.inode("dir/sub"), fx.inode("empty-dir"));
                    let (a, b) = (r.u32(sub + I_A), r.u32(sub + I_B));
                    r.set_u32(empty + I_A, a).set_u32(empty + I_B, b);
                }),
            ),
        ],
    );
}

#[test]
fn hostile_inode_records_are_refused() {
    let set32 = |path: &'static str, field: usize, f: fn(u32) -> u32| -> Patch {
        Box::new(move |fx, r: &mut RawArchive| {
            let i = fx.inode(path);
            let v = f(r.u32(i + field));
            r.set_u32(i + field, v);
        })
    };
    let set64 = |path: &'static str, field: usize, f: fn(u64) -> u64| -> Patch {
        Box::new(move |fx, r: &mut RawArchive| {
            let i = fx.inode(path);
            let v = f(r.u64(i + field));
            r.set_u64(i + field, v);
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "file past the chunk index",
                "file bytes reach chunk",
                // text.txt spans two chunks; starting at the last one, it reaches past it.
                Box::new(|fx, r| {
                    let last = fx.a.chunk_count() - 1;
                    r.set_u32(fx.inode("text.txt") + I_A, last);
                }),
            ),
            case(
                "file starting at chunk u32::MAX",
                "file bytes reach chunk",
                set32("hello.txt", I_A, |_| u32::MAX),
            ),
            case(
                "file of size u64::MAX",
                "file bytes reach chunk",
                set64("hello.txt", I_D, |_| u64::MAX),
            ),
            case(
                "file of size u64::MAX - 2",
                "file bytes reach chunk",
                set64("dir/sub/deep.txt", I_D, |_| u64::MAX - 2),
            ),
            case(
                "file size beyond its chunk",
                "file needs bytes",
                set64("text.txt", I_D, |d| d + 1),
            ),
            case(
                "file size beyond its chunk, named by its path",
                "toc entry 5 (dir/sub/deep.txt): file needs bytes 7..112 of chunk",
                set64("dir/sub/deep.txt", I_D, |d| d + 100),
            ),
            case(
                "offset beyond the chunk size",
                "beyond the chunk size",
                set32("hello.txt", I_B, |_| 64 * 1024),
            ),
            case(
                "offset beyond the chunk's bytes",
                "file needs bytes",
                set32("hello.txt", I_B, |b| b + 1000),
            ),
            case(
                "empty file pointing into the heap",
                "empty file points into the heap",
                set32("a-empty", I_A, |_| 1),
            ),
            case(
                "file with a parent field",
                "file has a parent field",
                set32("hello.txt", I_C, |_| 2),
            ),
            case(
                "directory with a size",
                "directory has a size field",
                set64("dir", I_D, |_| 5),
            ),
            case(
                "symlink with a size",
                "symlink has parent or size fields",
                set64("link", I_D, |_| 5),
            ),
            case(
                "unknown mode bits",
                "unknown bits",
                set32("hello.txt", I_MODE, |m| m | 0o1000000),
            ),
            case(
                "character device",
                "unsupported file type",
                set32("hello.txt", I_MODE, |m| (m & !S_IFMT) | S_IFCHR),
            ),
            case(
                "no file type",
                "unsupported file type",
                set32("hello.txt", I_MODE, |m| m & !S_IFMT),
            ),
            case(
                "nanoseconds out of range",
                "nanoseconds",
                set32("hello.txt", I_MTIME_NSEC, |_| 1_000_000_000),
            ),
            case(
                "symlink target outside the strings",
                "symlink target outside",
                set32("link", I_A, |_| u32::MAX),
            ),
            case(
                "symlink target too long for the strings",
                "symlink target outside",
                set32("link", I_B, |_| u32::MAX),
            ),
            case(
                "empty symlink target",
                "symlink target empty",
                set32("link", I_B, |_| 0),
            ),
            case(
                "xattrs beyond the records",
                "beyond the",
                set32("hello.txt", I_XATTR_COUNT, |_| u32::MAX),
            ),
            case(
                "xattr range starting at u32::MAX",
                "beyond the",
                set32("hello.txt", I_XATTR_FIRST, |_| u32::MAX),
            ),
            case(
                "two entries sharing xattrs",
                "overlap",
                Box::new(|fx, r| {
                    let (d, h) = (fx.inode("dir"), fx.inode("hello.txt"));
                    let first = r.u32(d + I_XATTR_FIRST);
                    r.set_u32(h + I_XATTR_FIRST, first)
                        .set_u32(h + I_XATTR_COUNT, 1);
                }),
            ),
            case(
                "xattr name without a namespace",
                "invalid name",
                Box::new(|fx, r| {
                    let at = fx.string("user.comment");
                    r.bytes[at + 4] = b'_';
                }),
            ),
            case(
                "empty xattr name",
                "invalid name",
                Box::new(|fx, r| {
                    let k = r.u32(fx.inode("hello.txt") + I_XATTR_FIRST);
                    let x = r.xattr(k);
                    r.set_u16(x + X_NAME_LEN, 0);
                }),
            ),
            case(
                "xattr value too long",
                "too long",
                Box::new(|fx, r| {
                    let k = r.u32(fx.inode("hello.txt") + I_XATTR_FIRST);
                    let x = r.xattr(k);
                    r.set_u32(x + X_VALUE_LEN, 70_000);
                }),
            ),
            case(
                "xattr name outside the strings",
                "name outside the string table",
                Box::new(|fx, r| {
                    let k = r.u32(fx.inode("hello.txt") + I_XATTR_FIRST);
                    let x = r.xattr(k);
                    r.set_u32(x + X_NAME_OFF, u32::MAX);
                }),
            ),
            case(
                "xattrs unsorted",
                "not sorted or duplicated",
                Box::new(|fx, r| {
                    let k = r.u32(fx.inode("dir") + I_XATTR_FIRST);
                    let (a, b) = (r.xattr(k), r.xattr(k + 1));
                    let first = r.bytes[a..a + XATTR_LEN].to_vec();
                    r.bytes.copy_within(b..b + XATTR_LEN, a);
                    r.bytes[b..b + XATTR_LEN].copy_from_slice(&first);
                }),
            ),
        ],
    );
}

#[test]
fn hostile_chunk_index_entries_are_refused() {
    let set = |field: usize, wide: bool, f: fn(u64) -> u64| -> Patch {
        Box::new(move |fx, r: &mut RawArchive| {
            let c = r.chunk(fx.chunk_with(Method::Zstd)) + field;
            if wide {
                let v = f(r.u64(c));
                r.set_u64(c, v);
            } else {
                let v = f(r.u32(c) as u64) as u32;
                r.set_u32(c, v);
            }
        })
    };
    refuse_all(
        Compression::default(),
        vec![
            case(
                "raw_len beyond the chunk size",
                "uncompressed length",
                set(C_RAW_LEN, false, |_| 64 * 1024 + 1),
            ),
            case(
                "raw_len 0",
                "uncompressed length 0",
                set(C_RAW_LEN, false, |_| 0),
            ),
            case(
                "stored_len 0",
                "stored length 0",
                set(C_STORED_LEN, false, |_| 0),
            ),
            case(
                "stored_len u32::MAX",
                "outside the heap",
                set(C_STORED_LEN, false, |_| u32::MAX as u64),
            ),
            case(
                "offset at the heap's end",
                "outside the heap",
                Box::new(|fx, r| {
                    let c = r.chunk(fx.chunk_with(Method::Zstd));
                    let heap_len = r.section(HEAP).1 as u64;
                    r.set_u64(c + C_OFFSET, heap_len);
                }),
            ),
            case(
                "offset u64::MAX",
                "outside the heap",
                set(C_OFFSET, true, |_| u64::MAX),
            ),
            case(
                "unknown method",
                "unknown compression method 7",
                Box::new(|fx, r| {
                    let c = r.chunk(fx.chunk_with(Method::Zstd));
                    r.bytes[c + C_METHOD] = 7;
                }),
            ),
            case(
                "reserved bytes",
                "reserved",
                Box::new(|fx, r| {
                    let c = r.chunk(fx.chunk_with(Method::Zstd));
                    r.bytes[c + C_METHOD + 3] = 1;
                }),
            ),
            case(
                "raw chunk whose stored and raw lengths differ",
                "stored length",
                Box::new(|fx, r| {
                    let c = r.chunk(fx.chunk_with(Method::None));
                    let v = r.u32(c + C_RAW_LEN);
                    r.set_u32(c + C_STORED_LEN, v - 1);
                }),
            ),
            case(
                "stale chunk hash",
                "does not match its hash",
                Box::new(|fx, r| {
                    let c = r.chunk(fx.chunk_with(Method::Zstd));
                    r.bytes[c + C_HASH] ^= 1;
                }),
            ),
        ],
    );
}

/// Overwrites the stored bytes of chunk `c` (its length becomes `stored.len()`), sets its
/// method and re-hashes it, so only decompression can notice.
fn replace_stored(r: &mut RawArchive, c: u32, method: Method, stored: &[u8]) {
    let e = r.chunk(c);
    let start = r.stored(c).start;
    r.bytes[start..start + stored.len()].copy_from_slice(stored);
    r.set_u32(e + C_STORED_LEN, stored.len() as u32);
    r.bytes[e + C_METHOD] = method as u8;
    r.rehash_chunk(c);
}

/// The last chunk of `text.txt` (compressed with `method`) and the file, one byte shorter
/// in the chunk index and the TOC: the file still fits its chunks, but the chunk's stream
/// decompresses to one byte more than its `raw_len`.
fn one_byte_less(fx: &Fixture, r: &mut RawArchive, method: Method) {
    let text = fx.entry("text.txt");
    let c = fx.a.file_chunks(text).unwrap().end - 1;
    assert_eq!(fx.a.chunk_info(c).unwrap().method, method);
    let e = r.chunk(c);
    let raw_len = r.u32(e + C_RAW_LEN);
    r.set_u32(e + C_RAW_LEN, raw_len - 1);
    let cs = r.u64(H_CONTENT_SIZE);
    r.set_u64(H_CONTENT_SIZE, cs - 1);
    let i = fx.inode("text.txt");
    let size = r.u64(i + I_D);
    r.set_u64(i + I_D, size - 1);
}

fn expect_decompress(fx: &Fixture, patch: &dyn Fn(&Fixture, &mut RawArchive), what: &str) {
    match fx.attempt(patch) {
        Ok(Error::Decompress { reason, .. }) => eprintln!("{what}: {reason}"),
        Ok(e) => panic!("{what}: expected Decompress, got {e}"),
        Err(p) => panic!("{what}: {p}"),
    }
}

#[test]
fn chunk_that_is_not_valid_zstd_fails_to_decompress() {
    let fx = Fixture::new(Compression::default());
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Zstd);
            let len = r.stored(c).len();
            replace_stored(r, c, Method::Zstd, &vec![0x55; len]);
        },
        "garbage",
    );
    expect_decompress(
        &fx,
        &|fx, r| {
            // A valid frame cut short.
            let c = fx.chunk_with(Method::Zstd);
            let len = r.stored(c).len();
            let frame = r.bytes[r.stored(c)][..len / 2].to_vec();
            replace_stored(r, c, Method::Zstd, &frame);
        },
        "cut frame",
    );
    expect_decompress(
        &fx,
        &|fx, r| {
            // Raw bytes labelled as zstd.
            let c = fx.big_raw_chunk();
            let stored = r.bytes[r.stored(c)].to_vec();
            replace_stored(r, c, Method::Zstd, &stored[..1000]);
        },
        "raw bytes as zstd",
    );
}

#[test]
fn zstd_chunk_that_decompresses_to_more_than_raw_len_fails() {
    let fx = Fixture::new(Compression::default());
    expect_decompress(
        &fx,
        &|fx, r| one_byte_less(fx, r, Method::Zstd),
        "one byte more",
    );
    // A zstd bomb: 128 MiB of zeros in a few KiB. It must fail at once, without inflating.
    let bomb = zstd::bulk::compress(&vec![0u8; 128 << 20], 1).unwrap();
    assert!(bomb.len() < 64 * 1024, "bomb of {} bytes", bomb.len());
    let t0 = std::time::Instant::now();
    expect_decompress(
        &fx,
        &move |fx, r| {
            let c = fx.big_raw_chunk();
            replace_stored(r, c, Method::Zstd, &bomb);
        },
        "zstd bomb",
    );
    assert!(t0.elapsed().as_secs() < 5, "took {:?}", t0.elapsed());
}

#[test]
fn zlib_chunk_that_is_garbage_or_too_long_fails_to_decompress() {
    let fx = Fixture::new(Compression::Zlib(6));
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Zlib);
            let len = r.stored(c).len();
            replace_stored(r, c, Method::Zlib, &vec![0x55; len]);
        },
        "garbage",
    );
    expect_decompress(
        &fx,
        &|fx, r| one_byte_less(fx, r, Method::Zlib),
        "one byte more",
    );
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Zlib);
            let stored = r.bytes[r.stored(c)].to_vec();
            replace_stored(r, c, Method::Zlib, &stored[..stored.len() - 6]);
        },
        "cut stream",
    );
    // A stream that is fine but shorter than raw_len.
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Zlib);
            let e = r.chunk(c);
            let raw_len = r.u32(e + C_RAW_LEN) as usize;
            let mut enc =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut enc, &vec![b'x'; raw_len - 1]).unwrap();
            let short = enc.finish().unwrap();
            replace_stored(r, c, Method::Zlib, &short);
        },
        "short stream",
    );
}

#[test]
fn lz4_chunk_that_is_garbage_or_of_the_wrong_length_fails_to_decompress() {
    let fx = Fixture::new(Compression::Lz4);
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Lz4);
            let len = r.stored(c).len();
            replace_stored(r, c, Method::Lz4, &vec![0xff; len]);
        },
        "garbage",
    );
    // The block writes one byte more than raw_len: refused before it writes past the end.
    expect_decompress(
        &fx,
        &|fx, r| one_byte_less(fx, r, Method::Lz4),
        "one byte more",
    );
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Lz4);
            let stored = r.bytes[r.stored(c)].to_vec();
            replace_stored(r, c, Method::Lz4, &stored[..stored.len() / 2]);
        },
        "cut block",
    );
    // A valid block one byte shorter than raw_len (the block itself carries no length).
    expect_decompress(
        &fx,
        &|fx, r| {
            let c = fx.chunk_with(Method::Lz4);
            let raw_len = r.u32(r.chunk(c) + C_RAW_LEN) as usize;
            let short = lz4_flex::block::compress(&vec![b'x'; raw_len - 1]);
            replace_stored(r, c, Method::Lz4, &short);
        },
        "short block",
    );
    expect_decompress(
        &fx,
        &|fx, r| {
            // Raw bytes labelled as lz4.
            let c = fx.big_raw_chunk();
            let stored = r.bytes[r.stored(c)].to_vec();
            replace_stored(r, c, Method::Lz4, &stored[..1000]);
        },
        "raw bytes as lz4",
    );
    // An lz4 bomb: 8 MiB of zeros in about 33 KiB, in place of a 64 KiB chunk. Decoding
    // stops at raw_len.
    let bomb = lz4_flex::block::compress(&vec![0u8; 8 << 20]);
    let t0 = std::time::Instant::now();
    expect_decompress(
        &fx,
        &move |fx, r| {
            let c = fx.big_raw_chunk();
            assert!(bomb.len() <= r.stored(c).len(), "the bomb fits");
            replace_stored(r, c, Method::Lz4, &bomb);
        },
        "lz4 bomb",
    );
    assert!(t0.elapsed().as_secs() < 5, "took {:?}", t0.elapsed());
}

/// `text.txt`'s chunk of a raw (`Compression::None`) fixture, stored as lz4 instead: a
/// valid lz4 chunk in an archive that says format 1.0.
fn text_chunk_as_lz4(fx: &Fixture, r: &mut RawArchive) -> u32 {
    let c = fx.a.file_chunks(fx.entry("text.txt")).unwrap().start;
    let mut raw = Vec::new();
    fx.a.read_chunk(c, &mut raw).unwrap();
    let block = lz4_flex::block::compress(&raw);
    assert!(block.len() < raw.len(), "the text compresses");
    replace_stored(r, c, Method::Lz4, &block);
    c
}

#[test]
fn lz4_in_an_archive_of_format_1_0_is_refused() {
    let fx = Fixture::new(Compression::None);
    match fx.attempt(&|fx, r| {
        text_chunk_as_lz4(fx, r);
    }) {
        Ok(e) => {
            let msg = e.to_string();
            assert!(msg.contains("chunk index entry"), "{msg}");
            assert!(
                msg.contains("compression method 3 (lz4) needs format 1.1, the archive says 1.0"),
                "{msg}"
            );
        }
        Err(p) => panic!("{p}"),
    }
    // The same chunk in an archive that says 1.1 is good: the version is what was refused.
    assert_eq!(
        fx.attempt(&|fx, r| {
            text_chunk_as_lz4(fx, r);
            r.set_u16(H_VERSION_MINOR, 1);
        })
        .err()
        .as_deref(),
        Some("opened and read without error")
    );
    refuse_all(
        Compression::None,
        vec![
            case(
                "lz4 in the header of a 1.0 archive",
                "header: compression method 3 (lz4) needs format 1.1",
                Box::new(|_, r| r.bytes[H_METHOD] = Method::Lz4 as u8),
            ),
            case(
                "an lz4 toc frame in a 1.0 archive",
                "toc frame: compression method 3 (lz4) needs format 1.1",
                Box::new(|_, r| {
                    let at = toc_frame(r);
                    r.bytes[at] = Method::Lz4 as u8;
                }),
            ),
        ],
    );
}

#[test]
fn unknown_method_of_a_newer_minor_version_is_refused_naming_the_chunk() {
    let fx = Fixture::new(Compression::default());
    let c = fx.chunk_with(Method::Zstd);
    match fx.attempt(&move |_, r| {
        let e = r.chunk(c);
        r.bytes[e + C_METHOD] = 4;
        r.set_u16(H_VERSION_MINOR, 2);
    }) {
        Ok(e @ Error::UnknownMethod { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "chunk index entry {c}: unknown compression method 4 (the archive is format \
                 1.2; this reader knows methods 0 to 3, up to format 1.1)"
            )
        ),
        Ok(e) => panic!("expected UnknownMethod, got {e}"),
        Err(p) => panic!("{p}"),
    }
}
