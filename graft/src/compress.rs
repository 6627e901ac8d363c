//! The compressions of `.deb` members and tarballs: gzip, xz, legacy lzma, zstd, bzip2
//! and none, all decoded in-process (no external programs).

use std::io::{self, Read};

/// A compression a tar stream may be wrapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Plain tar.
    None,
    /// gzip (`.gz`), also several concatenated members.
    Gzip,
    /// xz (`.xz`), also several concatenated streams.
    Xz,
    /// The legacy `.lzma` format (LZMA_Alone).
    Lzma,
    /// zstd (`.zst`), also several frames.
    Zstd,
    /// bzip2 (`.bz2`), also several concatenated streams.
    Bzip2,
}

/// The suffixes dpkg knows for `control.tar*` and `data.tar*`, for messages.
pub const DEB_SUFFIXES: &str = "none, .gz, .xz, .zst, .bz2 or .lzma";

impl Codec {
    /// The codec of a `.deb` member called `<base><suffix>` (`data.tar.xz`): `Ok(None)` if
    /// the member is not `<base>*` at all, an error naming the suffix if it is unknown.
    pub fn of_member(member: &str, base: &str) -> Result<Option<Codec>, String> {
        let Some(suffix) = member.strip_prefix(base) else {
            return Ok(None);
        };
        let codec = match suffix {
            "" => Codec::None,
            ".gz" => Codec::Gzip,
            ".xz" => Codec::Xz,
            ".lzma" => Codec::Lzma,
            ".zst" => Codec::Zstd,
            ".bz2" => Codec::Bzip2,
            _ if suffix.starts_with('.') => {
                return Err(format!(
                    "{member}: unknown compression {suffix:?} (dpkg knows {DEB_SUFFIXES})"
                ))
            }
            _ => return Ok(None),
        };
        Ok(Some(codec))
    }

    /// The codec named by a tarball's file name (`x.tar.gz`, `x.tgz`, `x.tar`), if any.
    pub fn of_file_name(name: &str) -> Option<Codec> {
        let n = name.to_ascii_lowercase();
        let table: [(&[&str], Codec); 6] = [
            (&[".tar"], Codec::None),
            (&[".tar.gz", ".tgz"], Codec::Gzip),
            (&[".tar.xz", ".txz"], Codec::Xz),
            (&[".tar.lzma", ".tlz"], Codec::Lzma),
            (&[".tar.zst", ".tar.zstd", ".tzst"], Codec::Zstd),
            (&[".tar.bz2", ".tbz2", ".tbz"], Codec::Bzip2),
        ];
        table
            .iter()
            .find(|(sfx, _)| sfx.iter().any(|s| n.ends_with(s)))
            .map(|(_, c)| *c)
    }

    /// The codec whose magic number starts `head` ([`Codec::None`] for a plain tar: its
    /// `ustar` magic at offset 257); `None` for unknown data.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        let codec = if head.starts_with(&[0x1f, 0x8b]) {
            Codec::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Codec::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else if head.starts_with(b"BZh") {
            Codec::Bzip2
        } else if head.len() > 262 && &head[257..262] == b"ustar" {
            Codec::None
        } else if head.len() >= 13 && head[0] == 0x5d && head[1..5] == [0, 0, 0x80, 0]
            || head.len() >= 13 && head[0] == 0x5d && head[5..13] == [0xff; 8]
        {
            Codec::Lzma
        } else {
            return None;
        };
        Some(codec)
    }

    /// The usual name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "uncompressed",
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Lzma => "lzma",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
        }
    }

    /// A reader of the decompressed bytes of `r`.
    pub fn reader<'a, R: Read + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::None => Box::new(r),
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
            Codec::Lzma => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                    .map_err(io::Error::other)?;
                Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
            }
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
            Codec::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        })
    }
}

/// A reader that counts the bytes read through it.
pub struct Counting<R> {
    inner: R,
    /// Bytes read so far.
    pub count: u64,
}

impl<R> Counting<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Counting { inner, count: 0 }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all_codecs(data: &[u8]) -> Vec<(Codec, Vec<u8>)> {
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let lzma = {
            let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
            let s = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
            let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(data, 1).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        vec![
            (Codec::Gzip, gz),
            (Codec::Xz, xz),
            (Codec::Lzma, lzma),
            (Codec::Zstd, zst),
            (Codec::Bzip2, bz),
        ]
    }

    #[test]
    fn decodes_and_sniffs_every_codec() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (codec, packed) in all_codecs(&data) {
            assert_eq!(Codec::sniff(&packed), Some(codec), "{}", codec.name());
            let mut out = Vec::new();
            codec
                .reader(&packed[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{}", codec.name());
            // Truncated data is an error, never a short success.
            let mut short = Vec::new();
            let r = codec
                .reader(&packed[..packed.len() / 2])
                .unwrap()
                .read_to_end(&mut short);
            assert!(r.is_err(), "{}: truncated data decoded", codec.name());
        }
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(Codec::sniff(&tar), Some(Codec::None));
        assert_eq!(Codec::sniff(b"BZ3v1"), None);
        assert_eq!(Codec::sniff(b""), None);
    }

    #[test]
    fn names_map_to_codecs() {
        assert_eq!(
            Codec::of_member("data.tar.xz", "data.tar"),
            Ok(Some(Codec::Xz))
        );
        assert_eq!(
            Codec::of_member("data.tar", "data.tar"),
            Ok(Some(Codec::None))
        );
        assert_eq!(
            Codec::of_member("control.tar.zst", "control.tar"),
            Ok(Some(Codec::Zstd))
        );
        assert_eq!(Codec::of_member("debian-binary", "data.tar"), Ok(None));
        assert_eq!(Codec::of_member("data.tarx", "data.tar"), Ok(None));
        let e = Codec::of_member("data.tar.bz3", "data.tar").unwrap_err();
        assert!(e.contains("unknown compression \".bz3\""), "{e}");
        assert_eq!(Codec::of_file_name("x-1.0.tar.gz"), Some(Codec::Gzip));
        assert_eq!(Codec::of_file_name("X.TGZ"), Some(Codec::Gzip));
        assert_eq!(Codec::of_file_name("x.tar.zst"), Some(Codec::Zstd));
        assert_eq!(Codec::of_file_name("x.tar"), Some(Codec::None));
        assert_eq!(Codec::of_file_name("x.tar.bz3"), None);
        assert_eq!(Codec::of_file_name("x.zip"), None);
    }
}
