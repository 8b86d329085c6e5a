#!/bin/bash
# The Debian packages (tools/package: CPack with tools/pkg) install and run
# on this Debian: the test builds dopa, libdopa1 and libdopa-dev from the
# source tree, checks their control data (dependencies from
# dpkg-shlibdeps, the conffile, the ldconfig trigger, where each file
# goes) and lintian's verdict, then installs them with dpkg into a copy of
# this machine's root (an overlay in a mount namespace of its own, so the
# machine itself is not touched) and there:
#   - dpkg -i runs the maintainer scripts: the unit is enabled;
#   - the installed dopad starts with the installed settings file, and the
#     installed dopa downloads a file from a loopback nginx through it;
#   - a program built with pkg-config against libdopa-dev talks to it;
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
packages="dopa libdopa1 libdopa-dev"

# ---------------------------------------------------------------- inside
# In the mount namespace: test_deb.sh --inside WORK URL SHA256 VERSION, the
# packages in WORK/build.
inside() {
    work=$1 url=$2 sha=$3 version=$4
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
    no_dopad_left() {
        mine=$(readlink /proc/self/ns/mnt)
        left=
        for p in /proc/[0-9]*; do
            [ "$(cat "$p/comm" 2>/dev/null)" = dopad ] &&
                [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$mine" ] && left="$left ${p#/proc/}"
        done
        [ -z "$left" ] && return 0
        fail "dopad$left still runs after $1"
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
    mkdir "$root/tmp/debs"
    cp "$work"/build/*.deb "$root/tmp/debs/"
    # The installed programs find the installed dopad where a system
    # dopad listens, /run/dopa/control.sock of the overlay root (its /run
    # a tmpfs of this namespace): nothing of the caller's may send them
    # elsewhere.
    unset DOPA_SOCKET
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

    if in_root sh -c 'dpkg -i /tmp/debs/*.deb' >"$work/dpkg-i.log" 2>&1; then
        ok "dpkg -i installs $packages"
    else
        fail "dpkg -i fails:"
        show "$work/dpkg-i.log"
        exit 1
    fi
    for p in $packages; do
        # shellcheck disable=SC2016 # dpkg-query's field, not the shell's
        [ "$(in_root dpkg-query -W -f '${Status}' "$p")" = "install ok installed" ] ||
            fail "dpkg does not list $p as installed"
    done
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
        # A program of one's own, built against the installed libdopa-dev.
        cat >"$root/tmp/app.c" <<'C'
#include <dopa.h>
#include <stdio.h>
int main(void)
{
    dopa_manager *m;
    uint32_t uid;
    char version[64];
    int err = dopa_connect(NULL, &m);
    if (err == 0) {
        err = dopa_whoami(m, &uid, version, sizeof version);
        dopa_disconnect(m);
    }
    if (err != 0) {
        fprintf(stderr, "%s\n", dopa_strerror(err));
        return 1;
    }
    printf("%s\n", version);
    return 0;
}
C
        # shellcheck disable=SC2016 # expanded in the chroot
        if in_root sh -c 'cc -o /tmp/app /tmp/app.c $(pkg-config --cflags --libs libdopa)' >"$work/cc.log" 2>&1; then
            got=$(in_root /tmp/app 2>&1)
            if [ "$got" = "$version" ]; then
                ok "a program built with pkg-config libdopa talks to the installed dopad"
            else
                fail "the program built against libdopa-dev says: $got"
            fi
        else
            fail "cannot build against the installed libdopa-dev:"
            show "$work/cc.log"
        fi
        stop_dopad
        no_dopad_left "the download"
    fi

    # The site's settings survive a reinstall.
    mkdir "$root/etc/dopa/plugins"
    sed -i 's|^#plugin-dir = .*|plugin-dir = /etc/dopa/plugins|' "$root/etc/dopa/dopa.conf"
        if in_root sh -c "dpkg -i /tmp/debs/dopa_${version}_*.deb" >"$work/dpkg-re.log" 2>&1; then
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

    # shellcheck disable=SC2086 # the package names
    in_root dpkg -r $packages >"$work/dpkg-r.log" 2>&1 || {
        fail "dpkg -r fails:"
        show "$work/dpkg-r.log"
    }
    if [ -e "$root/usr/sbin/dopad" ] || [ -n "$(find "$root/usr/lib" -name 'libdopa.so*')" ] ||
        [ -e "$root/usr/include/dopa.h" ]; then
        fail "dpkg -r left the programs or the library"
    elif [ -f "$root/etc/dopa/dopa.conf" ] && [ -f "$root/var/lib/dopa/dopa.db" ]; then
        ok "dpkg -r removes the programs and the library, keeps the settings and the jobs"
    else
        fail "dpkg -r removed the settings or the job database"
    fi
    # shellcheck disable=SC2086
    in_root dpkg -P $packages >"$work/dpkg-p.log" 2>&1 || {
        fail "dpkg -P fails:"
        show "$work/dpkg-p.log"
    }
    if [ ! -e "$root/etc/dopa/dopa.conf" ] && [ ! -e "$root/var/lib/dopa" ]; then
        ok "dpkg -P removes the settings and dopad's state"
    else
        fail "dpkg -P left /etc/dopa/dopa.conf or /var/lib/dopa"
    fi
    exit "$failures"
}
if [ "${1:-}" = --inside ]; then
    inside "$2" "$3" "$4" "$5"
fi

# ---------------------------------------------------------------- outside
src=$1 version=$2
[ "$(id -u)" -eq 0 ] || skip "needs root (mounts an overlay root, chroot and dpkg there)"
for tool in unshare chroot dpkg dpkg-deb dpkg-shlibdeps cpack sha256sum cc pkg-config; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing (tools/install-deps test)"
done
[ -x /usr/sbin/nginx ] || skip "nginx is missing (tools/install-deps test)"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || skip "the kernel has no overlay file system"
unshare -m true 2>/dev/null || skip "cannot make a mount namespace here"
for p in $packages; do
    if dpkg-query -W "$p" >/dev/null 2>&1; then
        skip "$p is installed on this machine; the test installs the packages over a copy of this root"
    fi
done

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
for p in $packages; do
    deb=$(ls "$work/build/${p}_${version}_"*.deb 2>/dev/null)
    if [ -z "$deb" ]; then
        fail "tools/package made no ${p}_$version package: $(cd "$work/build" && ls ./*.deb)"
        exit 1
    fi
    dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$work/files.$p"
done
ok "tools/package made $(cd "$work/build" && ls ./*.deb | tr '\n' ' ')"

# --- Control data and file lists. ---------------------------------------
control() { # control PACKAGE FIELD
    dpkg-deb -f "$work/build/${1}_${version}_"*.deb "$2"
}
control_file() { # control_file PACKAGE FILE: a file of its control archive
    dpkg-deb --ctrl-tarfile "$work/build/${1}_${version}_"*.deb | tar -xO "./$2" 2>/dev/null
}
depends=$(control dopa Depends)
for lib in libc6 libcurl4 libsodium23 libnng1 libsqlite3-0 libinih1; do
    case ", $depends," in
    *", $lib "* | *", $lib,"*) ;;
    *) fail "dopa's Depends lacks $lib: $depends" ;;
    esac
done
case $(control libdopa-dev Depends) in
*"libdopa1 (= $version)"*) ;;
*) fail "libdopa-dev does not depend on libdopa1 (= $version): $(control libdopa-dev Depends)" ;;
esac
control_file dopa conffiles | grep -qx /etc/dopa/dopa.conf || fail "/etc/dopa/dopa.conf is not a conffile"
control_file libdopa1 triggers | grep -qx 'activate-noawait ldconfig' || fail "libdopa1 has no ldconfig trigger"
control_file libdopa1 shlibs | grep -q "^libdopa 1 libdopa1" || fail "libdopa1 has no shlibs file"
# expect PACKAGE FILE...: where each file goes.
expect() {
    p=$1
    shift
    for f in "$@"; do
        grep -qx "$f" "$work/files.$p" || fail "$p lacks $f"
    done
}
expect dopa /usr/sbin/dopad /usr/bin/dopa /usr/bin/dopa-manifest /usr/libexec/dopa/dopa-validate \
    /usr/lib/systemd/system/dopad.service /usr/lib/systemd/user/dopad.service /etc/dopa/dopa.conf \
    /usr/lib/apt/methods/dopa+http /usr/lib/apt/methods/dopa+https /usr/share/man/man8/dopad.8.gz \
    /usr/share/doc/dopa/copyright
expect libdopa1 /usr/lib/x86_64-linux-gnu/libdopa.so.1 /usr/share/doc/libdopa1/copyright \
    /usr/share/lintian/overrides/libdopa1
expect libdopa-dev /usr/include/dopa.h /usr/lib/x86_64-linux-gnu/libdopa.so /usr/lib/x86_64-linux-gnu/libdopa.a \
    /usr/lib/x86_64-linux-gnu/pkgconfig/libdopa.pc /usr/lib/x86_64-linux-gnu/cmake/dopa/dopa-config.cmake \
    /usr/share/man/man3/libdopa.3.gz /usr/share/doc/libdopa-dev/copyright
strays=$(cat "$work"/files.* | grep -v -e '^/usr/' -e '^/etc/$' -e '^/etc/dopa/' -e '^/$')
[ -z "$strays" ] || fail "files outside /usr and /etc/dopa: $strays"
ok "control data; dopa Depends: $depends"
if command -v lintian >/dev/null 2>&1; then
    lintian "$work"/build/*.deb >"$work/lintian.log" 2>&1
    if grep -q '^[EW]: ' "$work/lintian.log"; then
        fail "lintian has errors or warnings:"
        grep '^[EW]: ' "$work/lintian.log" | sed 's/^/    /'
    else
        ok "lintian: no error or warning"
    fi
else
    echo "note: lintian is not installed (tools/install-deps test installs it): not run"
fi

# --- Installed on a copy of this root. ----------------------------------
mkdir -p "$work/www"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$work/www/payload"
sha=$(sha256sum <"$work/www/payload" | cut -d' ' -f1)
start_nginx "$work/www" "$work" || exit 1
unshare -m --propagation private "$0" --inside "$work" "http://127.0.0.1:$port/payload" "$sha" "$version"
inside=$?
failures=$((failures + inside))

[ "$failures" -eq 0 ] || {
    echo "$failures checks failed"
    exit 1
}
echo "all package checks passed"
