//! packagefs package sets: the one library that `pkgtool` and the `packagefs` daemon both
//! use to decide what may be active, so they can never disagree.
//!
//! ```text
//! available packages ──resolve(wants)──► chosen set ──check()──► Graph | Refused{problems}
//! ```
//!
//! - [`set::check`]: the invariant of a fixed set (requirements by API contract from the
//!   same or a lower layer, `uses` from the system layer, acyclic, one version per name per
//!   layer, no path conflicts within a layer);
//! - [`resolve::resolve`]: choosing versions with PubGrub, newest first, explaining failures;
//! - [`stack::plan`]: the effect of a change (install, remove, a file gone, a list replaced,
//!   the first generation) on a stack of layers, refused whole or applied whole;
//! - [`reconcile`]: what the files of `packages/` mean for the set (drops, updates in
//!   place, deletions), decided by the same rules for the daemon and pkgtool;
//! - [`generation`]: `active.list`, numbered generations, the pool's own copies and the
//!   record of accounted-for files, written crash-safely;
//! - [`services`]: the services a change of a set stops and starts, in dependency order;
//! - [`capabilities`]: what those services may do, and the policy of who may ask for what;
//! - [`update`]: one update as a transaction: stop, switch, start, check health, undo;
//! - [`journal`]: the audit trail, one record for every change of a layer's set;
//! - [`boot`]: the generation a machine boots (`packagefs.generation=N`, a fallback to
//!   what opens whole), boot assessment (`state/boot`: tries, bless, the last good one
//!   made active) and the boot loader entries of a layer.
#![deny(missing_docs)]

pub mod boot;
pub mod capabilities;
pub mod generation;
pub mod graph;
pub mod journal;
pub mod owner;
pub mod reconcile;
pub mod resolve;
pub mod services;
pub mod set;
pub mod stack;
pub mod update;

pub use resolve::{resolve, Want};
pub use set::{check, Candidate, Graph, Problem, Refused};
pub use stack::{
    plan, Change, LayerSpec, Loaded, OpenError, Opener, Plan, Skip, Skipped, Stack, Unusable,
};

#[cfg(test)]
mod tests;
