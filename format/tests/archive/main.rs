//! Integration tests of the `.hpkg` archive: one test binary (it links once), with modules
//! by theme. Helpers live in `../common/mod.rs`.

#[path = "../common/mod.rs"]
mod common;

mod corruption;
mod hostile;
mod large_file;
mod limits;
mod props;
mod reproducible;
mod roundtrip;
mod thin;
mod trust;
