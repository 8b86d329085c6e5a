#!/bin/bash
# The APT method end to end, with real apt-get against a repository served
# by a loopback nginx and a dopad of the test's own:
#   - two packages (one depends on the other) are built with dpkg-deb, a
#     flat repository is made with dpkg-scanpackages and a Release file;
#   - `apt-get update` and `apt-get install --download-only` run against a
#     throwaway root (Dir=..., an empty dpkg status) with the method as
#     dopa+http, as the _apt sandbox user: apt succeeds, the .debs are the
#     server's bytes, dopad's jobs (owned by _apt) and counters show them
#     coming through dopad, nginx's log shows the requests;
#   - a second agent in the same group, fed by another apt root, takes the
#     packages from the first agent instead of the origin (the swarm);
#   - a package edited on the server after the index was built is refused
#     (Hash Sum mismatch) and never lands in the archive; a package missing
#     on the server gives apt's 404 error; a dopad that is not there gives a
#     General Failure that says to start it; a partial file is replaced;
#   - the method survives malformed input from its side of the pipe.
# The machine's own package state is not touched: apt works in a temporary
# root and only downloads. Every process started is stopped by pid, every
# file made is removed.
# usage: test_apt.sh PATH/TO/dopa-apt-method PATH/TO/dopad PATH/TO/dopa
set -u
method=$1 dopad=$2 dopa=$3

# shellcheck source=tests/tools/common.sh
. "$(dirname "$0")/common.sh"
[ "$(id -u)" -eq 0 ] || skip "needs root (apt-get drops to its sandbox user, dopad writes as it)"
for tool in apt-get dpkg-deb dpkg-scanpackages gzip sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing (tools/install-deps test)"
done
[ -x /usr/sbin/nginx ] || skip "nginx is missing (tools/install-deps test)"
[ -d /usr/lib/apt/methods ] || skip "apt's methods are not in /usr/lib/apt/methods"

work=$(mktemp -d /tmp/dopa-apt-test.XXXXXX) || exit 1
# The sandbox user must reach the apt roots and dopad's sockets inside.
chmod 755 "$work"
nginx_pid="" dopad_pids=""
cleanup() {
    for pid in $dopad_pids $nginx_pid; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
sandbox=_apt
getent passwd _apt >/dev/null 2>&1 || sandbox=root
echo "apt's sandbox user: $sandbox"

# ---------------------------------------------------------------- packages
# build_deb NAME SIZE_KIB [DEPENDS]: a package of random bytes.
build_deb() {
    name=$1 kib=$2 depends=${3:-}
    root=$work/build/$name
    mkdir -p "$root/DEBIAN" "$root/usr/share/$name"
    head -c $((kib * 1024)) /dev/urandom >"$root/usr/share/$name/payload"
    {
        echo "Package: $name"
        echo "Version: 1.0"
        echo "Architecture: all"
        echo "Maintainer: dopa tests <tests@localhost>"
        [ -n "$depends" ] && echo "Depends: $depends"
        echo "Description: dopa APT method test package"
    } >"$root/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip --build "$root" "$work/www/debian/pool/${name}_1.0_all.deb" \
        >/dev/null || exit 1
}
mkdir -p "$work/www/debian/pool" "$work/tmp" "$work/logs"
build_deb dopa-test-a 300 dopa-test-b
build_deb dopa-test-b 500
build_deb dopa-test-missing 20
build_deb dopa-test-corrupt 100

# A flat repository: Packages (and .gz) from dpkg-scanpackages, a Release
# that lists their hashes, so apt expects a SHA-256 for every file after it.
(
    cd "$work/www/debian" || exit 1
    dpkg-scanpackages --multiversion pool /dev/null >Packages 2>/dev/null || exit 1
    gzip -9kn Packages
    {
        echo "Origin: dopa-test"
        echo "Label: dopa-test"
        echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
        echo "SHA256:"
        for f in Packages Packages.gz; do
            echo " $(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
        done
    } >Release
) || exit 1
# After the index is built: one package disappears, one changes.
rm "$work/www/debian/pool/dopa-test-missing_1.0_all.deb"
corrupt=$work/www/debian/pool/dopa-test-corrupt_1.0_all.deb
printf 'XXXXXXXX' | dd of="$corrupt" bs=1 seek=2000 conv=notrunc 2>/dev/null

# ---------------------------------------------------------------- origin
start_nginx "$work/www" "$work" || exit 1
origin=http://127.0.0.1:$port
echo "origin: $origin/debian"

# ---------------------------------------------------------------- agents
"$dopa" group-key "$work/group.key" >/dev/null || exit 1
peer_base=$(shuf -i 20000-59000 -n 1)
# start_agent N: a dopad of the group on its own socket, state and port,
# with the other agent as its peer.
start_agent() {
    n=$1 other=$((3 - $1))
    mkdir -p "$work/agent$n"
    cat >"$work/agent$n/dopa.conf" <<CONF
[peers]
group-key = $work/group.key
listen = tcp://127.0.0.1:$((peer_base + n))
peer = tcp://127.0.0.1:$((peer_base + other))
beacons = no
CONF
    "$dopad" --config "$work/agent$n/dopa.conf" --socket "$work/agent$n/run/control.sock" \
        --state-dir "$work/agent$n/state" >"$work/logs/dopad$n.log" 2>&1 </dev/null &
    dopad_pids="$dopad_pids $!"
    for _ in $(seq 200); do
        "$dopa" --socket "$work/agent$n/run/control.sock" whoami >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "dopad $n did not start:"
    show "$work/logs/dopad$n.log"
    exit 1
}
start_agent 1
start_agent 2

# ---------------------------------------------------------------- apt
# A methods directory: the system's methods plus this one as dopa+http.
mkdir -p "$work/methods"
for m in /usr/lib/apt/methods/*; do ln -s "$m" "$work/methods/"; done
ln -s "$method" "$work/methods/dopa+http"
ln -s "$method" "$work/methods/dopa+https"

# make_root NAME [SCHEME]: a throwaway apt root (empty dpkg status, no
# system configuration) whose only source is the test repository, through
# dopa+http unless SCHEME says otherwise.
make_root() {
    r=$work/$1 scheme=${2:-dopa+http}
    mkdir -p "$r/etc/apt/apt.conf.d" "$r/etc/apt/preferences.d" "$r/var/lib/apt/lists/partial" \
        "$r/var/cache/apt/archives/partial" "$r/var/lib/dpkg" "$r/var/log/apt"
    : >"$r/var/lib/dpkg/status"
    echo "deb [trusted=yes] $scheme://127.0.0.1:$port/debian ./" >"$r/sources.list"
    # APT_CONFIG names this file: the machine's apt.conf.d stays out.
    cat >"$r/apt.conf" <<CONF
Dir::Etc::main "$r/etc/apt/apt.conf";
Dir::Etc::parts "$r/etc/apt/apt.conf.d";
CONF
}
# run_apt ROOT AGENT LOG ARGS...: apt-get in ROOT, fetching through AGENT.
run_apt() {
    r=$work/$1 agent=$2 log=$3
    shift 3
    APT_CONFIG=$r/apt.conf apt-get -q -y \
        -o Dir="$r" -o Dir::State::status="$r/var/lib/dpkg/status" \
        -o Dir::Etc::sourcelist="$r/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::Bin::Methods="$work/methods" -o APT::Sandbox::User="$sandbox" \
        -o Acquire::dopa::Socket="$work/agent$agent/run/control.sock" \
        -o Debug::Acquire::dopa=true -o Acquire::Retries=0 \
        "$@" >"$log" 2>&1
}
# jobs_of AGENT: dopad's job list, one JSON object a line.
jobs_of() {
    "$dopa" --socket "$work/agent$1/run/control.sock" --json list --all | tr -d '\n' |
        sed 's/},{/}\n{/g'
}
# field NAME: the value of a JSON field on stdin's one line.
field() {
    sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

echo "== apt-get update through agent 1"
make_root root1
if run_apt root1 1 "$work/logs/update1.log" update; then
    ok "apt-get update"
else
    fail "apt-get update"
    show "$work/logs/update1.log"
fi
if ls "$work/root1/var/lib/apt/lists/"*Packages* >/dev/null 2>&1; then
    ok "the package index is in the lists"
else
    fail "no package index in $work/root1/var/lib/apt/lists"
fi
grep -q "unsandboxed" "$work/logs/update1.log" && fail "apt ran the method unsandboxed"

echo "== apt-get install --download-only dopa-test-a (needs dopa-test-b)"
# A partial file left by an earlier try: the method starts over.
head -c 1234 /dev/urandom >"$work/root1/var/cache/apt/archives/partial/dopa-test-b_1.0_all.deb"
if run_apt root1 1 "$work/logs/install1.log" install --download-only dopa-test-a; then
    ok "apt-get install --download-only dopa-test-a"
else
    fail "apt-get install --download-only dopa-test-a"
    show "$work/logs/install1.log"
fi
for p in a b; do
    f=dopa-test-${p}_1.0_all.deb
    if cmp -s "$work/www/debian/pool/$f" "$work/root1/var/cache/apt/archives/$f"; then
        ok "$f is the server's bytes"
    else
        fail "$f is not in the archive as the server has it"
    fi
done

# When the method answered, each file was at apt's Filename, the sandbox
# user's and readable by all.
for p in a b; do
    if grep -q "dopa-apt-method: done: .*/partial/dopa-test-${p}_1.0_all.deb .*owner uid $(id -u "$sandbox"), mode 644)" \
        "$work/logs/install1.log"; then
        ok "dopa-test-$p was handed to apt as $sandbox's, mode 644"
    else
        fail "dopa-test-$p was not handed over as $sandbox's, mode 644"
    fi
done
# Pipelined: both jobs were made before the first of them was done.
first_done=$(grep -n "dopa-apt-method: done:" "$work/logs/install1.log" | head -1 | cut -d: -f1)
second_job=$(grep -n "dopa-apt-method: job .*pool/dopa-test-" "$work/logs/install1.log" | sed -n 2p | cut -d: -f1)
if [ -n "$first_done" ] && [ -n "$second_job" ] && [ "$second_job" -lt "$first_done" ]; then
    ok "the two packages were fetched as two jobs at once"
else
    fail "the packages were not pipelined"
    show "$work/logs/install1.log"
fi

echo "== what dopad and nginx saw"
jobs_of 1 >"$work/logs/jobs1"
deb_bytes=0
for p in a b; do
    f=dopa-test-${p}_1.0_all.deb
    size=$(stat -c %s "$work/www/debian/pool/$f")
    line=$(grep "\"name\":\"apt $f\"" "$work/logs/jobs1" | tail -1)
    state=$(echo "$line" | field state)
    owner=$(echo "$line" | field owner)
    from_origin=$(echo "$line" | field bytes_from_origin)
    if [ "$state" = ACKNOWLEDGED ] && [ "$owner" = "$(id -u "$sandbox")" ] &&
        [ "$from_origin" = "$size" ]; then
        ok "$f: a job of $sandbox, $from_origin bytes from the origin through dopad"
        deb_bytes=$((deb_bytes + size))
    else
        fail "$f: no finished job of $sandbox with its $size bytes: ${line:-none}"
    fi
    if grep -q "^/debian/pool/$f 20[06] $size\$" "$work/logs/access.log"; then
        ok "nginx served $f"
    else
        fail "nginx's log has no full request for $f"
        show "$work/logs/access.log"
    fi
done
stats=$("$dopa" --socket "$work/agent1/run/control.sock" --json stats)
total_origin=$(echo "$stats" | field from_origin)
if [ "${total_origin:-0}" -ge "$deb_bytes" ]; then
    ok "agent 1 received $total_origin bytes from the origin ($deb_bytes of them the two packages)"
else
    fail "agent 1's counters show $total_origin bytes from the origin: $stats"
fi
for f in InRelease Release Packages; do
    grep -q "^/debian/$f" "$work/logs/access.log" || fail "nginx's log has no request for $f"
done

echo "== the swarm: a second machine fetches through agent 2, a peer of agent 1"
make_root root2
if run_apt root2 2 "$work/logs/update2.log" update &&
    run_apt root2 2 "$work/logs/install2.log" install --download-only dopa-test-a; then
    ok "apt-get update and install --download-only through agent 2"
else
    fail "apt-get through agent 2"
    show "$work/logs/update2.log"
    show "$work/logs/install2.log"
fi
jobs_of 2 >"$work/logs/jobs2"
peer_bytes=0 peer_origin_bytes=0
for p in a b; do
    f=dopa-test-${p}_1.0_all.deb
    cmp -s "$work/www/debian/pool/$f" "$work/root2/var/cache/apt/archives/$f" ||
        fail "$f did not reach the second root intact"
    line=$(grep "\"name\":\"apt $f\"" "$work/logs/jobs2" | tail -1)
    from_peers=$(echo "$line" | field bytes_from_peers)
    from_origin=$(echo "$line" | field bytes_from_origin)
    if [ "${from_peers:-0}" -gt 0 ]; then
        ok "$f: $from_peers bytes from agent 1, $from_origin from the origin"
        peer_bytes=$((peer_bytes + from_peers))
        peer_origin_bytes=$((peer_origin_bytes + from_origin))
    else
        fail "$f came to agent 2 without its peer: ${line:-no job}"
    fi
done

echo "== the method standing in for apt's http method (Dir::Bin::Methods::http)"
make_root root3 http
if run_apt root3 1 "$work/logs/http3.log" -o Dir::Bin::Methods::http="$method" update &&
    run_apt root3 1 "$work/logs/http3.log" -o Dir::Bin::Methods::http="$method" \
        install --download-only dopa-test-b &&
    cmp -s "$work/www/debian/pool/dopa-test-b_1.0_all.deb" \
        "$work/root3/var/cache/apt/archives/dopa-test-b_1.0_all.deb" &&
    grep -q "dopa-apt-method: done: .*dopa-test-b_1.0_all.deb" "$work/logs/http3.log"; then
    ok "http:// sources fetched through dopad"
else
    fail "http:// sources through the method"
    show "$work/logs/http3.log"
fi

echo "== apt-get update again: apt sends Last-Modified, the method fetches anyway"
releases_before=$(grep -c "^/debian/Release 20[06] [1-9][0-9]" "$work/logs/access.log")
if run_apt root1 1 "$work/logs/update3.log" -o Debug::pkgAcquire::Worker=true update; then
    ok "a second apt-get update"
else
    fail "a second apt-get update"
    show "$work/logs/update3.log"
fi
releases_after=$(grep -c "^/debian/Release 20[06] [1-9][0-9]" "$work/logs/access.log")
[ "$releases_after" -gt "$releases_before" ] ||
    fail "the second update did not fetch Release again"
if grep -q "600%20URI%20Acquire%0aURI:%20dopa+http://[^%]*/Release%0a.*%0aLast-Modified:%20" \
    "$work/logs/update3.log"; then
    ok "apt asked for Release with Last-Modified; it came whole through dopad"
else
    fail "apt did not send Last-Modified for Release"
fi

# download_fails NAME PACKAGE PATTERN [APT-ARGS...]: installing PACKAGE
# in root1 must fail with apt's "E: Failed to fetch" naming it and PATTERN.
download_fails() {
    name=$1 package=$2 pattern=$3
    shift 3
    if run_apt root1 1 "$work/logs/$name.log" "$@" install --download-only "$package"; then
        fail "$name: apt succeeded"
        show "$work/logs/$name.log"
    elif grep -q "^E: Failed to fetch .*$package.* $pattern" "$work/logs/$name.log"; then
        ok "apt-get fails: $(grep -m1 "^E: Failed to fetch" "$work/logs/$name.log" | cut -c1-160)"
    else
        fail "$name: apt did not fail with \"$pattern\""
        show "$work/logs/$name.log"
    fi
}

echo "== a package changed on the server after its index was built"
download_fails corrupt dopa-test-corrupt "Hash Sum mismatch"
[ -e "$work/root1/var/cache/apt/archives/dopa-test-corrupt_1.0_all.deb" ] &&
    fail "the corrupt package is in the archive"
line=$(jobs_of 1 | grep '"name":"apt dopa-test-corrupt_1.0_all.deb"' | tail -1)
case $line in
*'"context":"VALIDATION"'*) ok "dopad refused it first, checking apt's expected SHA-256" ;;
*) fail "dopad's job for the corrupt package did not fail validation: ${line:-none}" ;;
esac

echo "== a package missing on the server"
download_fails missing dopa-test-missing "404 *Not Found"

echo "== no dopad at the configured socket"
# apt takes the last of two -o for one option.
if run_apt root1 1 "$work/logs/nodopad.log" \
    -o Acquire::dopa::Socket="$work/nowhere/control.sock" update; then
    fail "apt-get update succeeded without dopad"
    show "$work/logs/nodopad.log"
elif grep -q "cannot reach dopad at $work/nowhere/control.sock: start dopad" "$work/logs/nodopad.log"; then
    ok "apt-get fails: $(grep -m1 "cannot reach dopad" "$work/logs/nodopad.log" | cut -c1-150)..."
else
    fail "no word of dopad not running"
    show "$work/logs/nodopad.log"
fi

echo "== the method alone: what APT could send it"
mkdir -p "$work/direct"
# talk FILE [WAIT_FOR]: feeds FILE to the method (as root, no sandbox),
# keeping its input open until a line matching WAIT_FOR comes back (or 10 s);
# the answers go to FILE.out, the exit code to FILE.rc.
talk() {
    { cat "$1"; for _ in $(seq 100); do
        [ -z "${2:-}" ] && break
        grep -q "$2" "$1.out" 2>/dev/null && break
        sleep 0.1
    done; } | "$method" >"$1.out" 2>"$1.err"
    echo $? >"$1.rc"
}
sock1=$work/agent1/run/control.sock
printf 'garbage\n\n' >"$work/direct/garbage"
talk "$work/direct/garbage"
printf '600 URI Acquire\nFilename: %s/direct/x\n\n' "$work" >"$work/direct/nouri"
talk "$work/direct/nouri"
printf '600 URI Acquire\nURI: ftp://127.0.0.1/x\nFilename: %s/direct/x\n\n' "$work" >"$work/direct/ftp"
talk "$work/direct/ftp" "^400"
head -c 5000000 /dev/zero | tr '\0' A >"$work/direct/huge"
talk "$work/direct/huge"
printf '600 URI Acquire\nURI: dopa+http://127.0.0.1/%s\nFilename: %s/direct/x\n\n' \
    "$(head -c 9000 /dev/zero | tr '\0' a)" "$work" >"$work/direct/longuri"
talk "$work/direct/longuri"
# The socket as APT quotes configuration values (%XX), here a %2f for its
# last slash.
printf '601 Configuration\nConfig-Item: Acquire::dopa::Socket=%s\nConfig-Item: Acquire::dopa::Timeout=soon\n\n600 URI Acquire\nURI: dopa+http://127.0.0.1:%s/debian/Release\nFilename: %s/direct/Release\nExpected-SHA256: not-hex\n\n' \
    "$work/agent1/run%2fcontrol.sock" "$port" "$work" >"$work/direct/release"
talk "$work/direct/release" "^20[1]\|^40[01]"
# An origin that refuses connections: a file known by no hash fails at
# once (apt retries it); one with a SHA-256 waits for peers until
# Acquire::dopa::Timeout, then fails.
closed=$((port + 1))
while (exec 3<>"/dev/tcp/127.0.0.1/$closed") 2>/dev/null; do closed=$((closed + 1)); done
printf '601 Configuration\nConfig-Item: Acquire::dopa::Socket=%s\nConfig-Item: Acquire::dopa::Timeout=3\n\n600 URI Acquire\nURI: dopa+http://127.0.0.1:%s/x\nFilename: %s/direct/refused\n\n' \
    "$sock1" "$closed" "$work" >"$work/direct/refused"
talk "$work/direct/refused" "^40[01]"
printf '601 Configuration\nConfig-Item: Acquire::dopa::Socket=%s\nConfig-Item: Acquire::dopa::Timeout=3\n\n600 URI Acquire\nURI: dopa+http://127.0.0.1:%s/y\nFilename: %s/direct/refused-hashed\nExpected-SHA256: %s\n\n' \
    "$sock1" "$closed" "$work" "$(printf x | sha256sum | cut -d' ' -f1)" >"$work/direct/refused-hashed"
t0=$(date +%s)
talk "$work/direct/refused-hashed" "^40[01]"
waited=$(($(date +%s) - t0))
check_direct() { # NAME RC PATTERN: what the method answered to NAME
    rc=$(cat "$work/direct/$1.rc")
    if [ "$rc" = "$2" ] && grep -q "$3" "$work/direct/$1.out"; then
        ok "$1: exit $rc, $(grep -m1 "$3" "$work/direct/$1.out" | cut -c1-100)"
    else
        fail "$1: exit $rc (want $2), no \"$3\""
        show "$work/direct/$1.out"
        show "$work/direct/$1.err"
    fi
}
check_direct garbage 100 "^Message: malformed message from APT"
check_direct nouri 0 "^Message: 600 URI Acquire without a URI"
check_direct ftp 0 "^Message: dopa-apt-method fetches only dopa+http"
check_direct huge 100 "^Message: message from APT longer than"
check_direct longuri 100 "^Message: 600 URI Acquire: URI longer than"
check_direct release 0 "^SHA256-Hash: $(sha256sum "$work/www/debian/Release" | cut -d' ' -f1)"
cmp -s "$work/www/debian/Release" "$work/direct/Release" || fail "the method's Release is not the server's"
check_direct refused 0 "^Transient-Failure: true"
check_direct refused-hashed 0 "^Transient-Failure: true"
[ "$waited" -ge 2 ] || fail "a file known by its SHA-256 failed after ${waited}s, before the timeout"
echo "     (the hashed one after ${waited}s)"
grep -q "Timeout \"soon\" is not" "$work/direct/release.err" || fail "a bad Acquire::dopa::Timeout was not reported"

echo "== a request in flight when the method goes"
mkdir -p "$work/www/slow"
head -c 2000000 /dev/urandom >"$work/www/slow/big"
# slow_job NAME: agent 1's last job for /slow/NAME.
slow_job() {
    jobs_of 1 | grep "uri=dopa+http://127.0.0.1:$port/slow/$1\"" | tail -1
}
# wait_state URL_PART STATE: until its job is in STATE (10 s at most).
wait_state() {
    for _ in $(seq 100); do
        [ "$(slow_job "$1" | field state)" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
for how in TERM KILL; do
    printf '601 Configuration\nConfig-Item: Acquire::dopa::Socket=%s\n\n600 URI Acquire\nURI: dopa+http://127.0.0.1:%s/slow/big?%s\nFilename: %s/direct/big-%s\n\n' \
        "$sock1" "$port" "$how" "$work" "$how" >"$work/direct/slow-$how"
    # Through a fifo held open here, so that only the signal ends it.
    mkfifo "$work/direct/fifo-$how"
    "$method" <"$work/direct/fifo-$how" >/dev/null 2>&1 &
    method_pid=$!
    exec 7>"$work/direct/fifo-$how"
    cat "$work/direct/slow-$how" >&7
    wait_state "big?$how" TRANSFERRING || fail "SIG$how: the slow job did not start"
    kill "-$how" "$method_pid"
    wait "$method_pid" 2>/dev/null
    exec 7>&-
    if [ "$how" = KILL ]; then
        # A later method finds the job of the one that died and cancels it.
        printf '601 Configuration\nConfig-Item: Acquire::dopa::Socket=%s\n\n600 URI Acquire\nURI: dopa+http://127.0.0.1:%s/debian/Release\nFilename: %s/direct/Release2\n\n' \
            "$sock1" "$port" "$work" >"$work/direct/after-kill"
        talk "$work/direct/after-kill" "^20[1]\\|^40[01]"
    fi
    if wait_state "big?$how" CANCELLED; then
        ok "SIG$how: the job is cancelled"
    else
        fail "SIG$how: the job is $(slow_job "big?$how" | field state)"
    fi
done
# A sanitizer build of the method reports into apt's logs or its own.
if grep -l "Sanitizer\|runtime error" "$work"/logs/*.log "$work"/direct/*.err >"$work/sanitized" 2>/dev/null; then
    fail "sanitizer reports in: $(tr '\n' ' ' <"$work/sanitized")"
fi
left=$(find "$work/direct" "$work/root1" "$work/root2" "$work/root3" -name '.dopa-*.part' | wc -l)
[ "$left" -eq 0 ] || fail "$left temporary files of cancelled jobs were left behind"

echo "figures: 2 packages ($deb_bytes bytes) through agent 1 from the origin;" \
    "through agent 2, $peer_bytes bytes from agent 1 and $peer_origin_bytes from the origin"

if [ "$failures" -eq 0 ]; then
    echo "all apt method checks passed"
    exit 0
fi
echo "$failures check(s) failed"
exit 1
