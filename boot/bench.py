#!/usr/bin/env python3
"""Boot time and memory of the boot image's userland served by packagefs against the same
files extracted onto a plain ext4 root (scripts/bench-boot).

    bench.py IMAGE_DIR PLAIN_DISK WORK_DIR ROUNDS OUT.json

Boots alternate (packagefs, plain, packagefs, ...), each from a fresh copy of its disk, the
same kernel, initramfs, memory and CPUs: the plain root is booted by the same initramfs
with packagefs.plainroot. After each boot: `systemd-analyze time` (the kernel's part, which
includes the initramfs and the mount of the root, and the userspace part until
multi-user.target), MemTotal - MemAvailable, and the daemon's RSS.
"""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vm import VM, Failed  # noqa: E402


def seconds(text):
    """systemd's time span ('1min 2.345s', '845ms', '12.1s') in seconds."""
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|us|s)\b", text):
        total += float(num) * {"min": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def boot_once(image, work, kind, disk_src, n):
    name = "%s-%d" % (kind, n)
    disk = os.path.join(work, name + ".disk.img")
    subprocess.run(["cp", "--sparse=always", disk_src, disk], check=True)
    vm = VM(image, work, name, disk=disk)
    try:
        vm.start("packagefs.plainroot" if kind == "plain" else "")
        vm.login()
        _, state = vm.run("systemctl is-system-running --wait", check=False)
        if state.strip() != "running":
            raise Failed("%s: the system is %r, not running" % (name, state.strip()))
        _, t = vm.run("systemd-analyze time")
        m = re.search(r"Startup finished in (.*?)\(kernel\)", t)
        # The default target: graphical.target, which is multi-user.target and nothing else here.
        mu = re.search(r"(?:multi-user|graphical)\.target reached after (.*?) in userspace", t)
        if not m or not mu:
            raise Failed("%s: systemd-analyze time said %r" % (name, t.strip()))
        _, mem = vm.run("grep -E '^(MemTotal|MemAvailable):' /proc/meminfo")
        kb = dict((k, int(v)) for k, v in re.findall(r"(\w+):\s+(\d+) kB", mem))
        _, rss = vm.run("p=$(pgrep -f '^@packagefs' | head -n1); "
                        "if [ -n \"$p\" ]; then grep VmRSS /proc/$p/status; else echo 'VmRSS: 0 kB'; fi")
        r = {"kind": kind, "kernel_s": seconds(m.group(1)), "userspace_s": seconds(mu.group(1)),
             "used_mib": (kb["MemTotal"] - kb["MemAvailable"]) / 1024.0,
             "daemon_rss_mib": int(re.search(r"VmRSS:\s+(\d+)", rss).group(1)) / 1024.0}
        r["total_s"] = r["kernel_s"] + r["userspace_s"]
        vm.say("measured: %s" % json.dumps(r))
        vm.poweroff()
        return r
    finally:
        vm.kill()
        os.unlink(disk)


def main():
    image, plain, work, rounds, out = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    results = []
    for n in range(int(rounds)):
        for kind, disk in (("packagefs", os.path.join(image, "disk.img")), ("plain", plain)):
            results.append(boot_once(image, work, kind, disk, n))
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print("bench-boot: FAILED: %s" % e, file=sys.stderr)
        sys.exit(1)
