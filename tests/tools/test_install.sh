#!/bin/bash
# `cmake --install` of this build, staged under DESTDIR, gives a program
# what it needs:
#   - every file in its place under the prefix: the programs (dopad in
#     sbin, dopa-validate in libexec/dopa), libdopa shared and static, dopa.h,
#     libdopa.pc, the CMake package, the units, the man pages, the bash
#     completion, the APT method and the example settings;
#   - libdopa.so.1 exports exactly the functions dopa.h declares, versioned
#     LIBDOPA_1;
#   - a program using dopa.h builds warning-free as strict C11 and links
#     with pkg-config (shared, and static from Libs.private alone) and with
#     CMake's find_package(dopa) (dopa::dopa and dopa::dopa_static), and
#     the library it runs with says the version its dopa.h says;
#   - the installed dopad runs, finds its installed dopa-validate by the
#     path from its own directory, and each of the four programs talks to
#     it through the installed library.
# It starts one dopad of its own and stops it by pid.
# usage: test_install.sh BUILD_DIR VERSION PREFIX LIBDIR [SANITIZER_FLAGS]
# (the flags a sanitizer build's library needs its programs built with)
set -u
build=$1 version=$2 prefix=$3 libdir=$4 sanitize=${5:-}
# shellcheck source=tests/tools/common.sh
. "$(dirname "$0")/common.sh"
for tool in cc pkg-config nm readelf cmake; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing (tools/install-deps test)"
done
dir=$(mktemp -d)
dopad_pid=
cleanup() {
    [ -n "$dopad_pid" ] && kill "$dopad_pid" 2>/dev/null && wait "$dopad_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

root=$dir/root
top=$root$prefix
if ! DESTDIR=$root cmake --install "$build" >"$dir/install.log" 2>&1; then
    fail "cmake --install failed:"
    show "$dir/install.log"
    exit 1
fi

# --- The files. --------------------------------------------------------
missing=0
for f in bin/dopa bin/dopa-manifest sbin/dopad libexec/dopa/dopa-validate \
    "$libdir/libdopa.so.1" "$libdir/libdopa.so" "$libdir/libdopa.a" include/dopa.h \
    "$libdir/pkgconfig/libdopa.pc" "$libdir/cmake/dopa/dopa-config.cmake" \
    "$libdir/cmake/dopa/dopa-config-version.cmake" "$libdir/cmake/dopa/dopa-targets.cmake" \
    lib/systemd/system/dopad.service lib/systemd/user/dopad.service \
        share/man/man1/dopa.1.gz share/man/man1/dopa-manifest.1.gz share/man/man3/libdopa.3.gz \
    share/man/man5/dopa.conf.5.gz share/man/man8/dopad.8.gz share/doc/dopa/copyright \
    share/doc/libdopa1/copyright share/doc/libdopa-dev/copyright share/doc/dopa/changelog.gz \
    share/bash-completion/completions/dopa share/bash-completion/completions/dopad \
    share/bash-completion/completions/dopa-manifest \
    lib/apt/methods/dopa+http lib/apt/methods/dopa+https share/doc/dopa/examples/dopa.conf; do
    if [ ! -e "$top/$f" ]; then
        fail "not installed: $prefix/$f"
        missing=$((missing + 1))
    fi
done
for f in bin/dopa bin/dopa-manifest sbin/dopad libexec/dopa/dopa-validate lib/apt/methods/dopa+http; do
    [ -x "$top/$f" ] || fail "$prefix/$f is not executable"
done
[ "$(readlink "$top/$libdir/libdopa.so.1")" = "libdopa.so.$version" ] ||
    fail "libdopa.so.1 -> $(readlink "$top/$libdir/libdopa.so.1"), not libdopa.so.$version"
grep -qx "ExecStart=$prefix/sbin/dopad" "$top/lib/systemd/system/dopad.service" ||
    fail "the system unit does not start $prefix/sbin/dopad: $(grep ExecStart= "$top/lib/systemd/system/dopad.service")"
# Nothing outside the prefix (but the settings file of a /usr install).
outside=$(cd "$root" && find . -mindepth 1 \( -type f -o -type l \) | sed 's|^\.||' | grep -v "^$prefix/" |
    grep -vx /etc/dopa/dopa.conf)
[ -z "$outside" ] || fail "installed outside $prefix: $outside"
[ "$missing" -eq 0 ] && ok "$(cd "$root" && find . -type f -o -type l | wc -l) files under $prefix, all in place"

# --- libdopa.so exports dopa.h's functions and nothing else. ------------
sed -n 's/^[a-z][a-z0-9_ ]*[ *]\(dopa_[a-z0-9_]*\)(.*/\1/p' "$top/include/dopa.h" | sort -u >"$dir/declared"
nm -D --defined-only "$top/$libdir/libdopa.so.1" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' |
    sort -u >"$dir/exported"
if [ "$(wc -l <"$dir/declared")" -lt 30 ]; then
    fail "only $(wc -l <"$dir/declared") functions found in dopa.h"
elif ! cmp -s "$dir/declared" "$dir/exported"; then
    fail "libdopa.so's exports differ from dopa.h's functions (< dopa.h, > exported):"
    diff "$dir/declared" "$dir/exported" | grep '^[<>]' | sed 's/^/    /'
else
    ok "libdopa.so exports the $(wc -l <"$dir/exported") functions of dopa.h and no other"
fi
# Every one of them, versioned LIBDOPA_1.
nm -D --defined-only "$top/$libdir/libdopa.so.1" | awk '$2 == "T" { print $3 }' | grep -v '@@LIBDOPA_1$' \
    >"$dir/unversioned"
[ -s "$dir/unversioned" ] && fail "libdopa.so's symbols not versioned LIBDOPA_1: $(tr '\n' ' ' <"$dir/unversioned")"
readelf -d "$top/$libdir/libdopa.so.1" | grep -q 'SONAME.*\[libdopa\.so\.1\]' || fail "libdopa.so's SONAME is not libdopa.so.1"

# --- A program of one's own. -------------------------------------------
mkdir -p "$dir/app"
cat >"$dir/app/main.c" <<'C'
#include <dopa.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    dopa_manager *m;
    uint32_t uid;
    char version[64];
    char header[64];
    snprintf(header, sizeof header, "%d.%d.%d", DOPA_VERSION_MAJOR, DOPA_VERSION_MINOR,
             DOPA_VERSION_PATCH);
    if (strcmp(dopa_version(), header) != 0) {
        fprintf(stderr, "dopa: the library is %s, dopa.h %s\n", dopa_version(), header);
        return 1;
    }
    int err = dopa_connect(argc > 1 ? argv[1] : NULL, &m);
    if (err == 0) {
        err = dopa_whoami(m, &uid, version, sizeof version);
        dopa_disconnect(m);
    }
    if (err != 0) {
        fprintf(stderr, "dopa: %s\n", dopa_strerror(err));
        return 1;
    }
    printf("%s\n", version);
    return 0;
}
C
export PKG_CONFIG_PATH=$top/$libdir/pkgconfig PKG_CONFIG_SYSROOT_DIR=$root
[ "$(pkg-config --modversion libdopa)" = "$version" ] ||
    fail "pkg-config --modversion libdopa: $(pkg-config --modversion libdopa 2>&1), not $version"
cflags="-std=c11 -Wall -Wextra -Wpedantic -Werror $sanitize"
# shellcheck disable=SC2046,SC2086 # pkg-config's words are the flags
cc $cflags $(pkg-config --cflags libdopa) -o "$dir/app/pc-shared" "$dir/app/main.c" \
    $(pkg-config --libs libdopa) >"$dir/cc.log" 2>&1 || {
    fail "cannot build against libdopa with pkg-config:"
    show "$dir/cc.log"
}
# Static: the archive and pkg-config's private libraries, nothing more, and
# those static too where they can be (all but the C library's), so that a
# library nng's archive needs and the .pc lacks fails the link.
private=$(pkg-config --static --libs-only-l libdopa | tr ' ' '\n' | grep -v -e '^-ldopa$' -e '^-lpthread$' -e '^$')
# shellcheck disable=SC2046,SC2086
cc $cflags $(pkg-config --cflags libdopa) -o "$dir/app/pc-static" "$dir/app/main.c" \
    "$top/$libdir/libdopa.a" -Wl,-Bstatic $private -Wl,-Bdynamic -lpthread \
    >"$dir/cc.log" 2>&1 || {
    fail "cannot link libdopa.a with pkg-config --static's libraries:"
    show "$dir/cc.log"
}
cat >"$dir/app/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.20)
project(app C)
set(CMAKE_C_STANDARD 11)
find_package(dopa 0.1 CONFIG REQUIRED)
add_executable(cm-shared main.c)
target_link_libraries(cm-shared PRIVATE dopa::dopa)
add_executable(cm-static main.c)
target_link_libraries(cm-static PRIVATE dopa::dopa_static)
CM
if cmake -S "$dir/app" -B "$dir/app/build" -DCMAKE_PREFIX_PATH="$top" -DCMAKE_C_FLAGS="$sanitize" \
    -DCMAKE_EXE_LINKER_FLAGS="$sanitize" >"$dir/cmake.log" 2>&1 &&
    cmake --build "$dir/app/build" >>"$dir/cmake.log" 2>&1; then
    cp "$dir/app/build/cm-shared" "$dir/app/build/cm-static" "$dir/app/"
    grep -q "$top/$libdir/cmake/dopa" "$dir/app/build/CMakeCache.txt" ||
        fail "find_package(dopa) did not find the installed package"
else
    fail "cannot build against find_package(dopa):"
    show "$dir/cmake.log"
fi
for app in pc-static cm-static; do
    [ -x "$dir/app/$app" ] || continue
    readelf -d "$dir/app/$app" | grep -q 'NEEDED.*libdopa' && fail "$app needs libdopa.so"
done
[ -x "$dir/app/pc-static" ] && readelf -d "$dir/app/pc-static" | grep -q 'NEEDED.*libnng' &&
    fail "pc-static needs libnng.so: the static link did not take nng's archive"


# --- The installed dopad, and the programs through the installed library.
mkdir -p "$dir/plugins" "$dir/state"
printf '[dopad]\nplugin-dir = %s\n' "$dir/plugins" >"$dir/dopa.conf"
sock=$dir/control.sock
"$top/sbin/dopad" --config "$dir/dopa.conf" --socket "$sock" --state-dir "$dir/state" \
    >"$dir/dopad.log" 2>&1 </dev/null &
dopad_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] || ! kill -0 "$dopad_pid" 2>/dev/null && break
    sleep 0.05
done
if [ -S "$sock" ]; then
    ok "the installed dopad runs with a plugin directory (it found $prefix/libexec/dopa/dopa-validate)"
else
    fail "the installed dopad does not start:"
    show "$dir/dopad.log"
fi
# Alone, without its libexec beside, it says where it looked.
mkdir -p "$dir/alone"
cp "$top/sbin/dopad" "$dir/alone/"
"$dir/alone/dopad" --config "$dir/dopa.conf" --socket "$dir/alone.sock" --state-dir "$dir/alone" \
        >"$dir/alone.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill "$pid" 2>/dev/null && fail "a dopad without dopa-validate started"
wait "$pid" 2>/dev/null
grep -q "dopa-validate is neither beside dopad nor at $dir/alone/\.\./libexec/dopa/dopa-validate" "$dir/alone.log" ||
    fail "a dopad without dopa-validate does not say where it looked:" "$(cat "$dir/alone.log")"

export LD_LIBRARY_PATH=$top/$libdir
for app in pc-shared pc-static cm-shared cm-static; do
    [ -x "$dir/app/$app" ] || continue
    got=$("$dir/app/$app" "$sock" 2>&1)
    if [ "$got" = "$version" ]; then
        ok "$app: dopad $got through the installed library"
    else
        fail "$app: $got (wanted dopad's version $version)"
    fi
done
ldd "$dir/app/pc-shared" 2>/dev/null | grep -q "libdopa.so.1 => $top/$libdir/libdopa.so.1" ||
    fail "pc-shared does not load the installed libdopa.so.1: $(ldd "$dir/app/pc-shared" | grep dopa)"
got=$("$top/bin/dopa" --socket "$sock" whoami --json 2>&1)
case $got in
*"\"version\":\"$version\""*) ok "the installed dopa talks to it" ;;
*) fail "installed dopa whoami: $got" ;;
esac
"$top/bin/dopa-manifest" --version | grep -qF "$version" || fail "installed dopa-manifest --version"

[ "$failures" -eq 0 ] || {
    echo "$failures checks failed"
    exit 1
}
echo "all install checks passed"
