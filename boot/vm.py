#!/usr/bin/env python3
"""Drives a qemu VM of the boot image over its serial console (scripts/boot-test).

    vm.py SCENARIO IMAGE_DIR WORK_DIR

Each scenario boots the image (a private copy of its disk), reads the serial console with
timeouts, logs in as root, runs commands and checks what they print. Every byte the VM
prints goes to WORK_DIR/SCENARIO.console.log. Exit status 0: the scenario passed; 1: it
failed, with one line saying what was expected and what came instead.
"""

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

PASSWORD = os.environ.get("BOOT_ROOT_PASSWORD", "")
# Generous: a boot under software emulation (no usable KVM) takes about a minute.
BOOT_TIMEOUT = float(os.environ.get("BOOT_TIMEOUT", "300"))
CMD_TIMEOUT = float(os.environ.get("BOOT_CMD_TIMEOUT", "120"))


class Failed(Exception):
    pass


def die_with_parent():
    """qemu gets SIGKILL when this driver dies, however it dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)


def accel_args():
    """BOOT_ACCEL=kvm (scripts/boot-test probes whether KVM works), else TCG."""
    if os.environ.get("BOOT_ACCEL") == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "max"]


class VM:
    def __init__(self, image, work, name, append="", disk=None):
        self.image, self.work, self.name = image, work, name
        self.disk = disk or os.path.join(work, name + ".disk.img")
        self.log = open(os.path.join(work, name + ".console.log"), "ab")
        self.buf = b""
        self.append = append
        self.proc = None
        self.boots = 0

    def start(self, append=None):
        if append is not None:
            self.append = append
        cmd = (
            ["qemu-system-x86_64"]
            + accel_args()
            + ["-m", "1024", "-smp", "2", "-display", "none", "-vga", "none",
               "-nodefaults", "-no-user-config",
               "-serial", "stdio", "-monitor", "none",
               "-kernel", os.path.join(self.image, "vmlinuz"),
               "-initrd", os.path.join(self.image, "initrd.img"),
               "-append", ("console=ttyS0 printk.devkmsg=on " + self.append).strip(),
               "-drive", "file=%s,if=virtio,format=raw,cache=unsafe" % self.disk,
               "-device", "virtio-rng-pci"]
        )
        self.say("boot: %s" % self.append or "(no options)")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0,
                                     preexec_fn=die_with_parent)
        self.buf = b""
        self.boots += 1

    def say(self, msg):
        line = "[vm.py %s] %s\n" % (self.name, msg)
        sys.stdout.write(line)
        sys.stdout.flush()
        self.log.write(("\n" + line).encode())
        self.log.flush()

    def _read(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return False
        data = os.read(self.proc.stdout.fileno(), 65536)
        if not data:
            return None
        self.log.write(data)
        self.log.flush()
        self.buf += data
        return True

    def expect(self, pattern, timeout, what=None):
        """Waits for a regex (bytes) on the console; returns the match."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                tail = self.buf[-300:].decode(errors="replace").replace("\n", " | ")
                raise Failed("timed out after %ds waiting for %s; the console ended: %s"
                             % (timeout, what or pattern, tail))
            got = self._read(min(left, 1.0))
            if got is None:
                raise Failed("qemu exited while waiting for %s" % (what or pattern))

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def login(self):
        self.expect(r"login: ", BOOT_TIMEOUT, "the login prompt")
        # login turns echo off with TCSAFLUSH after its prompt: input sent before that is
        # thrown away. Give each prompt a moment.
        time.sleep(1)
        self.send("root\r")
        if PASSWORD:
            self.expect(r"Password: ", 60, "the password prompt")
            time.sleep(1.5)
            self.send(PASSWORD + "\r")
        self.expect(r"root@[^ ]*:[^ ]*# ", 60, "a root shell prompt")
        # No colours, no line editing surprises, a prompt of our own.
        # Kernel messages would interleave with what commands print.
        self.run("dmesg -n 1; export TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER= PAGER=cat; stty -echo cols 500")

    _n = 0

    def run(self, cmd, timeout=CMD_TIMEOUT, check=True):
        """Runs a shell command in the VM; returns (status, output)."""
        VM._n += 1
        tag = "Q%dQ" % VM._n
        self.send("echo %s-begin; ( %s ) 2>&1; echo %s-end $?\n" % (tag, cmd, tag))
        self.expect(r"[\r\n]%s-begin\r?\n" % tag, timeout, "the start of `%s`" % cmd)
        m = self.expect(r"(?s)(.*?)(?:\r?\n)?%s-end (\d+)\r?\n" % tag, timeout, "`%s` to end" % cmd)
        out = m.group(1).decode(errors="replace").replace("\r", "")
        status = int(m.group(2))
        if check and status != 0:
            raise Failed("`%s` exited %d: %s" % (cmd, status, out.strip()[-500:]))
        return status, out

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise Failed("the VM did not power off within %ds" % timeout)
            self._read(0.5)
        while self._read(0.1):
            pass

    def poweroff(self):
        self.send("systemctl poweroff\r")
        self.expect(r"reboot: Power down", 180, "the power-off")
        self.wait_exit(30)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def generation(vm):
    _, out = vm.run("pkgtool status --layer /data/system")
    m = re.search(r"generation (\d+)", out)
    check(m, "pkgtool status names no generation: %s" % out.strip())
    return int(m.group(1))


def healthy(vm, version):
    """The checks of a good boot: running, no failed unit, our service at `version`."""
    _, state = vm.run("systemctl is-system-running --wait", check=False)
    if state.strip() != "running":
        _, failed = vm.run("systemctl --failed --no-legend --plain", check=False)
        for unit in [l.split()[0] for l in failed.splitlines() if l.strip()]:
            _, log = vm.run("journalctl -b -u %s -o cat --no-pager | tail -n 8" % unit, check=False)
            vm.say("%s: %s" % (unit, log.strip().replace("\n", " | ")))
        raise Failed("is-system-running says %r; failed units: %s"
                     % (state.strip(), failed.strip() or "none"))
    vm.run("systemctl is-active pkgfs-hello.service")
    _, out = vm.run("pkgfs-hello --version")
    check(out.strip() == "pkgfs-hello %s" % version,
          "pkgfs-hello --version says %r, expected version %s" % (out.strip(), version))
    _, out = vm.run("journalctl -b -u pkgfs-hello.service -o cat --no-pager")
    check("pkgfs-hello %s: serving" % version in out,
          "the service did not log version %s this boot: %s" % (version, out.strip()[-300:]))
    _, root = vm.run("findmnt -n -o FSTYPE,OPTIONS /")
    check(root.startswith("fuse.packagefs") and "ro" in root.split()[1].split(","),
          "/ is not the read-only packagefs view: %s" % root.strip())


def scenario_basic(vm):
    """1. Boot from packages; every grafted package's programs answer --version."""
    vm.start("")
    vm.login()
    healthy(vm, "1.0.0")
    _, out = vm.run("cat /proc/$(pgrep -f '^@packagefs' | head -n1)/cmdline | tr '\\0' ' '")
    check(out.startswith("@packagefs"), "the daemon's argv[0] does not start with @: %r" % out)
    for fs in ("/run", "/tmp"):
        _, t = vm.run("findmnt -n -o FSTYPE %s" % fs)
        check(t.strip() == "tmpfs", "%s is %s, not tmpfs" % (fs, t.strip()))
    _, t = vm.run("findmnt -n -o SOURCE,TARGET /var")
    check("/var" in t, "/var is not mounted: %s" % t)
    vm.run("touch /var/boot-test-was-here /root/x /home/x")
    _, out = vm.run("touch /usr/bin/x", check=False)
    check("Read-only" in out, "writing to /usr/bin did not fail as read-only: %s" % out)
    host_unit(vm)
    # A program of every package that has one, with --version.
    _, out = vm.run(r"""for p in $(ls /data/system/packages); do
  for b in $(pkgtool list /data/system/packages/$p 2>/dev/null | awk '$NF ~ /^(usr\/)?s?bin\/[^\/]+$/ {print "/"$NF}' | head -n 5); do
    [ -x "$b" ] || continue
    if timeout 5 "$b" --version </dev/null >/dev/null 2>&1; then echo "ok $p $b"; break; fi
  done
done""", timeout=600)
    oks = [l for l in out.splitlines() if l.startswith("ok ")]
    vm.say("%d packages have a program that answers --version" % len(oks))
    for need in ("bash", "coreutils", "util-linux", "procps", "systemd"):
        check(any(re.match(r"ok %s-\d" % re.escape(need), l) for l in oks),
              "no program of %s answered --version: %s" % (need, out[-500:]))
    halt(vm)


UNIT = "packagefs@run-pkg.service"


def host_unit(vm):
    """The host unit of dist/systemd/, run by the real systemd: packagefs@mnt.service
    serves a layer of its own at /run/pkg (Type=notify, hardened, restarted when killed)."""
    _, out = vm.run("systemd-analyze verify %s 2>&1" % UNIT)
    check(out.strip() == "", "systemd-analyze verify %s: %s" % (UNIT, out.strip()))
    vm.run("set -e; mkdir -p /run/pk/tree/bin /run/pk/keys /run/pk/layer/packages; cd /run/pk; "
           "printf '#!/bin/sh\\necho unit-hello 1\\n' > tree/bin/unit-hello; chmod 755 tree/bin/unit-hello; "
           "pkgtool keygen t >/dev/null; cp t.pub keys/; "
           "echo '{\"name\": \"unit-hello\", \"version\": \"1.0.0\"}' > m.json; "
           "pkgtool build tree -o layer/packages/unit-hello.hpkg --key t.key --manifest m.json -q >/dev/null; "
           "mkdir -p /run/systemd/system/%s.d; "
           "printf '[Service]\\nEnvironment=LAYERS=system=/run/pk/layer OPTIONS=allow_other,trusted_keys=/run/pk/keys\\n' "
           "> /run/systemd/system/%s.d/test.conf; systemctl daemon-reload" % (UNIT, UNIT))
    code, out = vm.run("systemctl start %s" % UNIT, timeout=180, check=False)
    if code != 0:
        _, log = vm.run("journalctl -b -u %s -o cat --no-pager | tail -n 12" % UNIT, check=False)
        raise Failed("systemctl start %s: exit %d: %s" % (UNIT, code, log.strip().replace("\n", " | ")))
    _, st = vm.run("systemctl show -p Type,ActiveState,SubState,MainPID %s" % UNIT)
    check("Type=notify" in st and "ActiveState=active" in st and "SubState=running" in st,
          "%s is not an active notify service: %s" % (UNIT, st.strip().replace("\n", " ")))
    pid = re.search(r"MainPID=(\d+)", st).group(1)
    _, t = vm.run("findmnt -n -o FSTYPE /run/pkg")
    check(t.strip() == "fuse.packagefs", "/run/pkg is %r, not a packagefs view" % t.strip())
    _, out = vm.run("setpriv --reuid=65534 --regid=65534 --clear-groups /run/pkg/bin/unit-hello")
    check(out.strip() == "unit-hello 1", "another user ran /run/pkg/bin/unit-hello: %r" % out.strip())
    _, nnp = vm.run("grep -E '^(NoNewPrivs|CapBnd):' /proc/%s/status" % pid)
    check(re.search(r"NoNewPrivs:\s+1", nnp) and "000001ffffffffff" not in nnp,
          "the daemon runs without its hardening: %s" % nnp.strip().replace("\n", " "))
    # Killed, it is restarted, and the new daemon clears the dead mount.
    vm.run("kill -9 %s" % pid)
    vm.run("for i in $(seq 120); do [ \"$(systemctl show -p NRestarts --value %s)\" = 1 ] && "
           "systemctl is-active -q %s && break; sleep 0.5; done; systemctl is-active %s" % (UNIT, UNIT, UNIT))
    _, out = vm.run("/run/pkg/bin/unit-hello")
    check(out.strip() == "unit-hello 1", "after the restart /run/pkg/bin/unit-hello says %r" % out.strip())
    vm.run("systemctl stop %s" % UNIT)
    code, _ = vm.run("findmnt /run/pkg", check=False)
    check(code != 0, "stopping %s left /run/pkg mounted" % UNIT)
    vm.say("packagefs@.service: verified, notify, hardened, restarted after SIGKILL, stopped")


INSTALL = "pkgtool install %s --layer /data/system --trusted-keys /etc/packagefs/keys"


def halt(vm):
    """Ends a scenario: a clean power-off (systemd stops everything, systemd-shutdown
    remounts the data disk read-only, the VM powers off)."""
    vm.poweroff()


def reboot(vm, append=None):
    """Reboots cleanly: in place (the same qemu, the same kernel command line), or with a
    new command line (a clean power-off, then a new start)."""
    if append is None:
        vm.send("systemctl reboot\r")
        vm.expect(r"reboot: Restarting system", 180, "the reboot")
    else:
        vm.poweroff()
        vm.start(append)


def scenario_update(vm):
    """2. A new generation boots; the old one by packagefs.generation=; the new one again."""
    vm.start("")
    vm.login()
    healthy(vm, "1.0.0")
    vm.run(INSTALL % "/data/incoming/pkgfs-hello-2.0.0.hpkg")
    check(generation(vm) == 2, "the install did not make generation 2")
    reboot(vm)
    vm.login()
    healthy(vm, "2.0.0")
    reboot(vm, "packagefs.generation=1")
    vm.expect(r"booting generation 1 for this boot only", BOOT_TIMEOUT, "the pinned boot's message")
    vm.login()
    healthy(vm, "1.0.0")
    check(generation(vm) == 2, "a pinned boot changed the active generation")
    reboot(vm, "")
    vm.login()
    healthy(vm, "2.0.0")
    halt(vm)


def scenario_assessment(vm):
    """3. A generation whose boots fail uses up its tries; the last good one boots, for good."""
    vm.start("packagefs.tries=2")
    vm.login()
    healthy(vm, "1.0.0")
    _, st = vm.run("pkgtool status --layer /data/system")
    check("good: 1" in st, "generation 1 was not blessed: %s" % st)
    vm.run(INSTALL % "/data/incoming/pkgfs-breaker-1.0.0.hpkg")
    reboot(vm)
    for k in (1, 2):
        vm.expect(r"generation 2 is on trial: boot %d of 2" % k, BOOT_TIMEOUT, "try %d of generation 2" % k)
        vm.expect(r"systemctl status pkgfs-breaker\.service", BOOT_TIMEOUT, "the breaking unit's failure")
    vm.expect(r"generation 2 used up its 2 boot tries without a good boot: booting the last good generation, 1",
              BOOT_TIMEOUT, "the fallback to the last good generation")
    vm.login()
    healthy(vm, "1.0.0")
    check(generation(vm) == 1, "the fallback to generation 1 is not permanent")
    _, st = vm.run("pkgtool status --layer /data/system")
    check("bad: 2" in st, "generation 2 is not marked bad: %s" % st)
    _, log = vm.run("journalctl -b -k -o cat --no-pager | grep 'used up its'")
    check("generation 2" in log, "the journal does not say why: %s" % log)
    # And it stays so.
    reboot(vm)
    vm.expect(r"booting generation 1\r?\n", BOOT_TIMEOUT, "an ordinary boot of generation 1")
    vm.login()
    healthy(vm, "1.0.0")
    halt(vm)


def scenario_corrupt(vm):
    """4. A corrupted package file of the current generation: the boot falls back, naming it."""
    vm.start("")
    vm.login()
    healthy(vm, "1.0.0")
    vm.run(INSTALL % "/data/incoming/pkgfs-hello-2.0.0.hpkg")
    # Spoil every copy of the new package on the disk (packages/ and the pool).
    vm.run("for f in $(grep -l 'pkgfs-hello' /data/system/packages/*.hpkg) "
           "$(ls /data/system/state/pool/*.hpkg | while read p; do pkgtool info $p 2>/dev/null | grep -q 'pkgfs-hello 2' && echo $p; done); do "
           "sz=$(stat -c %s $f); printf 'XXXXXXXX' | dd of=$f bs=1 seek=$((sz / 2)) conv=notrunc 2>/dev/null; done; sync")
    reboot(vm)
    m = vm.expect(r"generation 2 does not open whole \(([^\r\n]*?)\); falling back to generation 1",
                  BOOT_TIMEOUT, "the damaged generation named, and the fallback")
    vm.say("the initramfs said: %s" % m.group(0).decode(errors="replace"))
    check(b"pkgfs-hello" in m.group(1), "the message does not name the package: %r" % m.group(1))
    vm.login()
    healthy(vm, "1.0.0")
    # The active list still names generation 2 (a repair brings it back): status reports
    # it damaged, and exits 1, with the boot record saying what this boot did.
    code, st = vm.run("pkgtool status --layer /data/system", check=False)
    check(code == 1 and "is damaged" in st and "(fallback)" in st,
          "pkgtool status does not report the damage and the fallback: exit %d: %s" % (code, st[-600:]))
    halt(vm)


def scenario_poweroff(vm):
    """5. A clean power-off: the disk is clean and the host reads state/ with pkgtool."""
    vm.start("")
    vm.login()
    healthy(vm, "1.0.0")
    start = vm.log.tell()
    vm.poweroff()
    with open(vm.log.name, "rb") as f:
        f.seek(start)
        shutdown = f.read().decode(errors="replace")
    bad = [l for l in shutdown.splitlines() if "FAILED" in l or "timed out" in l.lower()]
    check(not bad, "the shutdown reported failures: %s" % " | ".join(bad)[:600])
    fsck = subprocess.run(["e2fsck", "-fn", vm.disk], capture_output=True, text=True)
    check(fsck.returncode == 0, "e2fsck -fn of the data disk after power-off: exit %d: %s"
          % (fsck.returncode, (fsck.stdout + fsck.stderr).strip()[-400:]))
    out = os.path.join(vm.work, "poweroff.dump")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    subprocess.run(["debugfs", "-R", "rdump /system %s" % out, vm.disk], check=True,
                   capture_output=True)
    pkgtool = os.environ.get("PKGTOOL", "pkgtool")
    st = subprocess.run([pkgtool, "status", "--layer", os.path.join(out, "system"),
                         "--trusted-keys", os.path.join(vm.image, "trusted")],
                        capture_output=True, text=True)
    check(st.returncode == 0 and "generation 1" in st.stdout and "good: 1" in st.stdout,
          "pkgtool status on the host: exit %d: %s" % (st.returncode, (st.stdout + st.stderr)[-400:]))
    vm.say("host: " + st.stdout.splitlines()[0])

UPDATE = ("pkgtool update %s --layer /data/system --trusted-keys /etc/packagefs/keys "
          "--policy /etc/packagefs/policy")
WEB_GET = ("bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 "
           "&& cat <&3' 2>/dev/null | tail -n 1")


def web(vm):
    """What pkgfs-web answers on 127.0.0.1:8080 (the body), or "" if nothing answers."""
    _, out = vm.run(WEB_GET, check=False)
    return out.strip()


def started_at(vm, unit):
    _, out = vm.run("systemctl show -p ExecMainStartTimestampMonotonic,MainPID --value %s" % unit)
    return out.split()


def scenario_services(vm):
    """6. Updates over services: healthy, unhealthy (rolled back by itself), crash, policy."""
    vm.start("")
    vm.login()
    healthy(vm, "1.0.0")
    hello = started_at(vm, "pkgfs-hello.service")
    gen0 = generation(vm)
    # 1. version 1: planned, started, checked.
    _, out = vm.run(UPDATE % "/data/incoming/pkgfs-web-1.0.0.hpkg", timeout=180)
    vm.say("update 1.0.0: " + " | ".join(l for l in out.splitlines() if l.startswith("services:")))
    check("services: start pkgfs-web.service (pkgfs-web-1.0.0)" in out, "no start in the plan: %s" % out)
    check("services: pkgfs-web.service health ok" in out and "services: healthy" in out,
          "version 1 was not found healthy: %s" % out[-600:])
    check(web(vm) == "pkgfs-web 1.0.0", "pkgfs-web 1.0.0 does not answer: %r" % web(vm))
    gen1 = generation(vm)
    # The generator's drop-in is what systemd applies.
    _, dropin = vm.run("systemctl cat pkgfs-web.service")
    check("zz-packagefs-capabilities.conf" in dropin and "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" in dropin,
          "pkgfs-web has no capability drop-in: %s" % dropin[-600:])
    # 2. version 2 dies 3 s after its start, inside its 8 s stability window.
    rc, out = vm.run(UPDATE % "/data/incoming/pkgfs-web-2.0.0.hpkg", timeout=240, check=False)
    last = [l for l in out.splitlines() if l.strip()][-1]
    vm.say("update 2.0.0: exit %d: %s" % (rc, last))
    check(rc == 1, "the unhealthy update exited %d: %s" % (rc, out[-600:]))
    check(re.search(r"rolled back to generation %d: .*pkgfs-web.service: stable: it stopped" % gen1, last),
          "the reason does not name the service and the check: %r" % last)
    check(generation(vm) == gen1, "the rollback did not make generation %d active again" % gen1)
    check(web(vm) == "pkgfs-web 1.0.0", "version 1 does not answer after the rollback: %r" % web(vm))
    _, hist = vm.run("pkgtool history --layer /data/system --last 3")
    vm.say("history: " + " | ".join(hist.strip().splitlines()))
    check("health-rollback" in hist and "stable" in hist, "history lacks the rollback: %s" % hist)
    _, js = vm.run("pkgtool history --layer /data/system --json --last 1")
    rec = json.loads(js)["records"][-1]
    check(rec["kind"] == "health-rollback" and any(c["check"] == "stable" and not c["ok"] for c in rec["checks"]),
          "the journal record lacks the failed check: %s" % js[-600:])
    # 3. version 3: healthy, stays.
    vm.run(UPDATE % "/data/incoming/pkgfs-web-3.0.0.hpkg", timeout=180)
    check(web(vm) == "pkgfs-web 3.0.0", "pkgfs-web 3.0.0 does not answer: %r" % web(vm))
    gen3 = generation(vm)
    check(started_at(vm, "pkgfs-hello.service") == hello,
          "an unrelated service was restarted: %s -> %s" % (hello, started_at(vm, "pkgfs-hello.service")))
    # 5. capabilities within the policy, and beyond it.
    vm.run(UPDATE % "/data/incoming/pkgfs-cap-1.0.0.hpkg", timeout=180)
    _, pid = vm.run("systemctl show -p MainPID --value pkgfs-cap.service")
    _, status = vm.run("grep ^Cap /proc/%s/status" % pid.strip())
    caps = dict(l.split(":\t") for l in status.strip().splitlines())
    vm.say("pkgfs-cap: " + ", ".join("%s %s" % kv for kv in sorted(caps.items())))
    for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        check(caps.get(k) == "0000000000000400",
              "pkgfs-cap %s is %s, not exactly CAP_NET_BIND_SERVICE" % (k, caps.get(k)))
    rc, out = vm.run(UPDATE % "/data/incoming/pkgfs-admin-1.0.0.hpkg", check=False)
    vm.say("pkgfs-admin: exit %d: %s" % (rc, out.strip()[-300:]))
    check(rc == 1 and "sys.admin" in out and "policy" in out, "pkgfs-admin was not refused by the policy: %s" % out)
    check(generation(vm) == gen3 + 1, "the refused install changed the set")
    # 4. an update killed between the switch and the start: undone at the next boot.
    rc, out = vm.run("PKGTOOL_FAULT=kill-after-switch " + UPDATE % "/data/incoming/pkgfs-web-1.0.0.hpkg",
                     timeout=180, check=False)
    check(rc == 137, "the update was not killed: exit %d: %s" % (rc, out[-400:]))
    check(web(vm) == "", "pkgfs-web still answers after its stop: %r" % web(vm))
    reboot(vm)
    vm.expect(r"an update interrupted by the last shutdown .* was undone", BOOT_TIMEOUT,
              "the boot's message about the interrupted update")
    vm.login()
    vm.run("systemctl is-system-running --wait", check=False)
    check(web(vm) == "pkgfs-web 3.0.0", "after the reboot pkgfs-web answers %r, not 3.0.0" % web(vm))
    check(generation(vm) == gen3 + 1, "the boot did not undo the interrupted update")
    _, hist = vm.run("pkgtool history --layer /data/system --last 2")
    vm.say("history: " + " | ".join(hist.strip().splitlines()))
    check("interrupted-update" in hist, "history does not say what happened: %s" % hist)
    # The boot's generator gave the service its drop-in (nothing in /run survived).
    _, dropin = vm.run("systemctl cat pkgfs-web.service")
    check("/run/systemd/generator/pkgfs-web.service.d/zz-packagefs-capabilities.conf" in dropin,
          "the generator wrote no drop-in at boot: %s" % dropin[-600:])
    vm.run("test ! -e /data/system/state/transaction")
    vm.say("generations %d -> %d -> %d; the unrelated service kept its start (%s)" % (gen0, gen1, gen3, " ".join(hello)))
    halt(vm)


SCENARIOS = {"basic": scenario_basic, "update": scenario_update, "assessment": scenario_assessment,
             "corrupt": scenario_corrupt, "poweroff": scenario_poweroff,
             "services": scenario_services}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: vm.py {%s} IMAGE_DIR WORK_DIR" % "|".join(SCENARIOS))
    name, image, work = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    disk = os.path.join(work, name + ".disk.img")
    shutil.copyfile(os.path.join(image, "disk.img"), disk)
    vm = VM(image, work, name, disk=disk)
    t0 = time.monotonic()
    try:
        SCENARIOS[name](vm)
    except Failed as e:
        vm.say("FAILED: %s" % e)
        print("boot-test %s: FAILED: %s (console: %s)" % (name, e, vm.log.name), file=sys.stderr)
        sys.exit(1)
    finally:
        vm.kill()
    vm.say("passed in %.0f s, %d boot(s)" % (time.monotonic() - t0, vm.boots))


if __name__ == "__main__":
    main()
