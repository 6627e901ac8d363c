//! `pkgtool info PKG [--json]`.

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use format::archive::Kind;

use crate::output::InfoJson;
use crate::output::{human_size, Out};

/// `pkgtool info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The package.
    pub package: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let ar = super::open(&a.package)?;
    let h = ar.header();
    let (mut files, mut dirs, mut symlinks, mut names_of_files, mut content) =
        (0u64, 1u64, 0u64, 0u64, 0u64);
    let mut seen = vec![false; ar.entry_count() as usize];
    // Paths are not needed: `walk_entries` costs O(1) a step, whatever the depth.
    for (entry, attr) in ar.walk_entries() {
        match attr.kind {
            Kind::Dir => dirs += 1,
            Kind::Symlink | Kind::File => {
                names_of_files += 1;
                if !std::mem::replace(&mut seen[entry as usize], true) {
                    if attr.kind == Kind::File {
                        files += 1;
                        content += attr.size;
                    } else {
                        symlinks += 1;
                    }
                }
            }
        }
    }
    let info = InfoJson {
        path: a.package.display().to_string(),
        id: ar.id().to_string(),
        signer: ar.signer().map(|k| k.id().to_string()),
        format_version: format!("{}.{}", h.version_major, h.version_minor),
        manifest: ar.manifest(),
        entries: ar.entry_count(),
        names: ar.name_count(),
        files,
        directories: dirs,
        symlinks,
        hardlinks: names_of_files - files - symlinks,
        content_bytes: content,
        unique_bytes: h.content_size,
        heap_bytes: h.heap.len,
        file_bytes: h.file_size,
        ratio: if h.file_size > 0 {
            content as f64 / h.file_size as f64
        } else {
            0.0
        },
        compression: h.compression.to_string(),
        chunk_size: h.chunk_size,
        chunks: ar.chunk_count(),
        thin: ar.thin_source(),
    };
    if a.json {
        out.json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = info.manifest;
    writeln!(out, "package:     {} {}", m.name, m.version)?;
    if !m.summary.is_empty() {
        writeln!(out, "summary:     {}", m.summary)?;
    }
    writeln!(out, "id:          {}", info.id)?;
    match &info.signer {
        Some(k) => writeln!(
            out,
            "signed by:   key {k} (signature valid; trust is checked by `pkgtool verify`)"
        )?,
        None => writeln!(out, "signed by:   nobody (unsigned)")?,
    }
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    writeln!(
        out,
        "provides:    {}",
        list(m.provided().map(|(a, v)| format!("{a} {v}")).collect())
    )?;
    writeln!(
        out,
        "requires:    {}",
        list(
            m.requires
                .iter()
                .map(|r| format!("{} {}", r.api, r.version))
                .collect()
        )
    )?;
    if !m.uses.is_empty() {
        writeln!(out, "uses:        {}", m.uses.join(", "))?;
    }
    if !m.capabilities.is_empty() {
        writeln!(out, "capabilities: {}", m.capabilities.join(", "))?;
    }
    for s in &m.services {
        writeln!(out, "service:     {} -> {}", s.name, s.exec)?;
    }
    if let Some(os) = &m.os {
        writeln!(out, "os:          {os}")?;
    }
    if let Some(o) = &m.origin {
        let what = [o.name.as_str(), o.version.as_str(), o.arch.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(out, "grafted from: {} {what}", o.from)?;
        if !o.scripts.is_empty() {
            writeln!(out, "  scripts not run: {}", o.scripts.join(", "))?;
        }
        for u in &o.unmapped {
            writeln!(out, "  unmapped:  {}", crate::output::escape(u.as_bytes()))?;
        }
    }
    writeln!(
        out,
        "contents:    {} files, {} directories, {} symlinks, {} hard links",
        info.files, info.directories, info.symlinks, info.hardlinks
    )?;
    writeln!(
        out,
        "size:        {} of content, {} unique, {} stored, {} file (ratio {:.2})",
        human_size(info.content_bytes),
        human_size(info.unique_bytes),
        human_size(info.heap_bytes),
        human_size(info.file_bytes),
        info.ratio
    )?;
    writeln!(
        out,
        "compression: {}, {} chunks of {}",
        info.compression,
        info.chunks,
        human_size(info.chunk_size as u64)
    )?;
    writeln!(out, "format:      hpkg {}", info.format_version)?;
    if let Some(t) = info.thin {
        writeln!(
            out,
            "thin:        data at {} in {} (pkgtool fetch makes it whole)",
            t.object,
            t.mirrors.join(", ")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
