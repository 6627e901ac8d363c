//! packagefs: layers of signed package archives mounted as one read-only union view.
//!
//! ```text
//! live::Live::start(stack, opener)  ─► the active sets (pkgset) ─► View (one per generation)
//! watch::Watcher (inotify)        ─► live::Event ─► Live::apply ─► next View | refused
//! view::diff(old, new)            ─► the kernel cache entries to invalidate
//! view::ViewSlot                  ─► the current View, swapped whole, loaded without a lock
//! read::Reader                    ─► a READ: spans ─► ChunkCache ─► bytes, with read-ahead
//! fuse::PackageFs { ViewSlot, Reader, Lookups }: the thin FUSE adapter (main.rs mounts it);
//!                                    uring: the same requests over FUSE's io_uring transport
//! ```
//!
//! The view is tested without a mount (`view.rs` tests); the adapter is tested through real
//! mounts (`tests/`).
#![deny(missing_docs)]

pub mod cache;
pub mod exec_cache;
pub mod fuse;
pub mod layers;
pub mod live;
pub mod lookups;
pub mod passthrough;
pub mod read;
pub mod uring;
pub mod view;
pub mod watch;
