//! Concurrent readers (threads and processes) get correct bytes: many files at once, and
//! the same big file at once, with a chunk cache far smaller than what is read.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::fixtures::{self, BIG_FILE_LEN};
use e2e::tree::walk;
use e2e::uring::{self, Transport};
use e2e::Mount;

const READERS: usize = 8;

/// doc in `system`, the big generated tree in `user`; a 4 MiB chunk cache.
fn mount(t: Transport) -> Mount {
    let (doc, big) = (fixtures::doc(), fixtures::big());
    let m = Mount::builder()
        .layer("system", &doc.layer)
        .layer("user", &big.layer)
        .trusting(fixtures::keys())
        .arg("--cache-size")
        .arg("4M")
        .transport(t)
        .start();
    crate::mount::assert_transport(&m, t);
    m
}

/// Drops the kernel's cached pages of `f`, so the next reads go to the daemon.
fn drop_page_cache(f: &File) {
    // SAFETY: fadvise on an open descriptor.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn check_range(f: &File, want: &[u8], off: usize, len: usize) -> Result<(), String> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off as u64)
        .map_err(|e| format!("pread {len} at {off}: {e}"))?;
    if buf != want[off..off + len] {
        return Err(format!("pread {len} at {off}: wrong bytes"));
    }
    Ok(())
}

#[test]
fn eight_threads_reading_many_files_and_one_big_file_get_correct_bytes() {
    uring::each(|t| {
        let m = mount(t);
        let doc = fixtures::doc();
        let big_src = fixtures::big().source.join("big/blob");
        let blob = std::fs::read(&big_src).unwrap();
        assert_eq!(blob.len(), BIG_FILE_LEN);
        let files: Vec<PathBuf> = walk(&doc.source)
            .into_iter()
            .filter(|(_, md)| md.is_file())
            .map(|(p, _)| p)
            .collect();
        assert!(files.len() > 1000, "only {} files", files.len());
        let errors: Vec<String> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..READERS)
                .map(|t| {
                    let (files, blob, m, doc) = (&files, &blob, &m, doc);
                    sc.spawn(move || {
                        let mut errs = Vec::new();
                        let mut rng = Rng(0x9E37_79B9 + t as u64);
                        let big = File::open(m.join("big/blob")).unwrap();
                        let n = files.len();
                        for k in 0..n {
                            // each reader starts at a different place of the list
                            let rel = &files[(k + t * n / READERS) % n];
                            match std::fs::read(m.join(rel)) {
                                Ok(got) if got == std::fs::read(doc.source.join(rel)).unwrap() => {}
                                Ok(_) => errs.push(format!("{}: wrong bytes", rel.display())),
                                Err(e) => errs.push(format!("{}: {e}", rel.display())),
                            }
                            if k % 32 == 0 {
                                let len = 1 + (rng.next() % (256 << 10)) as usize;
                                let off = (rng.next() % (blob.len() - len) as u64) as usize;
                                if k % 256 == 0 {
                                    drop_page_cache(&big);
                                }
                                if let Err(e) = check_range(&big, blob, off, len) {
                                    errs.push(format!("big/blob: {e}"));
                                }
                            }
                        }
                        // all of the big file, in 1 MiB reads, from the daemon
                        drop_page_cache(&big);
                        for off in (0..blob.len()).step_by(1 << 20) {
                            let len = (1 << 20).min(blob.len() - off);
                            if let Err(e) = check_range(&big, blob, off, len) {
                                errs.push(format!("big/blob sequential: {e}"));
                                break;
                            }
                        }
                        errs
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a reader panicked"))
                .collect()
        });
        assert!(
            errors.is_empty(),
            "{} errors, e.g.:\n{}",
            errors.len(),
            errors[..errors.len().min(20)].join("\n")
        );
    });
}

#[test]
fn eight_processes_reading_the_same_files_at_once_get_correct_bytes() {
    uring::each(|t| {
        let m = mount(t);
        let src = &fixtures::big().source;
        for rel in ["big/blob", "big/text"] {
            drop_page_cache(&File::open(m.join(rel)).unwrap());
        }
        let cmp = |rel: &str| -> std::process::Child {
            Command::new("cmp")
                .arg(src.join(rel))
                .arg(m.join(rel))
                .spawn()
                .unwrap()
        };
        let mut children: Vec<(String, std::process::Child)> = (0..READERS)
            .map(|i| {
                let rel = if i % 2 == 0 { "big/blob" } else { "big/text" };
                (rel.to_owned(), cmp(rel))
            })
            .collect();
        // and a whole directory of small files, twice, by tar
        let tar = |p: &Path| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("tar -C {} -cf - small | md5sum", e2e::quote(p)))
                .output()
                .unwrap()
        };
        let (a, b) = std::thread::scope(|sc| {
            let x = sc.spawn(|| tar(m.path()));
            let y = sc.spawn(|| tar(m.path()));
            (x.join().unwrap(), y.join().unwrap())
        });
        for (rel, c) in &mut children {
            let st = c.wait().unwrap();
            assert!(st.success(), "cmp {rel} through the mount: {st}");
        }
        assert!(a.status.success() && b.status.success());
        assert_eq!(
            a.stdout, b.stdout,
            "two concurrent tars of one directory differ"
        );
        let out = Command::new("diff")
            .arg("-r")
            .arg(src.join("small"))
            .arg(m.join("small"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    });
}
