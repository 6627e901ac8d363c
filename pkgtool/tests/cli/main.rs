//! End-to-end tests of the `pkgtool` binary: every module runs the real executable
//! (`CARGO_BIN_EXE_pkgtool`) on real trees. One test binary, so it links once; the big
//! archives (/usr/share/doc, /usr/include, the odd tree) are built once per run and shared
//! (`util::{doc, include, odd}`).

mod bigfile;
mod boot;
mod build;
mod corrupt;
mod debian;
mod delta;
mod errors;
mod extract;
mod graft;
mod history;
mod info;
mod keygen;
mod limits;
mod pipe;
mod repro;
mod roundtrip;
mod services;
mod sets;
mod trust;
mod usage;
mod util;
mod verify;
