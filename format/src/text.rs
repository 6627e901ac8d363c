//! Names and paths for messages: the one escaping every binary uses, so a name prints the
//! same in `pkgtool list`, a graft's error and a daemon's log.

/// A path or name for display: control characters and backslash escaped (`\n`, `\t`, `\\`,
/// `\ooo`); invalid UTF-8 bytes as `\ooo`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => {
                    let mut b = [0; 4];
                    for x in c.encode_utf8(&mut b).bytes() {
                        s.push_str(&format!("\\{x:03o}"));
                    }
                }
                c => s.push(c),
            }
        }
        for x in chunk.invalid() {
            s.push_str(&format!("\\{x:03o}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_backslashes_and_bad_bytes_are_escaped() {
        assert_eq!(escape(b"a b/c"), "a b/c");
        assert_eq!(escape(b"new\nline\ttab\\"), "new\\nline\\ttab\\\\");
        assert_eq!(escape(b"bell\x07"), "bell\\007");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\377\\376");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }
}
