//! What a package's services may do, and the policy of who may ask for what (issue 13;
//! the Orbital OS seed, section 8: capabilities granted at service start).
//!
//! A manifest's `capabilities` name what its services need (`net.listen`, `net.bind`,
//! `sys.time`, ...). Each name maps to Linux capabilities and sandbox settings
//! ([`TABLE`]); every service a package declares gets a systemd drop-in ([`dropin`]) that
//! first *resets* the bounding and ambient sets and the address families and then grants
//! exactly what the table says, with a default hardening on top (`NoNewPrivileges=`,
//! `ProtectSystem=strict`, ...). A drop-in is read after the unit, so a unit that asks for
//! more than its package declared does not get it.
//!
//! The policy (`/etc/packagefs/policy`, see [`Policy::parse`]) says which capabilities
//! packages signed by each trusted key may ask for. A package asking for more is refused
//! when it is opened ([`crate::Opener`]), so the same rule holds for `pkgtool install`,
//! a file dropped into `packages/` and a boot. A key the policy restricts may also ship
//! nothing that would escape the drop-in: its systemd files must be its declared units
//! (and `*.wants/` or `*.requires/` links to them), its units must not run as root or
//! with a `+`/`!` privileged command, and it ships no setuid or setgid file.
//! Without a policy file every trusted key is unrestricted.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use format::archive::{Archive, Kind};
use format::keys::TrustedKeys;

/// One capability a manifest may name, and what it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The name in the manifest.
    pub name: &'static str,
    /// The Linux capabilities it adds to the bounding and ambient sets.
    pub caps: &'static [&'static str],
    /// The address families it allows besides `AF_UNIX`.
    pub families: &'static [&'static str],
    /// The hardening settings it turns off (each is `yes` by default).
    pub relaxes: &'static [&'static str],
    /// What it is for, in a few words.
    pub what: &'static str,
}

const INET: &[&str] = &["AF_INET", "AF_INET6"];

/// Every capability packagefs can grant. docs/services.md has this table.
pub const TABLE: &[Grant] = &[
    Grant {
        name: "net.connect",
        caps: &[],
        families: INET,
        relaxes: &[],
        what: "open IPv4/IPv6 connections",
    },
    Grant {
        name: "net.listen",
        caps: &[],
        families: INET,
        relaxes: &[],
        what: "listen on IPv4/IPv6 ports from 1024",
    },
    Grant {
        name: "net.bind",
        caps: &["CAP_NET_BIND_SERVICE"],
        families: INET,
        relaxes: &[],
        what: "listen on ports below 1024",
    },
    Grant {
        name: "net.configure",
        caps: &["CAP_NET_ADMIN"],
        families: &["AF_INET", "AF_INET6", "AF_NETLINK"],
        relaxes: &[],
        what: "configure interfaces, routes and firewalls",
    },
    Grant {
        name: "net.raw",
        caps: &["CAP_NET_RAW"],
        families: &["AF_INET", "AF_INET6", "AF_PACKET"],
        relaxes: &[],
        what: "raw and packet sockets (ping, DHCP)",
    },
    Grant {
        name: "fs.user-documents",
        caps: &[],
        families: &[],
        relaxes: &["ProtectHome"],
        what: "read and write users' home directories",
    },
    Grant {
        name: "fs.owner",
        caps: &["CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"],
        families: &[],
        relaxes: &[],
        what: "change owners and modes of any file",
    },
    Grant {
        name: "fs.read-all",
        caps: &["CAP_DAC_READ_SEARCH"],
        families: &[],
        relaxes: &[],
        what: "read any file (backups, indexers)",
    },
    Grant {
        name: "proc.kill",
        caps: &["CAP_KILL"],
        families: &[],
        relaxes: &[],
        what: "signal other users' processes",
    },
    Grant {
        name: "proc.setuid",
        caps: &["CAP_SETUID", "CAP_SETGID"],
        families: &[],
        relaxes: &[],
        what: "change user and group ids (login services)",
    },
    Grant {
        name: "ipc.lock",
        caps: &["CAP_IPC_LOCK"],
        families: &[],
        relaxes: &[],
        what: "lock memory",
    },
    Grant {
        name: "sys.nice",
        caps: &["CAP_SYS_NICE"],
        families: &[],
        relaxes: &["RestrictRealtime"],
        what: "raise priorities, real-time scheduling",
    },
    Grant {
        name: "sys.resource",
        caps: &["CAP_SYS_RESOURCE"],
        families: &[],
        relaxes: &[],
        what: "exceed resource limits",
    },
    Grant {
        name: "sys.time",
        caps: &["CAP_SYS_TIME"],
        families: &[],
        relaxes: &["ProtectClock"],
        what: "set the system clock",
    },
    Grant {
        name: "sys.ptrace",
        caps: &["CAP_SYS_PTRACE"],
        families: &[],
        relaxes: &[],
        what: "trace other processes (debuggers)",
    },
    Grant {
        name: "sys.module",
        caps: &["CAP_SYS_MODULE"],
        families: &[],
        relaxes: &["ProtectKernelModules"],
        what: "load kernel modules",
    },
    Grant {
        name: "sys.admin",
        caps: &["CAP_SYS_ADMIN"],
        families: &["AF_INET", "AF_INET6", "AF_NETLINK"],
        relaxes: &[
            "ProtectKernelTunables",
            "ProtectControlGroups",
            "RestrictNamespaces",
        ],
        what: "mount, namespaces, most of the system (near root)",
    },
    Grant {
        name: "system.boot",
        caps: &["CAP_SYS_BOOT"],
        families: &[],
        relaxes: &[],
        what: "reboot the machine",
    },
    Grant {
        name: "log.kernel",
        caps: &["CAP_SYSLOG"],
        families: &[],
        relaxes: &["ProtectKernelLogs"],
        what: "read the kernel log",
    },
    Grant {
        name: "audit.write",
        caps: &["CAP_AUDIT_WRITE"],
        families: &["AF_NETLINK"],
        relaxes: &[],
        what: "write audit records (login services)",
    },
    Grant {
        name: "notify.desktop",
        caps: &[],
        families: &[],
        relaxes: &[],
        what: "desktop notifications (granted by the session bus, not by systemd)",
    },
];

/// The hardening every declared service gets, each `yes` unless a capability relaxes it.
pub const HARDENING: &[&str] = &[
    "NoNewPrivileges",
    "PrivateTmp",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "LockPersonality",
];

/// The grant of a capability name.
pub fn lookup(name: &str) -> Option<&'static Grant> {
    TABLE.iter().find(|g| g.name == name)
}

/// The Linux capabilities `capabilities` grant, sorted, without duplicates.
pub fn linux_caps(capabilities: &[String]) -> Vec<&'static str> {
    let set: BTreeSet<&'static str> = capabilities
        .iter()
        .filter_map(|c| lookup(c))
        .flat_map(|g| g.caps.iter().copied())
        .collect();
    set.into_iter().collect()
}

/// The file name of the drop-in packagefs writes for each declared unit (`UNIT.d/NAME`):
/// late in the order, so it is read after the drop-ins a package might ship.
pub const DROPIN_NAME: &str = "zz-packagefs-capabilities.conf";

/// The drop-in for the units of package `label` declaring `capabilities`.
pub fn dropin(label: &str, capabilities: &[String]) -> String {
    let grants: Vec<&Grant> = capabilities.iter().filter_map(|c| lookup(c)).collect();
    let caps = linux_caps(capabilities);
    let mut families: BTreeSet<&str> = BTreeSet::from(["AF_UNIX"]);
    families.extend(grants.iter().flat_map(|g| g.families.iter().copied()));
    let relaxed: BTreeSet<&str> = grants
        .iter()
        .flat_map(|g| g.relaxes.iter().copied())
        .collect();
    let shown = if capabilities.is_empty() {
        "none".to_string()
    } else {
        capabilities.join(", ")
    };
    let mut s = format!(
        "# Generated by packagefs for {label}: capabilities {shown}.\n\
         # Exactly what the package declared (docs/services.md); do not edit.\n\
         [Service]\n"
    );
    s.push_str("CapabilityBoundingSet=\n");
    s.push_str("AmbientCapabilities=\n");
    if !caps.is_empty() {
        s.push_str(&format!("CapabilityBoundingSet={}\n", caps.join(" ")));
        s.push_str(&format!("AmbientCapabilities={}\n", caps.join(" ")));
    }
    for h in HARDENING {
        let v = if relaxed.contains(h) { "no" } else { "yes" };
        s.push_str(&format!("{h}={v}\n"));
    }
    s.push_str("ProtectSystem=strict\n");
    s.push_str("RestrictAddressFamilies=\n");
    s.push_str(&format!(
        "RestrictAddressFamilies={}\n",
        families.into_iter().collect::<Vec<_>>().join(" ")
    ));
    s
}

/// What a key may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Anything: any capability, any unit, setuid files (the system's own vendor).
    All,
    /// These capabilities, and the restrictions of a restricted key.
    Some(BTreeSet<String>),
}

/// `/etc/packagefs/policy`: which capabilities packages signed by each key may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// `(key name or "*", allowed)`, in file order; none: every key is unrestricted.
    rules: Vec<(String, Allowed)>,
    /// Where it was read from (for messages), if from a file.
    source: Option<PathBuf>,
}

/// The default policy file.
pub const DEFAULT_PATH: &str = "/etc/packagefs/policy";

/// The largest policy file read.
const MAX_POLICY: u64 = 1 << 20;

impl Policy {
    /// No policy: every trusted key is unrestricted.
    pub fn unrestricted() -> Policy {
        Policy::default()
    }

    /// True if no rule restricts any key.
    pub fn is_unrestricted(&self) -> bool {
        self.rules.is_empty()
    }

    /// Reads a policy file; a missing file is [`Policy::unrestricted`]. Errors are one
    /// line, naming the file (and the line).
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = match crate::generation::read_state_file(path, MAX_POLICY) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Policy::unrestricted()),
            Err(e) => return Err(format!("policy {}: {e}", path.display())),
        };
        let mut p = Policy::parse(&text).map_err(|e| format!("policy {}: {e}", path.display()))?;
        p.source = Some(path.to_owned());
        Ok(p)
    }

    /// Parses the policy's text: one rule a line, `KEY CAPABILITY...`, where KEY is a
    /// trusted key's name (as in its `.pub` file) or `*` for every key not named, and a
    /// capability is a name of [`TABLE`] or `*` (unrestricted). A key with no rule, when
    /// there is no `*` rule, may ask for nothing. `#` starts a comment.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut rules: Vec<(String, Allowed)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(key) = words.next() else { continue };
            if rules.iter().any(|(k, _)| k == key) {
                return Err(format!("line {}: a second rule for key {key}", i + 1));
            }
            let mut set = BTreeSet::new();
            let mut all = false;
            for w in words {
                if w == "*" {
                    all = true;
                } else if lookup(w).is_some() {
                    set.insert(w.to_string());
                } else {
                    return Err(format!(
                        "line {}: unknown capability {w:?} (known: {})",
                        i + 1,
                        TABLE.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            rules.push((
                key.to_string(),
                if all {
                    Allowed::All
                } else {
                    Allowed::Some(set)
                },
            ));
        }
        if rules.is_empty() {
            // An empty policy file is a policy that allows nothing to anyone.
            rules.push(("*".into(), Allowed::Some(BTreeSet::new())));
        }
        Ok(Policy {
            rules,
            source: None,
        })
    }

    /// What packages signed by key `name` may ask for.
    pub fn allowed(&self, name: &str) -> Allowed {
        if self.rules.is_empty() {
            return Allowed::All;
        }
        self.rules
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| self.rules.iter().find(|(k, _)| k == "*"))
            .map(|(_, a)| a.clone())
            .unwrap_or(Allowed::Some(BTreeSet::new()))
    }

    /// Checks a package against the policy (and the rules every package with services
    /// obeys): `Err` is the reason it is refused, in one line.
    pub fn check(&self, archive: &Archive, keys: &TrustedKeys) -> Result<(), String> {
        let m = archive.manifest();
        let has_services = !m.services.is_empty();
        if has_services {
            for c in &m.capabilities {
                if lookup(c).is_none() {
                    return Err(format!(
                        "capability {c:?} is not one packagefs can grant to its services \
                         (see docs/services.md)"
                    ));
                }
            }
            for (i, s) in m.services.iter().enumerate() {
                let path = s.unit_path();
                match unit_text(archive, &path) {
                    Ok(_) => {}
                    Err(e) => return Err(format!("services[{i}].unit: {path}: {e}")),
                }
            }
        }
        let key = archive
            .signer()
            .and_then(|k| keys.name(&k.id()))
            .unwrap_or("")
            .to_string();
        let allowed = match self.allowed(&key) {
            Allowed::All => return Ok(()),
            Allowed::Some(s) => s,
        };
        let shown_key = if key.is_empty() { "(unsigned)" } else { &key };
        let over: Vec<&String> = m
            .capabilities
            .iter()
            .filter(|c| !allowed.contains(*c))
            .collect();
        if !over.is_empty() {
            let names: Vec<&str> = over.iter().map(|s| s.as_str()).collect();
            return Err(format!(
                "it asks for capabilities {} that the policy{} does not allow packages \
                 signed by key {shown_key} (allowed: {})",
                names.join(", "),
                self.source
                    .as_ref()
                    .map(|p| format!(" {}", p.display()))
                    .unwrap_or_default(),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ));
        }
        restricted_contents(archive)
            .map_err(|e| format!("{e} (key {shown_key} is restricted by the policy)"))
    }
}

/// The text of the unit file at `path` in the package (a regular file of at most 64 KiB).
pub fn unit_text(archive: &Archive, path: &str) -> Result<String, String> {
    let e = archive
        .lookup_path(path.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("not in the package")?;
    let attr = archive.attr(e).map_err(|e| e.to_string())?;
    if attr.kind != Kind::File {
        return Err("not a regular file".into());
    }
    if attr.size > 64 << 10 {
        return Err(format!("{} bytes, more than 64 KiB", attr.size));
    }
    let mut buf = vec![0u8; attr.size as usize];
    let n = archive.read_at(e, 0, &mut buf).map_err(|e| e.to_string())?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_string())
}

/// Where systemd finds units and generators: a restricted key's package puts nothing there
/// but its declared units and links to them.
const SYSTEMD_DIRS: &[&str] = &[
    "lib/systemd/",
    "usr/lib/systemd/",
    "etc/systemd/",
    "usr/local/lib/systemd/",
    "run/systemd/",
    "etc/init.d/",
    "usr/lib/environment.d/",
    "etc/environment.d/",
];

/// The rules for a package of a restricted key: no setuid/setgid file, nothing for systemd
/// but its declared units (and wants/requires links to them), units that run as a user
/// other than root and without a privileged (`+`, `!`) command.
fn restricted_contents(archive: &Archive) -> Result<(), String> {
    let m = archive.manifest();
    let units: Vec<String> = m.services.iter().map(|s| s.unit_path()).collect();
    let names: Vec<String> = m.services.iter().map(|s| s.unit_name()).collect();
    for w in archive.walk() {
        let path = String::from_utf8_lossy(&w.path).into_owned();
        if w.attr.kind == Kind::File && w.attr.perm & 0o6000 != 0 {
            return Err(format!("{path} is setuid or setgid"));
        }
        if w.attr.kind == Kind::Dir || !SYSTEMD_DIRS.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        if units.contains(&path) {
            continue;
        }
        let file = path.rsplit('/').next().unwrap_or("");
        let parent = path.rsplit('/').nth(1).unwrap_or("");
        let link_to_own = w.attr.kind == Kind::Symlink
            && (parent.ends_with(".wants") || parent.ends_with(".requires"))
            && names.iter().any(|n| n == file);
        if !link_to_own {
            return Err(format!(
                "{path}: only the units its manifest declares may be shipped for systemd"
            ));
        }
    }
    for (i, s) in m.services.iter().enumerate() {
        let text = unit_text(archive, &s.unit_path())?;
        check_unit(&text).map_err(|e| format!("services[{i}] {}: {e}", s.unit_path()))?;
    }
    Ok(())
}

/// A restricted key's unit: a user other than root (`User=` or `DynamicUser=yes`), no
/// privileged command prefix, no `PermissionsStartOnly=`.
pub fn check_unit(text: &str) -> Result<(), String> {
    let mut user = None;
    let mut dynamic = false;
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!("line {}: continued lines are not accepted", i + 1));
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if section != "[Service]" {
            continue;
        }
        match k {
            "User" => user = Some(v.to_string()),
            "DynamicUser" => dynamic = matches!(v, "yes" | "true" | "1" | "on"),
            "PermissionsStartOnly" => {
                return Err(format!(
                    "line {}: PermissionsStartOnly= is not allowed",
                    i + 1
                ))
            }
            _ if k.starts_with("Exec") => {
                let prefix: String = v
                    .chars()
                    .take_while(|c| matches!(c, '@' | '-' | ':' | '+' | '!' | '|'))
                    .collect();
                if prefix.contains('+') || prefix.contains('!') {
                    return Err(format!(
                        "line {}: {k}= runs a command with full privileges ({prefix})",
                        i + 1
                    ));
                }
            }
            _ => {}
        }
    }
    if dynamic {
        return Ok(());
    }
    match user.as_deref() {
        None | Some("") => Err("runs as root: it needs User= (not root) or DynamicUser=yes".into()),
        Some("root") | Some("0") => Err("runs as root (User=root)".into()),
        Some(_) => Ok(()),
    }
}

/// Reads the policy at `path` (or [`DEFAULT_PATH`]), for the binaries.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, String> {
    Policy::load(path.unwrap_or(Path::new(DEFAULT_PATH)))
}

/// Writes `text` to `path` if it differs from what is there (a generator's output).
pub fn write_if_changed(path: &Path, text: &str) -> io::Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropin_resets_then_grants_exactly_what_was_declared() {
        let d = dropin("web-1.0.0", &["net.bind".into(), "sys.time".into()]);
        let lines: Vec<&str> = d.lines().collect();
        let reset = lines
            .iter()
            .position(|l| *l == "CapabilityBoundingSet=")
            .unwrap();
        let grant = lines
            .iter()
            .position(|l| *l == "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SYS_TIME")
            .unwrap();
        assert!(reset < grant);
        assert!(lines.contains(&"AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_SYS_TIME"));
        assert!(lines.contains(&"ProtectClock=no"));
        assert!(lines.contains(&"ProtectKernelModules=yes"));
        assert!(lines.contains(&"NoNewPrivileges=yes"));
        assert!(lines.contains(&"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"));
        let none = dropin("quiet-1", &[]);
        assert!(!none.contains("CapabilityBoundingSet=CAP"));
        assert!(none.contains("RestrictAddressFamilies=AF_UNIX\n"));
    }

    #[test]
    fn every_grant_names_real_capabilities_and_settings() {
        for g in TABLE {
            for c in g.caps {
                assert!(c.starts_with("CAP_") && c.len() > 4, "{}", g.name);
            }
            for r in g.relaxes {
                assert!(HARDENING.contains(r), "{} relaxes {r}", g.name);
            }
            assert_eq!(TABLE.iter().filter(|h| h.name == g.name).count(), 1);
        }
    }

    #[test]
    fn a_policy_names_keys_and_a_default() {
        let p =
            Policy::parse("# comment\nvendor *\nalice net.bind net.listen # web\n* net.listen\n")
                .unwrap();
        assert_eq!(p.allowed("vendor"), Allowed::All);
        assert_eq!(
            p.allowed("alice"),
            Allowed::Some(["net.bind".to_string(), "net.listen".to_string()].into())
        );
        assert_eq!(
            p.allowed("bob"),
            Allowed::Some(["net.listen".to_string()].into())
        );
        let strict = Policy::parse("vendor *\n").unwrap();
        assert_eq!(strict.allowed("bob"), Allowed::Some(BTreeSet::new()));
        assert_eq!(Policy::unrestricted().allowed("x"), Allowed::All);
        assert_eq!(
            Policy::parse("").unwrap().allowed("vendor"),
            Allowed::Some(BTreeSet::new())
        );
    }

    #[test]
    fn a_bad_policy_is_one_line_naming_the_line() {
        let e = Policy::parse("alice net.bind\nbob cap_sys_admin\n").unwrap_err();
        assert!(
            e.starts_with("line 2: unknown capability \"cap_sys_admin\""),
            "{e}"
        );
        let e = Policy::parse("alice net.bind\nalice net.raw\n").unwrap_err();
        assert_eq!(e, "line 2: a second rule for key alice");
    }

    #[test]
    fn the_opener_refuses_a_package_asking_for_more_than_its_signer_may() {
        use crate::tests::{lab_keys, m, Lab};
        let mut lab = Lab::new();
        let unit = "[Service]\nExecStart=/usr/bin/web\nDynamicUser=yes\n";
        let svc = r#""services":[{"name":"web"}]"#;
        let web = |lab: &mut Lab, caps: &str, files: &[(&str, &str)]| {
            let extra = format!(r#""capabilities":[{caps}],{svc}"#);
            lab.pkg(0, &m("web", "1.0.0", &extra), files).path
        };
        let ok = web(
            &mut lab,
            r#""net.bind""#,
            &[("lib/systemd/system/web.service", unit)],
        );
        let admin = web(
            &mut lab,
            r#""sys.admin""#,
            &[("lib/systemd/system/web.service", unit)],
        );
        let no_unit = web(&mut lab, r#""net.bind""#, &[("bin/web", "x")]);
        let extra_unit = web(
            &mut lab,
            r#""net.bind""#,
            &[
                ("lib/systemd/system/web.service", unit),
                ("lib/systemd/system/other.service", unit),
            ],
        );
        let root_unit = web(
            &mut lab,
            r#""net.bind""#,
            &[(
                "lib/systemd/system/web.service",
                "[Service]\nExecStart=/x\n",
            )],
        );
        let policy = Policy::parse("lab net.bind net.listen\n").unwrap();
        let mut op = crate::Opener::with_policy(lab_keys(), policy);
        assert!(op.open_given(&ok).is_ok());
        let policy_refusal = |e: crate::stack::OpenError| match e {
            crate::stack::OpenError::Policy(reason) => reason,
            e => panic!("refused as {} ({e}), not by the policy", e.kind()),
        };
        let e = policy_refusal(op.open_given(&admin).unwrap_err());
        assert!(
            e.starts_with("it asks for capabilities sys.admin that the policy does not allow packages signed by key lab (allowed: net.bind, net.listen)"),
            "{e}"
        );
        let e = policy_refusal(op.open_given(&no_unit).unwrap_err());
        assert_eq!(
            e,
            "services[0].unit: lib/systemd/system/web.service: not in the package"
        );
        let e = policy_refusal(op.open_given(&extra_unit).unwrap_err());
        assert!(
            e.starts_with("lib/systemd/system/other.service: only the units"),
            "{e}"
        );
        let e = policy_refusal(op.open_given(&root_unit).unwrap_err());
        assert!(e.contains("runs as root"), "{e}");
        // Unrestricted, the same packages open (but a unit must still be there).
        let mut op = crate::Opener::new(lab_keys());
        assert!(op.open_given(&admin).is_ok() && op.open_given(&extra_unit).is_ok());
        assert!(op.open_given(&no_unit).is_err());
    }

    #[test]
    fn a_restricted_unit_runs_as_a_user_without_privileged_commands() {
        let ok = "[Unit]\nDescription=x\n[Service]\nExecStart=/usr/bin/web\nDynamicUser=yes\n";
        assert_eq!(check_unit(ok), Ok(()));
        assert_eq!(
            check_unit("[Service]\nExecStart=-/usr/bin/web\nUser=web\n"),
            Ok(())
        );
        for (bad, why) in [
            ("[Service]\nExecStart=/usr/bin/web\n", "runs as root"),
            (
                "[Service]\nExecStart=/usr/bin/web\nUser=root\n",
                "User=root",
            ),
            (
                "[Service]\nDynamicUser=yes\nExecStartPre=+/bin/sh -c id\nExecStart=/x\n",
                "full privileges (+)",
            ),
            (
                "[Service]\nDynamicUser=yes\nExecStart=-!/bin/sh\n",
                "full privileges (-!)",
            ),
            (
                "[Service]\nDynamicUser=yes\nPermissionsStartOnly=yes\nExecStart=/x\n",
                "PermissionsStartOnly",
            ),
            (
                "[Service]\nDynamicUser=yes\nExecStart=/x \\\n  --flag\n",
                "continued lines",
            ),
        ] {
            let e = check_unit(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
