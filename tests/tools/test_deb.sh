#!/bin/bash
# The Debian package (tools/package: CPack with tools/pkg) installs and runs
# on this Debian: the test builds the .deb from the source tree, checks its
# control data (dependencies from dpkg-shlibdeps, the conffile, the files'
# places), then installs it with dpkg into a copy of this machine's root
# (an overlay in a mount namespace of its own, so the machine itself is not
# touched) and there:
#   - dpkg -i runs the maintainer scripts: the unit is enabled;
#   - the installed dopad starts with the installed settings file, and the
#     installed dopa downloads a file from a loopback nginx through it;
#   - a site's change to /etc/dopa/dopa.conf survives a reinstall, and the
#     reinstalled dopad, given a plugin directory, finds its dopa-validate
#     in /usr/libexec/dopa;
#   - dpkg -r removes the programs and keeps the settings and the jobs;
#     dpkg -P removes those too.
# Needs root (mounts, chroot, dpkg), unshare, nginx and dpkg-dev; skips
# otherwise. Every process it starts is stopped by pid; the mounts go with
# the namespace.
# usage: test_deb.sh SOURCE_DIR VERSION
set -u
# shellcheck source=tests/tools/common.sh
. "$(dirname "$0")/common.sh"

if [ "${1:-}" = --inside ]; then
        # In the mount namespace: test_deb.sh --inside WORK DEB URL SHA256 VERSION
    work=$2 deb=$3 url=$4 sha=$5 version=$6
    root=$work/ov/root
    dopad_pid=
        stop_dopad() {
        [ -n "$dopad_pid" ] || return 0
        kill "$dopad_pid" 2>/dev/null
        wait "$dopad_pid" 2>/dev/null
        dopad_pid=
    }
        # The dopads in this mount namespace (only this test's processes are
    # in it): none may be left once a check stopped its own.
    dopads_left() {
        mine=$(readlink /proc/self/ns/mnt)
        for p in /proc/[0-9]*; do
            [ "$(cat "$p/comm" 2>/dev/null)" = dopad ] &&
                [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$mine" ] && echo "${p#/proc/}"
        done
    }
    no_dopad_left() {
        left=$(dopads_left)
        [ -z "$left" ] && return 0
        fail "dopad $left still runs after $1"
        for pid in $left; do kill "$pid"; done
    }
    trap stop_dopad EXIT
    trap 'exit 1' INT TERM
        if ! { mkdir -p "$work/ov" && mount -t tmpfs dopa-deb-test "$work/ov" &&
        mkdir "$work/ov/upper" "$work/ov/work" "$root" &&
        mount -t overlay dopa-deb-test -o "lowerdir=/,upperdir=$work/ov/upper,workdir=$work/ov/work" "$root" &&
        mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" &&
        mount -t tmpfs run "$root/run" && mount -t tmpfs tmp "$root/tmp"; }; then
        echo "FAIL: cannot make the overlay root"
        exit 1
    fi
    cp "$deb" "$root/tmp/dopa.deb"
    in_root() {
        chroot "$root" "$@"
    }
        # start_dopad NAME: the installed dopad, as the system instance (chroot
    # execs it, so that $! is dopad's pid).
    start_dopad() {
        chroot "$root" /usr/sbin/dopad >"$work/$1.log" 2>&1 </dev/null &
        dopad_pid=$!
        for _ in $(seq 100); do
            in_root dopa whoami >/dev/null 2>&1 && return 0
            kill -0 "$dopad_pid" 2>/dev/null || break
            sleep 0.05
        done
        fail "the installed dopad does not start ($1):"
        show "$work/$1.log"
        stop_dopad
        no_dopad_left "a failed start"
        return 1
    }

    if in_root dpkg -i /tmp/dopa.deb >"$work/dpkg-i.log" 2>&1; then
        ok "dpkg -i installs it"
    else
        fail "dpkg -i fails:"
        show "$work/dpkg-i.log"
        exit 1
    fi
        # shellcheck disable=SC2016 # dpkg-query's field, not the shell's
    [ "$(in_root dpkg-query -W -f '${Status}' dopa)" = "install ok installed" ] || fail "dpkg does not list dopa as installed"
    if [ -L "$root/etc/systemd/system/multi-user.target.wants/dopad.service" ]; then
        ok "postinst enabled dopad.service"
    else
        fail "postinst did not enable dopad.service"
    fi
    got=$(in_root dopad --version 2>&1)
    [ "$got" = "dopad $version" ] || fail "the installed dopad --version: $got"

    if start_dopad first; then
        if in_root dopa get "$url" -o /root/payload -q >"$work/get.log" 2>&1 &&
            [ "$(sha256sum <"$root/root/payload" | cut -d' ' -f1)" = "$sha" ]; then
            ok "the installed dopa downloaded $url through the installed dopad"
        else
            fail "dopa get through the installed dopad:"
            show "$work/get.log"
        fi
        stop_dopad
        no_dopad_left "the download"
    fi

    # The site's settings survive a reinstall.
    mkdir "$root/etc/dopa/plugins"
    sed -i 's|^#plugin-dir = .*|plugin-dir = /etc/dopa/plugins|' "$root/etc/dopa/dopa.conf"
    if in_root dpkg -i /tmp/dopa.deb >"$work/dpkg-re.log" 2>&1; then
                if grep -qx 'plugin-dir = /etc/dopa/plugins' "$root/etc/dopa/dopa.conf"; then
            ok "a reinstall keeps the site's /etc/dopa/dopa.conf"
        else
            fail "a reinstall lost the change to /etc/dopa/dopa.conf"
        fi
    else
        fail "dpkg -i again fails:"
        show "$work/dpkg-re.log"
    fi
    if start_dopad plugins; then
        ok "with a plugin directory, the installed dopad finds /usr/libexec/dopa/dopa-validate"
        stop_dopad
        no_dopad_left "the reinstall"
    fi

    in_root dpkg -r dopa >"$work/dpkg-r.log" 2>&1 || {
        fail "dpkg -r fails:"
        show "$work/dpkg-r.log"
    }
        if [ -e "$root/usr/sbin/dopad" ] || [ -n "$(find "$root/usr/lib" -name 'libdopa.so*')" ]; then
        fail "dpkg -r left the programs"
    elif [ -f "$root/etc/dopa/dopa.conf" ] && [ -f "$root/var/lib/dopa/dopa.db" ]; then
        ok "dpkg -r removes the programs, keeps the settings and the jobs"
    else
        fail "dpkg -r removed the settings or the job database"
    fi
    in_root dpkg -P dopa >"$work/dpkg-p.log" 2>&1 || {
        fail "dpkg -P fails:"
        show "$work/dpkg-p.log"
    }
        if [ ! -e "$root/etc/dopa/dopa.conf" ] && [ ! -e "$root/var/lib/dopa" ]; then
        ok "dpkg -P removes the settings and dopad's state"
    else
        fail "dpkg -P left /etc/dopa/dopa.conf or /var/lib/dopa"
    fi
    exit "$failures"
fi

src=$1 version=$2
[ "$(id -u)" -eq 0 ] || skip "needs root (mounts an overlay root, chroot and dpkg there)"
for tool in unshare chroot dpkg dpkg-deb dpkg-shlibdeps cpack sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing (tools/install-deps test)"
done
[ -x /usr/sbin/nginx ] || skip "nginx is missing (tools/install-deps test)"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || skip "the kernel has no overlay file system"
unshare -m true 2>/dev/null || skip "cannot make a mount namespace here"
if [ -e /usr/sbin/dopad ] || dpkg-query -W dopa >/dev/null 2>&1; then
    skip "dopa is installed on this machine; the test installs the package over a copy of this root"
fi

work=$(mktemp -d /tmp/dopa-deb-test.XXXXXX) || exit 1
nginx_pid=
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if ! "$src/tools/package" "$work/build" >"$work/package.log" 2>&1; then
    fail "tools/package fails:"
    show "$work/package.log"
    exit 1
fi
deb=$(ls "$work"/build/dopa_*.deb)
case $deb in
*/dopa_"$version"_*.deb) ok "tools/package made $(basename "$deb")" ;;
*) fail "the package is $deb, not version $version" ;;
esac

# --- Control data and file list. ----------------------------------------
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libcurl4 libsodium23 libnng1 libsqlite3-0 libinih1; do
    case ", $depends" in
    *", $lib "* | *", $lib,"*) ;;
    *) fail "Depends lacks $lib: $depends" ;;
    esac
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null | grep -qx /etc/dopa/dopa.conf ||
    fail "/etc/dopa/dopa.conf is not a conffile"
dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$work/files"
for f in /usr/sbin/dopad /usr/bin/dopa /usr/bin/dopa-manifest /usr/libexec/dopa/dopa-validate \
    /usr/lib/systemd/system/dopad.service /usr/lib/systemd/user/dopad.service /etc/dopa/dopa.conf \
    /usr/lib/apt/methods/dopa+http /usr/include/dopa.h /usr/share/man/man8/dopad.8; do
    grep -qx "$f" "$work/files" || fail "the package lacks $f"
done
strays=$(grep -v -e '^/usr/' -e '^/etc/$' -e '^/etc/dopa/' -e '^/$' "$work/files")
[ -z "$strays" ] || fail "the package has files outside /usr and /etc/dopa: $strays"
ok "control data: Depends: $depends"

# --- Installed on a copy of this root. ----------------------------------
mkdir -p "$work/www"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$work/www/payload"
sha=$(sha256sum <"$work/www/payload" | cut -d' ' -f1)
start_nginx "$work/www" "$work" || exit 1
unshare -m --propagation private "$0" --inside "$work" "$deb" "http://127.0.0.1:$port/payload" "$sha" "$version"
inside=$?
failures=$((failures + inside))

[ "$failures" -eq 0 ] || {
    echo "$failures checks failed"
    exit 1
}
echo "all package checks passed"
