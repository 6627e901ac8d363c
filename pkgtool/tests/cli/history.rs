//! The audit trail from the command line (issue 13): every change of a layer's set
//! (install, remove, rollback, gc) appends one record that `pkgtool history` shows, with
//! who made it (and sudo's user), the generations before and after, and the packages; a
//! torn last record (a power cut mid-append) is skipped, counted, and cut off by the next
//! change, never fatal.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::util::{keygen, pkgtool, write_manifest, KeyPair, Scratch};

struct Layer {
    s: Scratch,
    key: KeyPair,
}

impl Layer {
    fn new() -> Layer {
        let s = Scratch::new();
        let key = keygen(s.path(), "signer");
        fs::create_dir(s.join("keys")).unwrap();
        fs::copy(&key.public, s.join("keys/signer.pub")).unwrap();
        fs::create_dir_all(s.join("system/packages")).unwrap();
        Layer { s, key }
    }

    fn dir(&self) -> PathBuf {
        self.s.join("system")
    }

    fn build(&self, name: &str, v: &str) -> PathBuf {
        let tree = self.s.join(format!("tree-{name}-{v}"));
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join(name), v).unwrap();
        let man = write_manifest(self.s.path(), name, v);
        let out = self.s.join(format!("{name}-{v}.hpkg"));
        pkgtool(["build"])
            .arg(&tree)
            .arg("-o")
            .arg(&out)
            .arg("--key")
            .arg(&self.key.secret)
            .arg("--manifest")
            .arg(&man)
            .arg("--quiet")
            .ok();
        out
    }

    fn set(&self, cmd: &str, what: &[&std::ffi::OsStr], sudo: Option<&str>) {
        let mut c = pkgtool([cmd]);
        c.args(what)
            .arg("--layer")
            .arg(self.dir())
            .arg("--trusted-keys")
            .arg(self.s.join("keys"));
        if let Some(u) = sudo {
            c.env("SUDO_USER", u);
        }
        c.ok();
    }

    fn history(&self, extra: &[&str]) -> crate::util::Run {
        let mut c = pkgtool(["history", "--layer"]);
        c.arg(self.dir()).args(extra);
        c.ok()
    }
}

#[test]
fn every_change_is_one_record_with_who_why_and_what() {
    let l = Layer::new();
    let a1 = l.build("a", "1.0.0");
    let a2 = l.build("a", "2.0.0");
    let b1 = l.build("b", "1.0.0");
    l.history(&[]).stdout_contains("no changes recorded");
    l.set("install", &[a1.as_os_str()], None);
    l.set("install", &[a2.as_os_str(), b1.as_os_str()], Some("alice"));
    l.set("remove", &["b".as_ref()], None);
    l.set("rollback", &[], None);
    pkgtool(["gc", "--keep", "1", "--layer"])
        .arg(l.dir())
        .arg("--trusted-keys")
        .arg(l.s.join("keys"))
        .ok();

    let j = l.history(&["--json"]).json();
    assert_eq!(j["skipped"], 0);
    let recs = j["records"].as_array().unwrap();
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["install", "install", "remove", "rollback", "gc"],
        "{j}"
    );
    let gens: Vec<(u64, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["before"].as_u64().unwrap_or(0),
                r["after"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(gens, [(0, 1), (1, 2), (2, 3), (3, 2), (2, 2)]);
    assert_eq!(recs[1]["added"], serde_json::json!(["a-2.0.0", "b-1.0.0"]));
    assert_eq!(recs[1]["removed"], serde_json::json!(["a-1.0.0"]));
    assert_eq!(recs[1]["who"]["sudo_user"], "alice");
    assert!(recs[0]["who"].get("sudo_user").is_none());
    assert_eq!(
        recs[0]["who"]["uid"].as_u64().unwrap(),
        unsafe { libc::getuid() } as u64
    );
    assert!(
        recs[2]["who"]["command"]
            .as_str()
            .unwrap()
            .contains(" remove b "),
        "{}",
        recs[2]
    );
    assert_eq!(recs[3]["added"], serde_json::json!(["b-1.0.0"]));
    // keep 1: the newest (3) stays, and the active one (2).
    assert_eq!(recs[4]["deleted_generations"], serde_json::json!([1]));
    for r in recs {
        assert_eq!(r["verdict"], "done");
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }

    // The text form: one line a record, oldest first; --last.
    let text = l.history(&[]).stdout_str().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[1].contains("1 -> 2")
            && lines[1].contains("(sudo alice)")
            && lines[1].contains("+b-1.0.0")
    );
    assert!(lines[3].contains("rollback") && lines[3].contains("3 -> 2"));
    let last = l.history(&["--last", "2"]).stdout_str().to_owned();
    assert_eq!(last.lines().count(), 2);
    assert!(last.lines().next().unwrap().contains("rollback"));
}

#[test]
fn a_torn_record_is_skipped_and_cut_off_by_the_next_change() {
    let l = Layer::new();
    let a1 = l.build("a", "1.0.0");
    let a2 = l.build("a", "2.0.0");
    l.set("install", &[a1.as_os_str()], None);
    // A power cut in the middle of an append: half a line, no newline.
    let journal = l.dir().join("state/journal");
    let line = fs::read_to_string(&journal).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
    drop(f);
    l.history(&[])
        .stdout_contains("(1 torn or damaged record skipped)");
    let j = l.history(&["--json"]).json();
    assert_eq!(
        (
            j["records"].as_array().unwrap().len(),
            j["skipped"].as_u64().unwrap()
        ),
        (1, 1)
    );
    // The next change cuts the torn tail off and appends whole.
    l.set("install", &[a2.as_os_str()], None);
    let j = l.history(&["--json"]).json();
    assert_eq!(j["skipped"], 0, "{j}");
    assert_eq!(j["records"].as_array().unwrap().len(), 2);
    assert_eq!(fs::read_to_string(&journal).unwrap().lines().count(), 2);
}

#[test]
fn history_of_no_directory_is_a_one_line_error() {
    let s = Scratch::new();
    pkgtool(["history", "--layer"])
        .arg(s.join("nope"))
        .fails(1)
        .one_line_error()
        .stderr_contains("not a directory");
}
