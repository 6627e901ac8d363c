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

/// Parses a size as the command lines take it: `1048576`, `512K`, `64M`, `1G` (also `KB`,
/// `KiB`, ...; all powers of 1024). The error is one line, naming the text.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => {
            let m: u64 = match t[i..].to_ascii_lowercase().as_str() {
                "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                other => {
                    return Err(format!(
                        "size `{s}`: unknown suffix `{other}` (use K, M, G or T)"
                    ))
                }
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size `{s}` is not a number"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Undoes the kernel's `\ooo` escapes of `/proc/self/mountinfo` (space, tab, newline and
/// backslash in mount points and sources); other text is kept as it is.
pub fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{escape, parse_size, unescape_octal};

    #[test]
    fn mountinfo_octal_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/run/my\040pkg"), b"/run/my pkg");
        assert_eq!(unescape_octal(r"a\134b\011"), b"a\\b\t");
        assert_eq!(unescape_octal(r"plain\08"), b"plain\\08");
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_the_rest_in_one_line() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size(" 2g "), Ok(2 << 30));
        assert_eq!(
            parse_size("3X"),
            Err("size `3X`: unknown suffix `x` (use K, M, G or T)".into())
        );
        assert_eq!(parse_size("M"), Err("size `M` is not a number".into()));
        assert_eq!(
            parse_size("99999999999T"),
            Err("size `99999999999T` is too large".into())
        );
    }

    #[test]
    fn control_characters_backslashes_and_bad_bytes_are_escaped() {
        assert_eq!(escape(b"a b/c"), "a b/c");
        assert_eq!(escape(b"new\nline\ttab\\"), "new\\nline\\ttab\\\\");
        assert_eq!(escape(b"bell\x07"), "bell\\007");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\377\\376");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }
}
