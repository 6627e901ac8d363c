//! Thin packages (FORMAT.md §12): the metadata and trailer of a whole package and where its
//! heap lives; the heap read through a caller's `Heaps`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use format::archive::thin::{Heaps, RemoteHeap, Source, ThinPackage};
use format::archive::Header;
use format::archive::{Archive, BuildOptions};
use format::Error;

use crate::common::*;

fn source() -> Source {
    Source {
        mirrors: vec!["http://127.0.0.1:1/repo/".into()],
        object: "packages/x.hpkg".into(),
        prefetch: vec![3, 1],
    }
}

/// A heap read from the whole package's file, counting the chunks asked for.
#[derive(Debug)]
struct FileHeap {
    file: File,
    pkg: ThinPackage,
    asked: Arc<Mutex<Vec<u32>>>,
}

impl RemoteHeap for FileHeap {
    fn read_stored(&self, c: u32, buf: &mut Vec<u8>) -> io::Result<()> {
        self.asked.lock().unwrap().push(c);
        let info = self.pkg.chunks[c as usize];
        buf.resize(info.stored_len as usize, 0);
        self.file
            .read_exact_at(buf, self.pkg.heap_offset + info.offset)
    }
}

#[derive(Debug)]
struct FromFile(std::path::PathBuf, Arc<Mutex<Vec<u32>>>);

impl Heaps for FromFile {
    fn open(&self, pkg: &ThinPackage) -> Result<Arc<dyn RemoteHeap>, String> {
        Ok(Arc::new(FileHeap {
            file: File::open(&self.0).map_err(|e| e.to_string())?,
            pkg: pkg.clone(),
            asked: self.1.clone(),
        }))
    }
}

#[test]
fn thin_package_has_the_whole_ones_id_and_reads_through_the_given_heap() {
    let dir = scratch();
    let whole = dir.path().join("whole.hpkg");
    write_archive(&fixture_tree(false), &BuildOptions::default(), &whole);
    let a = Archive::open(&whole).unwrap();
    let thin = dir.path().join("thin.hpkg");
    std::fs::write(&thin, a.thin_bytes(&source()).unwrap()).unwrap();
    assert!(std::fs::metadata(&thin).unwrap().len() < std::fs::metadata(&whole).unwrap().len());

    // Without a heap: the metadata is all there, the chunks are not.
    let t = Archive::open_trusted(&thin, &trusted()).unwrap();
    assert!(t.is_thin() && !a.is_thin());
    assert_eq!(t.id(), a.id());
    assert_eq!(t.manifest(), a.manifest());
    assert_eq!(t.thin_source(), Some(&source()));
    assert!(t.chunk_count() > 0);
    match t.verify_chunk(0) {
        Err(Error::NotLocal { chunk: 0 }) => {}
        r => panic!("expected NotLocal, got {r:?}"),
    }

    // With one: every file reads as from the whole package, each chunk asked for.
    let asked = Arc::new(Mutex::new(Vec::new()));
    let heaps = FromFile(whole.clone(), asked.clone());
    let t = Archive::from_file_with(File::open(&thin).unwrap(), &thin, Some(&trusted()), &heaps)
        .unwrap();
    let mut n = 0;
    for w in a.walk() {
        if w.attr.kind != format::archive::Kind::File {
            continue;
        }
        let mut x = vec![0; w.attr.size as usize];
        let mut y = vec![0; w.attr.size as usize];
        a.read_at(w.entry, 0, &mut x).unwrap();
        let e = t.lookup_path(&w.path).unwrap().unwrap();
        t.read_at(e, 0, &mut y).unwrap();
        assert_eq!(x, y, "{}", String::from_utf8_lossy(&w.path));
        n += 1;
    }
    assert!(n > 0);
    assert!(!asked.lock().unwrap().is_empty());
}

#[test]
fn older_readers_refuse_a_thin_package_at_the_magic() {
    let dir = scratch();
    let whole = dir.path().join("whole.hpkg");
    write_archive(&fixture_tree(false), &BuildOptions::default(), &whole);
    let bytes = Archive::open(&whole)
        .unwrap()
        .thin_bytes(&source())
        .unwrap();
    // A 1.x reader parses the header at offset 0: the magic differs, so it is refused
    // before any field is read.
    assert!(matches!(
        Header::parse(&bytes[..128], bytes.len() as u64),
        Err(Error::BadMagic)
    ));
}

#[test]
fn damaged_thin_packages_are_refused() {
    let dir = scratch();
    let whole = dir.path().join("whole.hpkg");
    write_archive(&fixture_tree(false), &BuildOptions::default(), &whole);
    let a = Archive::open(&whole).unwrap();
    let good = a.thin_bytes(&source()).unwrap();
    let p = dir.path().join("bad.hpkg");
    // A flipped bit anywhere (thin header, metadata, trailer, source record) and every
    // cut: an error, never a panic, never a package with another id.
    let step = (good.len() / 97).max(1);
    for at in (0..good.len()).step_by(step) {
        let mut b = good.clone();
        b[at] ^= 0x10;
        std::fs::write(&p, &b).unwrap();
        if let Ok(t) = Archive::open(&p) {
            // Only the unsigned source record may change and still open.
            assert_eq!(t.id(), a.id(), "flip at {at}");
            assert!(at >= good.len() - serde_json::to_vec(&source()).unwrap().len());
        }
        std::fs::write(&p, &good[..at]).unwrap();
        assert!(Archive::open(&p).is_err(), "cut at {at}");
    }
    // A source that escapes or is not an address.
    for s in [
        Source {
            mirrors: vec![],
            object: "x".into(),
            ..Source::default()
        },
        Source {
            mirrors: vec!["http://a b/".into()],
            object: "x".into(),
            ..Source::default()
        },
        Source {
            mirrors: vec!["http://a/".into()],
            object: "../x".into(),
            ..Source::default()
        },
    ] {
        assert!(a.thin_bytes(&s).is_err());
    }
}
