//! Writes the seed corpus of the `open_read` fuzz target: the seed archives of
//! `format_fuzz::seeds()`, and field-patch inputs over each of them.
//!
//! Usage: `cargo run --example make_corpus -- DIR` (DIR is created if missing).

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (i, seed) in format_fuzz::seeds().iter().enumerate() {
        let out = dir.join(format!("{}.hpkg", seed.name));
        let size = format_fuzz::build(seed, &out);
        println!("{}: {size} bytes", out.display());
        // Field-patch mode: for archive i, one input per record type and field, each
        // setting that field of record 1 to a boundary value. The fuzzer then starts one
        // mutation (of the record, the value or the mode bits) away from any field patch.
        for (kind, &fields) in format_fuzz::field_counts().iter().enumerate() {
            for field in 0..fields {
                let value = (kind * 13 + field * 5 + i) as u64;
                let mut patch = vec![format_fuzz::PATCH_MODE, i as u8];
                patch.extend_from_slice(&[kind as u8 | 0x40, field as u8, 1, 0]);
                patch.extend_from_slice(&value.to_le_bytes());
                let name = format!("patch-{}-{kind}-{field}", seed.name);
                std::fs::write(dir.join(name), patch).expect("write patch seed");
            }
        }
    }
}
