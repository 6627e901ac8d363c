//! packagefs: layers of signed package archives mounted as one read-only union view.
//!
//! ```text
//! layers::load(layer dirs, trusted keys) ─► Vec<Arc<Package>>
//! view::View::build(layers, packages)    ─► View (immutable; one per generation)
//! fuse::PackageFs { Arc<View>, ChunkCache }: the thin FUSE adapter (main.rs mounts it)
//! ```
//!
//! The view is tested without a mount (`view.rs` tests); the adapter is tested through real
//! mounts (`tests/`).
#![deny(missing_docs)]

pub mod cache;
pub mod fuse;
pub mod layers;
pub mod view;
