//! `pkgtool status`: a layer's active generation, its packages, what packages/ holds that is not active, and its boot record.

use crate::cli::LayerArgs;
use clap::Args;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use pkgset::owner::AsOwner;
use pkgset::reconcile;

use crate::cmd::set::*;
use crate::output::Out;
use crate::output::{BootJson, DamagedJson, InactiveJson, PendingJson, StatusJson, WaitingJson};

/// `pkgtool status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// The boot assessment record of a layer, if it has one.
fn boot_json(paths: &pkgset::generation::LayerPaths) -> Option<BootJson> {
    if !pkgset::boot::boot_file(paths).exists() {
        return None;
    }
    let (b, warning) = pkgset::boot::BootState::read(paths);
    Some(BootJson {
        booted: b.booted.map(|(n, _)| n),
        how: b.booted.map(|(_, h)| h.word().to_string()),
        good: b.good.into_iter().collect(),
        bad: b.bad.into_iter().collect(),
        trying: b.trying.map(|t| t.0),
        tries_left: b.trying.map(|t| t.1),
        note: b.note,
        warning,
    })
}

pub fn status(a: StatusArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let loaded = stack.load_all(top, &mut op)?;
    let set = &loaded.sets[top];
    let list = loaded.lists[top].as_ref();
    let damaged = &loaded.damaged[top];
    let mut problems: Vec<String> = damaged
        .iter()
        .map(|d| format!("{} ({}) is damaged: {}", d.label, d.id, d.reason))
        .collect();
    if let Err(r) = pkgset::check(
        &stack.names()[..=top],
        &loaded.sets.iter().flatten().cloned().collect::<Vec<_>>(),
    ) {
        problems.extend(r.problems.iter().map(|p| p.to_string()));
    }
    let pending = if list.is_some() && damaged.is_empty() {
        let obs = reconcile::observe(
            &stack,
            top,
            &mut op,
            &Default::default(),
            std::time::SystemTime::now(),
        )?;
        let d = reconcile::decide(&stack.names(), &loaded.sets, top, &obs);
        (!d.plan.is_empty() || !d.waiting.is_empty()).then(|| PendingJson {
            reason: d.reason.clone(),
            added: d.plan.added.clone(),
            removed: d.plan.removed.clone(),
            waiting: d
                .waiting
                .iter()
                .map(|(f, why)| WaitingJson {
                    file: f.clone(),
                    reason: why.clone(),
                })
                .collect(),
        })
    } else {
        None
    };
    let (files, refused) = stack.scan(top, &mut op)?;
    let active_ids: HashSet<_> = set.iter().map(|c| c.id()).collect();
    let mut inactive = Vec::new();
    for c in files.iter().filter(|c| !active_ids.contains(&c.id())) {
        let same = set.iter().find(|s| s.manifest().name == c.manifest().name);
        let reason = match same {
            Some(s) if s.manifest().version > c.manifest().version => {
                format!("older than the active {}", s.label())
            }
            Some(s) => format!("not active ({} is)", s.label()),
            None => "not active".to_string(),
        };
        inactive.push(InactiveJson {
            file: c.path.display().to_string(),
            package: Some(c.label()),
            reason,
        });
    }
    for r in &refused {
        inactive.push(InactiveJson {
            file: r.path.display().to_string(),
            package: None,
            reason: format!("refused: {}", r.reason),
        });
    }
    inactive.sort_by(|a, b| a.file.cmp(&b.file));
    let spec = &stack.layers[top];
    let meta = |k: &str| list.and_then(|l| l.meta.get(k).cloned());
    let st = StatusJson {
        layer: spec.name.clone(),
        dir: spec.paths.dir.display().to_string(),
        generation: list.and_then(|l| l.generation()),
        time: meta("time"),
        reason: meta("reason"),
        active: set.iter().map(pkg_json).collect(),
        inactive,
        ok: problems.is_empty(),
        problems,
        damaged: damaged
            .iter()
            .map(|d| DamagedJson {
                package: d.label.clone(),
                id: d.id.to_string(),
                kind: crate::output::unusable_kind(&d.reason),
                reason: d.reason.to_string(),
            })
            .collect(),
        pending,
        boot: boot_json(&spec.paths),
    };
    if a.layer.json {
        out.json(&st)?;
    } else {
        match (st.generation, list) {
            (Some(n), _) => writeln!(
                out,
                "layer {} ({}): generation {n}, {}, {}",
                st.layer,
                st.dir,
                st.time.as_deref().unwrap_or("?"),
                st.reason.as_deref().unwrap_or("?")
            )?,
            (None, Some(_)) => writeln!(
                out,
                "layer {} ({}): active.list written by hand (no generation)",
                st.layer, st.dir
            )?,
            (None, None) => writeln!(
                out,
                "layer {} ({}): no generation yet; the first one would be:",
                st.layer, st.dir
            )?,
        }
        if let Some(b) = &st.boot {
            let nums = |v: &[u64]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
                }
            };
            let booted = match (b.booted, &b.how) {
                (Some(n), Some(h)) => format!("generation {n} ({h})"),
                _ => "nothing yet".to_string(),
            };
            let trial = match (b.trying, b.tries_left) {
                (Some(n), Some(left)) => format!("; on trial: {n}, {left} tries left"),
                _ => String::new(),
            };
            writeln!(
                out,
                "boot: booted {booted}; good: {}; bad: {}{trial}",
                nums(&b.good),
                nums(&b.bad)
            )?;
            for n in b.note.iter().chain(&b.warning) {
                writeln!(out, "boot: {n}")?;
            }
        }
        writeln!(out, "active ({}):", set.len() + st.damaged.len())?;
        for c in set {
            writeln!(out, "  {:<40} {}", c.label(), short(c))?;
        }
        for d in &st.damaged {
            writeln!(
                out,
                "  {:<40} {}  DAMAGED: {}",
                d.package,
                &d.id[..16],
                d.reason
            )?;
        }
        if let Some(p) = &st.pending {
            let mut parts: Vec<String> = p.added.iter().map(|a| format!("+{a}")).collect();
            parts.extend(p.removed.iter().map(|r| format!("-{r}")));
            if !parts.is_empty() {
                writeln!(out, "pending ({}): {}", p.reason, parts.join(" "))?;
            }
            for w in &p.waiting {
                writeln!(out, "waiting: packages/{}: {}", w.file, w.reason)?;
            }
        }
        if !st.inactive.is_empty() {
            writeln!(out, "inactive in packages/ ({}):", st.inactive.len())?;
            for i in &st.inactive {
                let name = Path::new(&i.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                writeln!(out, "  {name:<40} {}", i.reason)?;
            }
        }
        if st.ok {
            writeln!(out, "set: ok")?;
        } else {
            for p in &st.problems {
                writeln!(out, "set: BROKEN: {p}")?;
            }
        }
    }
    Ok(if st.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------------------------------
