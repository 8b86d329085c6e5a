#!/bin/sh
# The command lines of dopa and dopa-manifest, as a person or a script
# meets them: usage errors are exit status 2 with one message naming the
# option or argument, even without a dopad; every command has its --help;
# --json may stand anywhere and always gives valid JSON; --version prints
# the project's version; an unreachable dopad, an unknown job and an
# ambiguous prefix say what to do; progress is drawn on a terminal only.
# It starts a dopad of its own on a scratch socket and stops it by pid.
# Every command names that dopad, or a socket in the scratch directory
# where none listens: never one the machine runs (DOPA_SOCKET names the
# latter when a command names none).
# usage: test_cli.sh VERSION PATH/TO/dopa PATH/TO/dopa-manifest PATH/TO/dopad
set -u
version=$1 dopa=$2 manifest=$3 dopad=$4
# shellcheck source=tests/tools/common.sh
. "$(dirname "$0")/common.sh"
dir=$(mktemp -d)
dopad_pid=
cleanup() {
    [ -n "$dopad_pid" ] && kill "$dopad_pid" 2>/dev/null && wait "$dopad_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cd "$dir" || exit 1
none=$dir/none.sock # no dopad there
sock=$dir/dopad.sock
export DOPA_SOCKET="$none"

# run COMMAND...: runs it, stdout in out, stderr in err, status in rc.
run() {
    "$@" >out 2>err </dev/null
    rc=$?
}

show() {
    echo "    exit $rc; stdout:"
    sed 's/^/      /' out
    echo "    stderr:"
    sed 's/^/      /' err
}

# expect CODE SUBSTRING COMMAND...: exits with CODE, SUBSTRING (empty:
# anything) on stdout or stderr.
expect() {
    want=$1 text=$2
    shift 2
    run "$@"
    if [ "$rc" -ne "$want" ] || { [ -n "$text" ] && ! cat out err | grep -qF -- "$text"; }; then
        fail "$* -> exit $rc (want $want and \"$text\")"
        show
    else
        echo "ok   $*"
    fi
}

# usage CODE_TEXT COMMAND...: a usage error: exit 2, one message on
# stderr (the complaint, then where the usage is), nothing on stdout,
# nothing from getopt itself.
usage() {
    text=$1
    shift
    run "$@"
    if [ "$rc" -ne 2 ] || [ -s out ] || [ "$(wc -l <err)" -ne 2 ] ||
        ! grep -qF -- "$text" err || ! tail -n 1 err | grep -q -- "--help\` for" ||
        grep -q 'unrecognized\|invalid option\|requires an argument' err; then
        fail "$* -> not one usage error saying \"$text\""
        show
    else
        echo "ok   $* (usage)"
    fi
}

# is_json FILE: FILE holds exactly one JSON document, in UTF-8. field FILE
# KEY: the value of KEY in it. jq first: it starts much faster.
if command -v jq >/dev/null 2>&1; then
    is_json() { iconv -f UTF-8 -t UTF-8 "$1" >/dev/null 2>&1 && [ "$(jq -s length "$1" 2>/dev/null)" = 1 ]; }
    field() { jq -r ".$2" "$1"; }
elif command -v python3 >/dev/null 2>&1; then
    is_json() { python3 -m json.tool "$1" >/dev/null 2>&1; }
    field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
else
    echo "note: neither python3 nor jq: JSON is not checked"
    is_json() { :; }
    field() { :; }
fi

# json CODE COMMAND...: exits with CODE and prints one valid JSON document.
json() {
    want=$1
    shift
    run "$@"
    if [ "$rc" -ne "$want" ] || ! is_json out; then
        fail "$* -> exit $rc (want $want) or not JSON"
        show
    else
        echo "ok   $* (json)"
    fi
}

# on_tty FILE COMMAND...: runs the command on a terminal (script(1)),
# everything it writes in FILE; its status in rc. Arguments hold no quote.
on_tty() {
    file=$1
    shift
    line=
    for a in "$@"; do line="$line '$a'"; done
    script -qec "$line" /dev/null >"$file" 2>&1 </dev/null
    rc=$?
}
cr=$(printf '\r')

# --- Without a dopad: usage errors are 2, each with one message. ---------
D="$dopa --socket $none"
usage "--socket needs a path" "$dopa" --socket
usage "--socket needs a path" "$dopa" --socket= list
usage "--socket needs a path" "$dopa" list --socket
usage "unknown option --bogus" "$dopa" --bogus list
usage "missing command" "$dopa"
usage "frobnicate: unknown command" $D frobnicate
usage "get: unknown option --bogus" $D get --bogus
usage "get: unknown option -x" $D get -x http://h/f -o f
usage "get: need URL and -o FILE" $D get http://h/f
usage "get: -o needs a file name" $D get http://h/f -o
usage "get: --quiet takes no value" $D get --quiet=yes http://h/f -o f
usage "--priority urgent" $D get http://h/f -o f --priority urgent
usage "--sha256 beef: need 64 hex digits" $D get http://h/f -o f --sha256 beef
usage "--retry-delay 0: need seconds" $D get http://h/f -o f --retry-delay 0
usage "add-file: unknown option --bogus" $D add-file --bogus
usage "add-file: need JOB URL FILE" $D add-file 1234 http://h/f
usage "--range 5: need OFFSET:LENGTH" $D add-file 1234 http://h/f f --range 5
usage "--range needs OFFSET:LENGTH" $D add-file 1234 http://h/f f --range
usage "create: unexpected argument b" $D create a b
usage "resume: need JOB" $D resume
usage "abc: not a job id" $D resume abc
usage "first 4 characters" $D info zzzz
usage "unexpected argument b" $D info 1234 b
for c in suspend cancel complete take-ownership files get-error get-notify get-proxy; do
    usage "$c: need JOB" $D $c
done
usage "list: unknown option --mine" $D list --mine
usage "list: unexpected argument x" $D list x
usage "monitor: unexpected argument b" $D monitor 1234 b
usage "wait: need JOB" $D wait
usage "wait: --timeout needs seconds" $D wait 1234 --timeout
usage "--timeout soon: need seconds" $D wait 1234 --timeout soon
usage "urgent: foreground, high, normal or low" $D set-priority 1234 urgent
usage "set-name: need JOB NAME" $D set-name 1234
usage "set-description: need JOB TEXT" $D set-description
usage "0: need seconds" $D set-min-retry-delay 1234 0
usage "x: need seconds" $D set-no-progress-timeout 1234 x
usage "bogus: system, none or override" $D set-proxy 1234 bogus
usage "bogus: not transferred" $D set-notify-flags 1234 bogus
usage "PROGRAM must be an absolute path" $D set-notify-cmdline 1234 prog
usage "--clear takes nothing after it" $D set-notify-cmdline 1234 --clear x
usage "need a file index" $D validate 1234 x valid
usage "maybe: valid or invalid" $D validate 1234 0 maybe
usage "0: need seconds" $D set-validation-policy 1234 0 valid
usage "whoami: unexpected argument x" $D whoami x
usage "stats: unexpected argument x" $D stats x
usage "group-key: need FILE" $D group-key
usage "group-key: unknown option --bogus" $D group-key --bogus k
usage "bogus: unknown command" $D help bogus

# A command that is right, without a dopad: 3, naming the socket tried and
# how to start one.
expect 3 "cannot reach dopad at $none (no socket there)" $D list
grep -qF "start dopad there (\`dopad --socket $none\`)" err || fail "no way to start dopad: $(cat err)"
expect 3 "cannot reach dopad at $none" env DOPA_SOCKET="$none" "$dopa" whoami

# Naming no socket, with no dopad of the user's own: the system dopad's,
# /run/dopa/control.sock. Where the machine runs one, it must not answer:
# as root, the command runs in a mount namespace of its own with a tmpfs
# over /run; otherwise only when nothing is there.
default="cannot reach dopad at /run/dopa/control.sock (no socket there)"
if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then
    # shellcheck disable=SC2016 # "$@" is the inner shell's
    expect 3 "$default" unshare --mount sh -c 'mount -t tmpfs dopa-test /run && exec "$@"' sh \
        env DOPA_SOCKET= XDG_RUNTIME_DIR="$dir/run" "$dopa" list
    grep -qF 'systemctl start dopad' err || fail "no systemctl for the system instance: $(cat err)"
elif [ -e /run/dopa/control.sock ] || [ -L /run/dopa/control.sock ]; then
    echo "SKIP: dopa naming no socket: not tried, since /run/dopa/control.sock is there and" \
        "only root can hide it"
else
    expect 3 "$default" env DOPA_SOCKET= XDG_RUNTIME_DIR="$dir/run" "$dopa" list
    if [ "$(id -u)" = 0 ]; then
        grep -qF 'systemctl start dopad' err || fail "no systemctl for the system instance: $(cat err)"
    else
        grep -qF 'or your own' err || fail "no word of a dopad of one's own: $(cat err)"
    fi
fi

# --- Help and version. -----------------------------------------------------
expect 0 "exit codes:" "$dopa" --help
expect 0 "exit codes:" "$dopa" help
"$dopa" --help | awk '/^  [a-z]/ { print $1 }' >commands
[ "$(wc -l <commands)" -ge 25 ] || fail "only $(wc -l <commands) commands in dopa --help"
while read -r c; do
    for form in "$c --help" "$c -h" "help $c" "--socket $none $c --help"; do
        # shellcheck disable=SC2086 # the form is words
        run "$dopa" $form
        if [ "$rc" -ne 0 ] || ! head -n 1 out | grep -q "^usage: dopa $c\b" || [ -s err ]; then
            fail "dopa $form: exit $rc, not the usage of $c"
            show
        fi
    done
done <commands
echo "ok   dopa COMMAND --help, -h and dopa help COMMAND for $(wc -l <commands) commands"
expect 0 "-o, --output FILE" "$dopa" get --help
grep -qF -- "-q, --quiet" out || fail "dopa get --help does not name -q, --quiet"
expect 0 "first 4 characters" "$dopa" info --help
expect 0 "dopa $version" "$dopa" --version
[ "$(cat out)" = "dopa $version" ] || fail "dopa --version printed $(cat out)"
json 0 "$dopa" --json --version
[ "$(field out version)" = "$version" ] || fail "dopa --json --version: $(cat out)"

# --- With a dopad. ---------------------------------------------------------
"$dopad" --socket "$sock" --state-dir "$dir/state" --config /dev/null >dopad.log 2>&1 &
dopad_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && break
    sleep 0.1
done
[ -S "$sock" ] || { fail "dopad did not start:"; cat dopad.log; exit 1; }
D="$dopa --socket $sock"

# --socket in every form, before and after the command.
expect 0 "uid" "$dopa" --socket="$sock" whoami
expect 0 "uid" "$dopa" whoami --socket "$sock"
expect 0 "uid" "$dopa" whoami --socket="$sock"
expect 0 "uid" env DOPA_SOCKET="$sock" "$dopa" whoami

# --json before or after the command, every command that prints.
json 0 $D --json whoami
json 0 $D whoami --json
[ "$(field out version)" = "$version" ] || fail "whoami --json: version $(cat out)"
json 0 $D create 'a "quoted" name\ and more' --json
job=$(field out id)
json 0 $D info "$job" --json
[ "$(field out name)" = 'a "quoted" name\ and more' ] || fail "the name did not survive JSON: $(cat out)"
json 0 $D --json list
json 0 $D list --json
json 0 $D list --all --json
json 0 $D files "$job" --json
json 0 $D get-error --json "$job"
json 0 $D get-notify "$job" --json
json 0 $D get-proxy "$job" --json
json 0 $D stats --json
json 5 $D wait "$job" --timeout 1 --json
json 0 $D --json group-key "$dir/key\"with
newline"
# A file name that is not UTF-8 is still valid JSON, and its UTF-8 stays.
bad=$(printf 'k\377\303\251y')
json 0 $D --json group-key "$dir/$bad"
grep -q "k\\\\ufffd$(printf '\303\251')y" out || fail "group-key --json: $(cat out)"
expect 0 "" $D set-name "$job" -- --json
json 0 $D --json info "$job"
[ "$(field out name)" = "--json" ] || fail "after --, --json was not an argument: $(cat out)"

# Unknown and ambiguous jobs: say so, and point at dopa list.
expect 4 "no such job" $D info 00000000-0000-4000-8000-000000000000
grep -qF "\`dopa list\` shows your jobs" err || fail "info of no job: $(cat err)"
expect 4 "ffff0000: no such job" $D resume ffff0000
grep -qF "\`dopa list\`" err || fail "a prefix of no job: $(cat err)"
# Two jobs that share their first 4 characters (about 300 jobs make a pair).
prefix=
for i in $(seq 2000); do
    "$dopa" --socket "$sock" create "ambiguous $i" >>ids || break
    if [ $((i % 25)) -eq 0 ]; then
        prefix=$(cut -c1-4 ids | sort | uniq -d | head -n 1)
        [ -n "$prefix" ] && break
    fi
done
if [ -n "$prefix" ]; then
    expect 4 "$prefix: matches" $D info "$prefix"
    grep -qF "give more of the id" err || fail "an ambiguous prefix: $(cat err)"
    grep -qF "\`dopa list\`" err || fail "an ambiguous prefix: $(cat err)"
else
    fail "no two of $(wc -l <ids) jobs share 4 characters"
fi

# --- Progress: on a terminal only, never with --quiet or --json. -----------
if [ "$(id -u)" = 0 ]; then
    head -c 3000000 /dev/urandom >origin.bin
    url=file://$dir/origin.bin
    # Not a terminal: nothing but the result.
    expect 0 "$dir/plain.bin: 2.9 MiB" $D get "$url" -o "$dir/plain.bin"
    [ -s err ] && fail "dopa get wrote on stderr off a terminal: $(cat err)"
    cmp -s origin.bin plain.bin || fail "plain.bin differs"
    expect 0 "" $D get "$url" -o "$dir/quiet.bin" -q
    [ -s out ] || [ -s err ] && fail "dopa get -q printed: $(cat out err)"
    json 0 $D get "$url" -o "$dir/json.bin" --json
    [ -s err ] && fail "dopa get --json wrote on stderr: $(cat err)"
    if command -v script >/dev/null 2>&1; then
        on_tty tty.out "$dopa" --socket "$sock" get "$url" -o "$dir/tty.bin"
        [ "$rc" -eq 0 ] && grep -q "$cr\[#*\.*\] .* / 2.9 MiB" tty.out ||
            fail "dopa get on a terminal drew no progress bar: $(cat -v tty.out)"
        on_tty tty.out "$dopa" --socket "$sock" get "$url" -o "$dir/tty-q.bin" --quiet
        [ "$rc" -eq 0 ] && ! grep -q "$cr\[" tty.out ||
            fail "dopa get --quiet on a terminal: $(cat -v tty.out)"
        on_tty tty.out "$dopa" --socket "$sock" get "$url" -o "$dir/tty-j.bin" --json
        [ "$rc" -eq 0 ] && ! grep -q "$cr\[" tty.out ||
            fail "dopa get --json on a terminal: $(cat -v tty.out)"
        "$dopa" --socket "$sock" create waited >id
        job=$(cat id)
        "$dopa" --socket "$sock" add-file "$job" "$url" "$dir/waited.bin"
        "$dopa" --socket "$sock" resume "$job"
        on_tty tty.out "$dopa" --socket "$sock" wait "$job"
        [ "$rc" -eq 0 ] && grep -q "$cr\[" tty.out && grep -q TRANSFERRED tty.out ||
            fail "dopa wait on a terminal drew no progress bar: $(cat -v tty.out)"
        on_tty tty.out "$dopa" --socket "$sock" wait "$job" -q
        [ "$rc" -eq 0 ] && ! grep -q "$cr\[" tty.out ||
            fail "dopa wait -q on a terminal: $(cat -v tty.out)"
        echo "ok   progress bars on a terminal only"
    else
        echo "note: no script(1): progress on a terminal not checked"
    fi
else
    echo "note: not root: file:// downloads (and the progress checks) skipped"
fi

# monitor off a terminal: listings without control characters, one JSON
# document a line; it ends when its reader goes away.
timeout -s INT --preserve-status 3 "$dopa" --socket "$sock" monitor >mon.out 2>err
rc=$?
[ "$rc" -eq 0 ] || fail "monitor interrupted: exit $rc, $(cat err)"
[ "$(grep -c 'ambiguous 1$' mon.out)" -ge 2 ] || fail "monitor showed $(wc -l <mon.out) lines"
grep -q "$(printf '\033')" mon.out && fail "monitor wrote control characters off a terminal"
timeout -s INT --preserve-status 3 "$dopa" --socket "$sock" monitor --json >mon.out 2>err
[ "$(wc -l <mon.out)" -ge 2 ] || fail "monitor --json: $(wc -l <mon.out) lines"
while read -r doc; do
    printf '%s\n' "$doc" >doc.json
    is_json doc.json || fail "monitor --json: not a document a line: $doc"
done <mon.out
timeout 10 sh -c "'$dopa' --socket '$sock' monitor | head -n 1 >/dev/null"
[ $? -eq 124 ] && fail "monitor went on after its reader left"
echo "ok   monitor off a terminal"

# --- dopa-manifest. ------------------------------------------------------
M=$manifest
head -c 200000 /dev/urandom >data
usage "missing command" "$M"
usage "unknown command frob" "$M" frob
usage "unknown option --bogus" "$M" --bogus
usage "create: unknown option --bogus" "$M" create --bogus data
usage "keygen: -o needs a value" "$M" keygen -o
usage "keygen: --force takes no value" "$M" keygen --force=yes
usage "keygen: unexpected argument x" "$M" keygen x
usage "verify: unknown option --pieces" "$M" verify --pieces data data.m
usage "show: need exactly one MANIFEST" "$M" show
for c in keygen create verify show help; do
    expect 0 "usage: dopa-manifest $c" "$M" "$c" --help
    expect 0 "usage: dopa-manifest $c" "$M" help "$c"
done
expect 0 "usage: dopa-manifest create" "$M" create -h
expect 0 "exit codes:" "$M" --help
expect 0 "dopa-manifest $version" "$M" --version
[ "$(cat out)" = "dopa-manifest $version" ] || fail "dopa-manifest --version printed $(cat out)"
json 0 "$M" --version --json

json 0 "$M" keygen -o pub.key --json
[ "$(field out public_key)" = pub.key.pub ] || fail "keygen --json: $(cat out)"
json 0 "$M" --json create data --key pub.key -o data.m
[ "$(field out piece_count)" = 1 ] || fail "create --json: $(cat out)"
json 0 "$M" create data --key pub.key -o data.m --version 9 --json
[ "$(field out content_version)" = 9 ] || fail "create --json: $(cat out)"
json 0 "$M" verify data data.m --pubkey pub.key.pub --json
[ "$(field out ok)" = True ] || [ "$(field out ok)" = true ] || fail "verify --json: $(cat out)"
change_byte data 100
json 1 "$M" --json verify data data.m --pubkey pub.key.pub
[ "$(field out ok)" = False ] || [ "$(field out ok)" = false ] || fail "verify --json: $(cat out)"
grep -q "does not match" err || fail "verify --json of a mismatch said nothing on stderr"
json 0 "$M" show data.m --json
json 0 "$M" --json show data.m --pieces

if [ "$failures" -ne 0 ]; then
    echo "$failures checks failed"
    exit 1
fi
echo "all checks passed"
