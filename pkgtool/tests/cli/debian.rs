//! Real Debian packages for the graft tests (fetched with `apt-get download` at test time
//! and cached, by the e2e harness's `debs`, shared with the e2e suite), and hostile `.deb`
//! files made in the test.

use std::io::Write;

pub use e2e::debian::debs;

// ---------------------------------------------------------------------------------------
// Hand-made .deb files

/// One tar entry: path (written raw, so `..` and `/` are possible), kind, data, link.
pub type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

/// A tar archive of `entries` (mode 0644 or 0755, a fixed mtime).
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        let exec = *kind == tar::EntryType::Directory || path.contains("bin/");
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if !link.is_empty() {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        t.append(&h, *data).unwrap();
    }
    t.into_inner().unwrap()
}

/// xz-compresses `data`.
pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// gzip-compresses `data`.
pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zstd-compresses `data`.
pub fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// bzip2-compresses `data`.
pub fn bz2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An ar archive of (member name, bytes).
pub fn ar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = ar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        h.set_mode(0o644);
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The control member (control.tar.xz) for `control` text plus the named scripts.
pub fn control_tar(control: &str, scripts: &[&str]) -> Vec<u8> {
    let mut entries: Vec<Entry> = vec![
        ("./", tar::EntryType::Directory, b"", ""),
        ("./control", tar::EntryType::Regular, control.as_bytes(), ""),
    ];
    let paths: Vec<String> = scripts.iter().map(|s| format!("./{s}")).collect();
    for p in &paths {
        entries.push((p, tar::EntryType::Regular, b"#!/bin/sh\nexit 0\n", ""));
    }
    xz(&tar_of(&entries))
}

/// A minimal control file.
pub fn control(name: &str, version: &str, extra: &str) -> String {
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Description: test package {name}\n a test\n"
    )
}

/// A `.deb` of `control` and the data tar `data` (already compressed) as `data_member`.
pub fn deb(control: &str, data_member: &str, data: Vec<u8>) -> Vec<u8> {
    ar_of(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.xz", control_tar(control, &[])),
        (data_member, data),
    ])
}

/// A well-formed `.deb` with a program, a library symlink and a document.
pub fn good_deb(name: &str) -> Vec<u8> {
    let bin = format!("./usr/bin/{name}");
    let data = tar_of(&[
        ("./", tar::EntryType::Directory, b"", ""),
        ("./usr/", tar::EntryType::Directory, b"", ""),
        ("./usr/bin/", tar::EntryType::Directory, b"", ""),
        (&bin, tar::EntryType::Regular, b"#!/bin/sh\necho hi\n", ""),
        (
            "./usr/share/doc/x/README",
            tar::EntryType::Regular,
            b"doc\n",
            "",
        ),
    ]);
    deb(&control(name, "1.0-1", ""), "data.tar.xz", xz(&data))
}
