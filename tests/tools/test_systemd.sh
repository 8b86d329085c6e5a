#!/bin/sh
# The systemd units (tools/systemd, as the build configured them) are ones
# systemd accepts: `systemd-analyze verify` reads each (the system unit, the
# user unit under a user manager's paths) with its ExecStart= pointed at
# the dopad just built and its Documentation= at the man pages of the
# tree, and must have nothing to say, since it reports an unknown key or a
# bad value as a warning and still exits 0. Also checked: the build put an
# absolute path in ExecStart=, and what the units promise dopad does
# (Type=notify; ExecReload= sends SIGHUP). dopad's side of both is
# tests/dopad/test_reload.c.
# usage: test_systemd.sh SOURCE_DIR UNIT_DIR PATH/TO/dopad
set -u
src=$1 units=$2 dopad=$3
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze is not installed (Debian: apt-get install systemd)"
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM
failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# The man pages the units name, where man finds them.
mkdir -p "$dir/man/man5" "$dir/man/man8" "$dir/system" "$dir/user" "$dir/runtime"
ln -s "$src/tools/man/dopad.8" "$dir/man/man8/dopad.8"
ln -s "$src/tools/man/dopa.conf.5" "$dir/man/man5/dopa.conf.5"
chmod 700 "$dir/runtime"

for pair in dopad.service:system dopad-user.service:user; do
    unit=${pair%%:*} mode=${pair#*:}
    if [ ! -f "$units/$unit" ]; then
        fail "$units/$unit is missing (did the build configure tools/systemd/$unit.in?)"
        continue
    fi
    exec_start=$(sed -n 's/^ExecStart=//p' "$units/$unit")
    case $exec_start in
    /*/dopad) ;;
    *) fail "$unit: ExecStart=$exec_start is not an absolute path to dopad" ;;
    esac
    grep -q '@[A-Z_]*@' "$units/$unit" && fail "$unit: a @VARIABLE@ was left: $(grep -o '@[A-Z_]*@' "$units/$unit")"
    grep -qx 'Type=notify' "$units/$unit" || fail "$unit: not Type=notify"
    # shellcheck disable=SC2016 # systemd expands $MAINPID, not the shell
    grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$units/$unit" || fail "$unit: ExecReload= does not send SIGHUP"

    # Installed under the name dopad.service in both cases.
    sed "s|^ExecStart=.*|ExecStart=$dopad|" "$units/$unit" >"$dir/$mode/dopad.service"
    if [ "$mode" = system ]; then
        MANPATH=$dir/man systemd-analyze verify "$dir/$mode/dopad.service" >"$dir/out" 2>&1
    else
        MANPATH=$dir/man XDG_RUNTIME_DIR=$dir/runtime systemd-analyze --user verify \
            "$dir/$mode/dopad.service" >"$dir/out" 2>&1
    fi
    rc=$?
    if [ $rc -ne 0 ] || [ -s "$dir/out" ]; then
        fail "$unit: systemd-analyze $mode verify (exit $rc) says:"
        sed 's/^/    /' "$dir/out"
    else
        echo "ok   $unit: systemd-analyze verify ($mode) accepts it"
    fi
done

# How exposed the system unit leaves the machine, for the record (systemd
# 252 and later can rate a unit file offline).
if systemd-analyze security --offline=yes "$dir/system/dopad.service" >"$dir/out" 2>&1; then
    echo "note $(grep -o 'Overall exposure level for [^:]*: [0-9.]* [A-Z]*' "$dir/out")"
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures checks failed"
    exit 1
fi
echo "all checks passed"
