# shellcheck shell=bash
# Shared helpers for the scripts in scripts/. Source it, do not run it:
#
#   # shellcheck source=scripts/lib.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing defines PACKAGEFS_ROOT (the repository root, an absolute path) and a
# few functions; it changes nothing else.

PACKAGEFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# What the scripts need from Debian. Keep this list the single source of truth.
#   fuse3           fusermount3 and /dev/fuse support for the (planned) daemon and its tests
#   squashfs-tools  mksquashfs, the baseline of scripts/bench-build
#   squashfuse      squashfs over FUSE, the baseline of the (planned) read benchmarks
#   erofs-utils     mkfs.erofs, another read-only image baseline
#   fuse-overlayfs  union-mount baseline for the (planned) layer benchmarks
#   attr            setfattr/getfattr, used by the xattr tests
#   hyperfine       command benchmarking
#   python3         the random-read driver of scripts/bench
#   build-essential the C compiler and linker that cargo needs (zstd-sys, linking)
#   ca-certificates TLS roots so cargo can fetch crates
#   systemd         systemd-analyze verify and systemd-fstab-generator, which check the
#                   units of dist/systemd/ and the fstab form (tests/tests/e2e/units.rs)
#   dpkg-dev        dpkg-shlibdeps, which computes the .deb's Depends (scripts/package)
#   man-db          man -l, which renders the packaged man pages (tests/tests/e2e/package.rs)
#   lintian         checks the .deb that scripts/package builds (its errors are fatal)
#   strace, zstd    scripts/bench-fleet: strace holds cc1 at its exit to read what it mapped,
#                   zstd compresses the chunks it touched as the package does
# The graft tests and the demo also fetch .deb files with `apt-get download` (apt and
# dpkg-deb come with every Debian system; nothing to install).
# shellcheck disable=SC2034 # used by the scripts that source this file
PACKAGEFS_APT_DEPS=(
	fuse3 squashfs-tools squashfuse erofs-utils fuse-overlayfs attr hyperfine python3
	build-essential ca-certificates systemd libcap2-bin dpkg-dev man-db lintian
	nginx-light docker-registry strace zstd
)

if [[ -t 1 && -z "${NO_COLOR:-}" && "${TERM:-dumb}" != dumb ]]; then
	_c_bold=$'\e[1m' _c_dim=$'\e[2m' _c_red=$'\e[31m' _c_green=$'\e[32m'
	_c_yellow=$'\e[33m' _c_blue=$'\e[34m' _c_cyan=$'\e[36m' _c_off=$'\e[0m'
else
	_c_bold='' _c_dim='' _c_red='' _c_green='' _c_yellow='' _c_blue='' _c_cyan='' _c_off=''
fi

# say MSG...: a headline.  note MSG...: an indented remark.
say() { printf '\n%s==> %s%s\n' "$_c_bold$_c_blue" "$*" "$_c_off"; }
note() { printf '%s    %s%s\n' "$_c_dim" "$*" "$_c_off"; }
ok() { printf '%s    ok: %s%s\n' "$_c_green" "$*" "$_c_off"; }
warn() { printf '%swarning:%s %s\n' "$_c_yellow" "$_c_off" "$*" >&2; }
die() {
	printf '%serror:%s %s\n' "$_c_red" "$_c_off" "$*" >&2
	exit 1
}

# quote_cmd ARGS...: the command as one line a user could paste into a shell;
# arguments are quoted only when they need it.
quote_cmd() {
	local out='' a safe='^[A-Za-z0-9_./:=+,@%-]+$'
	for a in "$@"; do
		if [[ $a =~ $safe ]]; then
			out+=" $a"
		else
			out+=" $(printf '%q' "$a")"
		fi
	done
	printf '%s' "${out# }"
}

# show_cmd ARGS...: print "$ command" the way a user would type it.
show_cmd() { printf '%s$ %s%s\n' "$_c_bold$_c_cyan" "$(quote_cmd "$@")" "$_c_off"; }

# run ARGS...: print the command, then run it (its status is the function's).
run() {
	show_cmd "$@"
	"$@"
}

# run_expect_fail WANT ARGS...: print and run a command that must fail with
# exit status WANT; anything else (success included) is fatal.
run_expect_fail() {
	local want=$1 rc=0
	shift
	show_cmd "$@"
	"$@" || rc=$?
	if ((rc == want)); then
		ok "exit status $rc, as expected"
	elif ((rc == 0)); then
		die "'$(quote_cmd "$@")' succeeded, but it must fail (exit $want)"
	else
		die "'$(quote_cmd "$@")' exited $rc, expected $want"
	fi
}

# run_head N ARGS...: print and run "ARGS | head -n N". The command's own exit
# status counts (a reader closing the pipe early, SIGPIPE = 141, is fine).
run_head() {
	local n=$1 rc
	shift
	printf '%s$ %s | head -n %s%s\n' "$_c_bold$_c_cyan" "$(quote_cmd "$@")" "$n" "$_c_off"
	set +o pipefail
	"$@" | head -n "$n"
	rc=${PIPESTATUS[0]}
	set -o pipefail
	if ((rc != 0 && rc != 141)); then
		die "'$(quote_cmd "$@")' exited $rc"
	fi
}

# apt_missing PKG...: print the packages that are not installed, one a line.
apt_missing() {
	local p
	for p in "$@"; do
		if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
			printf '%s\n' "$p"
		fi
	done
}

# ensure_apt PKG...: install whatever is missing, quietly. When everything is
# installed already it does nothing at all (no apt-get update), so re-runs are fast.
ensure_apt() {
	command -v dpkg-query >/dev/null ||
		die "dpkg-query not found: these scripts expect Debian 12 or similar; install by hand: $*"
	local missing=()
	mapfile -t missing < <(apt_missing "$@")
	((${#missing[@]} == 0)) && return 0

	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null ||
			die "root is needed to install ${missing[*]}: run this script as root (or install them yourself)"
		sudo=(sudo)
	fi
	note "apt-get install ${missing[*]}"
	local log
	log="$(mktemp)"
	if ! { "${sudo[@]}" apt-get update -qq &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "apt-get could not install: ${missing[*]}"
	fi
	rm -f "$log"
	mapfile -t missing < <(apt_missing "$@")
	((${#missing[@]} == 0)) || die "still not installed after apt-get: ${missing[*]}"
}

# ensure_rust [COMPONENT...]: cargo on PATH (rustup's ~/.cargo/bin is picked up
# if it is not), plus the named rustup components (rustfmt, clippy).
ensure_rust() {
	if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
		PATH="$HOME/.cargo/bin:$PATH"
		export PATH
	fi
	command -v cargo >/dev/null ||
		die "cargo not found: install a Rust toolchain (https://rustup.rs), then re-run"
	local c probe
	for c in "$@"; do
		case $c in
		rustfmt) probe=(cargo fmt --version) ;;
		clippy) probe=(cargo clippy --version) ;;
		*) probe=(false) ;;
		esac
		"${probe[@]}" >/dev/null 2>&1 && continue
		command -v rustup >/dev/null || die "cargo $c is missing and rustup is not available to add it"
		note "rustup component add $c"
		rustup component add "$c" >/dev/null || die "rustup could not add the $c component"
	done
}

# Where cargo puts what it builds (CARGO_TARGET_DIR if set).
PACKAGEFS_TARGET="${CARGO_TARGET_DIR:-$PACKAGEFS_ROOT/target}"

# build_release: build every binary of the workspace in release mode and put
# $PACKAGEFS_TARGET/release first on PATH.
build_release() {
	run cargo build --release --workspace --bins
	PATH="$PACKAGEFS_TARGET/release:$PATH"
	export PATH
}

# FUSE over io_uring: the kernel offers it only while the fuse module's enable_uring
# parameter is on. A benchmark that measures the ring turns it on for its run with
# uring_on and puts it back with uring_restore (from its EXIT trap); the daemon never
# changes it.
ENABLE_URING=/sys/module/fuse/parameters/enable_uring
URING_BEFORE='' # its value before uring_on (put back by uring_restore)

# uring_on: turns enable_uring on (remembering what was there); status 1, changing
# nothing, where the kernel has no such switch (Linux before 6.14, or not root).
uring_on() {
	[[ -w $ENABLE_URING ]] || return 1
	[[ -n $URING_BEFORE ]] || URING_BEFORE="$(<"$ENABLE_URING")"
	echo Y >"$ENABLE_URING"
}

# uring_restore: puts enable_uring back as uring_on found it (nothing if it was not
# turned on).
uring_restore() {
	[[ -n $URING_BEFORE ]] || return 0
	printf '%s\n' "$URING_BEFORE" >"$ENABLE_URING" 2>/dev/null ||
		warn "could not put back $ENABLE_URING=$URING_BEFORE"
	URING_BEFORE=''
}

# now: seconds since the epoch, with microseconds.
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }

# secs_since T0: seconds elapsed since T0 (a value of now), to 0.1 s.
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# human_bytes N: 1234567 -> "1.2 MiB".
human_bytes() {
	awk -v n="$1" 'BEGIN {
		split("B KiB MiB GiB TiB", u, " "); i = 1
		while (n >= 1024 && i < 5) { n /= 1024; i++ }
		printf (i == 1 ? "%d %s" : "%.1f %s"), n, u[i]
	}'
}

# choose_boot_accel KERNEL WORKDIR: sets and exports BOOT_ACCEL (unless set already) for
# the qemu boots of scripts/boot-test and scripts/bench-boot: kvm if a KVM guest of KERNEL
# gets as far as its first console line within 20 s, else tcg. Some hosts offer /dev/kvm
# under nested virtualization where a guest's early boot takes minutes (every page-table
# write exits); software emulation is faster there.
choose_boot_accel() {
	local kernel=$1 log="$2/kvm-probe.log"
	if [[ -z ${BOOT_ACCEL:-} ]]; then
		BOOT_ACCEL=tcg
		if [[ -r /dev/kvm && -w /dev/kvm ]]; then
			rm -f "$log"
			timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -vga none \
				-nodefaults -no-user-config -serial "file:$log" -no-reboot \
				-kernel "$kernel" -append "console=ttyS0 panic=-1 init=/nonexistent" \
				>/dev/null 2>&1 || true
			if grep -aq 'Linux version' "$log" 2>/dev/null; then
				BOOT_ACCEL=kvm
			else
				warn "/dev/kvm is there but a KVM guest did not reach its first console line in 20 s: using software emulation (TCG)"
			fi
		fi
	fi
	export BOOT_ACCEL
}
