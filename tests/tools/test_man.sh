#!/bin/sh
# The man pages (tools/man) and the bash completion (tools/completion) say
# what the programs accept, no more and no less: every page renders without
# a warning; every command and option of dopa, dopa-manifest and dopad is in
# its page and in the completion, and nothing there is made up; the keys of
# dopa.conf(5) are the keys dopad's parser reads, section by section; the
# exit codes are the programs' own; libdopa(3) covers every function and
# error code of dopa.h, its examples compile, and the one that is a program
# downloads a file and reports a failure through its callbacks; the
# completion offers the commands, the options and the ids of the jobs of a
# running dopad.
# usage: test_man.sh SOURCE_DIR PATH/TO/dopa PATH/TO/dopa-manifest PATH/TO/dopad
#                    PATH/TO/libdopa.so [SANITIZER_FLAGS]
# (the flags a sanitizer build's library needs its programs built with)
set -u
src=$1 dopa=$2 manifest=$3 dopad=$4 libdopa=$5 sanitize=${6:-}
man=$src/tools/man
completion=$src/tools/completion/dopa.bash
if ! command -v groff >/dev/null 2>&1; then
    echo "SKIP: groff is not installed (Debian: apt-get install groff-base)"
    exit 77
fi
dir=$(mktemp -d)
dopad_pid=
cleanup() {
    [ -n "$dopad_pid" ] && kill "$dopad_pid" 2>/dev/null && wait "$dopad_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
failures=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# norm PAGE: the page's text with roff's escapes for dashes, fonts,
# hyphenation and backslashes undone, comments left out.
norm() {
    sed -e '/^\.\\"/d' -e 's/\\-/-/g' -e 's/\\%//g' -e 's/\\&//g' -e 's/\\f[BIRP]//g' \
        -e 's/\\f(..//g' -e 's/\\e/\\/g' -e 's/\\(dq/"/g' "$1"
}

# section PAGE NAME: the normalized lines of one .SH section.
section() {
    norm "$1" | awk -v want="$2" '
        /^\.SH / { sub(/^\.SH +/, ""); gsub(/"/, ""); on = ($0 == want); next }
        on'
}

# tags: the first word of each .TP/.TQ tag in the normalized text on stdin,
# without macro names, quotes and trailing commas.
tags() {
    awk '
        tag { tag = 0; sub(/^\.(B|I|BI|BR|IR|RB|RI|IB) +/, ""); gsub(/"/, "");
              split($0, w, " "); sub(/,$/, "", w[1]); print w[1]; next }
        /^\.(TP|TQ)/ { tag = 1 }'
}

# has_word FILE WORD: WORD appears in FILE, not as part of a longer word.
has_word() {
    grep -qE -- "(^|[^A-Za-z0-9_-])$(printf '%s' "$2" | sed 's/[.[\*^$]/\\&/g')([^A-Za-z0-9_-]|$)" "$1"
}

# in_list WORD FILE: WORD is a line of FILE.
in_list() {
    grep -qxF -- "$1" "$2"
}

# --- Every page renders without warnings, with the sections it needs. -----
for page in dopa.1 dopa-manifest.1 dopad.8 dopa.conf.5 libdopa.3; do
    if [ ! -f "$man/$page" ]; then
        fail "$page is missing"
        continue
    fi
    if ! groff -man -Tutf8 -ww -z "$man/$page" >"$dir/warnings" 2>&1 || [ -s "$dir/warnings" ]; then
        fail "$page: groff -man -ww warns:"
        sed 's/^/    /' "$dir/warnings"
    fi
    if command -v man >/dev/null 2>&1; then
        MANWIDTH=80 man --warnings -E UTF-8 -l "$man/$page" >/dev/null 2>"$dir/warnings"
        if [ -s "$dir/warnings" ]; then
            fail "$page: man --warnings warns:"
            sed 's/^/    /' "$dir/warnings"
        fi
    fi
    case $page in
    libdopa.3) needed="NAME SYNOPSIS DESCRIPTION RETURN_VALUE ERRORS EXAMPLES SEE_ALSO" ;;
    dopa.conf.5) needed="NAME SYNOPSIS DESCRIPTION FILES EXAMPLES SEE_ALSO" ;;
    dopa.1) needed="NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS EXIT_STATUS FILES EXAMPLES SEE_ALSO" ;;
    dopa-manifest.1) needed="NAME SYNOPSIS DESCRIPTION COMMANDS EXIT_STATUS FILES EXAMPLES SEE_ALSO" ;;
    *) needed="NAME SYNOPSIS DESCRIPTION OPTIONS EXIT_STATUS FILES EXAMPLES SEE_ALSO" ;;
    esac
    for s in $needed; do
        s=$(echo "$s" | tr _ ' ')
        grep -qx "\.SH \"\{0,1\}$s\"\{0,1\}" "$man/$page" || fail "$page has no $s section"
    done
    echo "ok   $page renders"
done
[ "$failures" -eq 0 ] || { echo "$failures checks failed"; exit 1; }

# --- What the programs accept, from their sources and their --help. -------
# commands PROGRAM SOURCE: the commands the usage lists and the source
# compares its command word with.
commands() {
    "$1" --help | awk '/^  [a-z]/ { n = split($0, w, " "); print w[1];
                                    for (i = 2; i < n && w[i] == "|"; i += 2) print w[i + 1] }'
    grep -o 'strcmp(cmd, "[a-z][a-z-]*")' "$2" | cut -d'"' -f2
    grep -o '{"[a-z][a-z-]*", dopa_job_[a-z_]*}' "$2" | cut -d'"' -f2
}
# options PROGRAM SOURCE...: long options (getopt tables, "--x" literals the
# sources compare with, and --help's text) and short ones (getopt strings
# and "-x" literals).
options() {
    program=$1
    shift
    {
        grep -ho '{"[a-z][a-z0-9-]*", *\(required\|no\|optional\)_argument' "$@" |
            cut -d'"' -f2 | sed 's/^/--/'
        grep -ho '"--[a-z][a-z0-9-]*"' "$@" | tr -d '"'
        "$program" --help | grep -o -- '--[a-z][a-z0-9-]*'
        grep -ho 'getopt_long(argc, argv, "[^"]*"' "$@" | cut -d'"' -f2 | tr -d ':' |
            sed 's/./-&\n/g' | grep .
        grep -ho '"-[a-zA-Z]"' "$@" | tr -d '"'
    } | sort -u
}
commands "$dopa" "$src/tools/dopa.c" | sort -u >"$dir/dopa.commands"
commands "$manifest" "$src/tools/dopa-manifest.c" | sort -u >"$dir/dopa-manifest.commands"
options "$dopa" "$src/tools/dopa.c" >"$dir/dopa.options"
options "$manifest" "$src/tools/dopa-manifest.c" >"$dir/dopa-manifest.options"
# dopad's options: its main (dopad.c), and the settings they set (config.c).
options "$dopad" "$src/agent/daemon/dopad.c" "$src/agent/daemon/config.c" >"$dir/dopad.options"
cat "$dir"/*.options | grep -- '^--' | sort -u >"$dir/all.long"
for f in dopa.commands:25 dopa-manifest.commands:4 dopa.options:12 dopa-manifest.options:10 \
    dopad.options:7; do
    n=$(wc -l <"$dir/${f%:*}")
    [ "$n" -ge "${f#*:}" ] || fail "only $n lines in ${f%:*}: did the sources change shape?"
done

# --- Each command and option is in its page and in the completion. --------
norm "$completion" >"$dir/completion.text"
for prog in dopa dopa-manifest dopad; do
    case $prog in
    dopad) page=dopad.8 ;;
    *) page=$prog.1 ;;
    esac
    norm "$man/$page" >"$dir/$page.text"
    if [ -f "$dir/$prog.commands" ]; then
        section "$man/$page" COMMANDS | tags | grep -v '^-' | sort -u >"$dir/$page.tags"
        while read -r c; do
            in_list "$c" "$dir/$page.tags" || fail "$page: command $c has no entry under COMMANDS"
            has_word "$dir/completion.text" "$c" || fail "completion: no command $c for $prog"
        done <"$dir/$prog.commands"
        while read -r t; do
            in_list "$t" "$dir/$prog.commands" ||
                fail "$page: COMMANDS documents $t, which $prog does not accept"
        done <"$dir/$page.tags"
    fi
    while read -r o; do
        has_word "$dir/$page.text" "$o" || fail "$page: option $o is not documented"
        has_word "$dir/completion.text" "$o" || fail "completion: option $o of $prog is missing"
    done <"$dir/$prog.options"
    echo "ok   $page and the completion cover $prog's commands and options"
done

# Nothing made up: every long option in a page or in the completion is one
# that some program accepts.
for f in "$man"/*.[1-8] "$completion"; do
    norm "$f" | grep -o -- '--[a-z][a-z0-9-]*' | sort -u | while read -r o; do
        in_list "$o" "$dir/all.long" || echo "$o"
    done >"$dir/unknown"
    if [ -s "$dir/unknown" ]; then
        fail "$(basename "$f") names options no program accepts: $(tr '\n' ' ' <"$dir/unknown")"
    fi
done

# --- The exit codes are the programs' own. ---------------------------------
# exit_codes SOURCE: the values of its enum exit_code, else the numbers
# main() returns.
exit_codes() {
    if grep -q '^enum exit_code' "$1"; then
        sed -n '/^enum exit_code/,/^};/p' "$1" | grep -o '= *[0-9]*' | tr -dc '0-9\n'
    else
        sed -n '/^int main/,/^}/p' "$1" | grep -o 'return [0-9]*;' | tr -dc '0-9\n'
    fi | sort -un
}
for pair in dopa.1:tools/dopa.c dopa-manifest.1:tools/dopa-manifest.c dopad.8:agent/daemon/dopad.c; do
    page=${pair%%:*} source=${pair#*:}
    exit_codes "$src/$source" >"$dir/codes.source"
    section "$man/$page" "EXIT STATUS" | tags | sort -un >"$dir/codes.page"
    if ! cmp -s "$dir/codes.source" "$dir/codes.page"; then
        fail "$page: EXIT STATUS lists $(tr '\n' ' ' <"$dir/codes.page")but $source has $(tr '\n' ' ' <"$dir/codes.source")"
    fi
done
echo "ok   exit codes"

# --- dopa.conf(5) documents exactly the keys dopad's parser reads. --------
# The parser, agent/daemon/config.c: on_setting() holds [dopad]'s keys and
# the sections, peer_setting() [peers]'s, metrics_setting() [metrics]'s.
parser=agent/daemon/config.c
awk '
    /^static int peer_setting\(/ { sec = "peers" }
    /^static int metrics_setting\(/ { sec = "metrics" }
    /^static int on_setting\(/ { sec = "dopad" }
    /^}/ { sec = "" }
    sec != "" {
        line = $0
        while (match(line, /strcmp\(name, "[a-z0-9-]+"\)/)) {
            key = substr(line, RSTART + 14, RLENGTH - 16)
            print sec, key
            line = substr(line, RSTART + RLENGTH)
        }
    }' "$src/$parser" | sort -u >"$dir/keys.source"
grep -o 'strcmp(section, "[a-z]*")' "$src/$parser" | cut -d'"' -f2 | sort -u >"$dir/sections.source"
norm "$man/dopa.conf.5" | awk '
    /^\.S[HS] / { sec = ""; if (match($0, /\[[a-z]+\]/)) sec = substr($0, RSTART + 1, RLENGTH - 2); next }
    tag { tag = 0; if (sec != "" && match($0, /^\.BI? "?[a-z0-9-]+ = /)) {
              key = substr($0, RSTART, RLENGTH); sub(/^\.BI? "?/, "", key); sub(/ = $/, "", key)
              print sec, key } }
    /^\.TP/ { tag = 1 }' | sort -u >"$dir/keys.page"
[ "$(wc -l <"$dir/keys.source")" -ge 20 ] || fail "only $(wc -l <"$dir/keys.source") keys found in $parser's parser"
comm -23 "$dir/keys.source" "$dir/keys.page" | while read -r sec key; do
    echo "FAIL: dopa.conf.5: [$sec] $key is not documented"
done >"$dir/missing"
comm -13 "$dir/keys.source" "$dir/keys.page" | while read -r sec key; do
    echo "FAIL: dopa.conf.5: [$sec] $key is documented but dopad does not read it"
done >>"$dir/missing"
if [ -s "$dir/missing" ]; then
    cat "$dir/missing"
    failures=$((failures + $(wc -l <"$dir/missing")))
fi
while read -r s; do
    grep -q "^\.SS \"Section \[$s\]\"" "$man/dopa.conf.5" || fail "dopa.conf.5: no section [$s]"
done <"$dir/sections.source"
norm "$man/dopa.conf.5" >"$dir/conf.text"
# shellcheck disable=SC2016 # the page names the variable, unexpanded
for path in /etc/dopa/dopa.conf '$XDG_CONFIG_HOME/dopa/dopa.conf' --config; do
    grep -qF -- "$path" "$dir/conf.text" || fail "dopa.conf.5 does not say how $path is used"
done
echo "ok   dopa.conf.5 keys: $(wc -l <"$dir/keys.source") read by dopad, $(wc -l <"$dir/keys.page") documented"

# Its example files start a dopad, with their paths moved into a scratch
# directory that holds the keys, plugins and certificates they name.
ex=$dir/etc
mkdir -p "$ex/plugins" "$ex/tls"
if ! "$manifest" keygen -o "$ex/publisher.key" >/dev/null ||
    ! "$dopa" group-key "$ex/group.key" >/dev/null; then
    fail "cannot make keys for the examples"
fi
has_tls=
if command -v openssl >/dev/null 2>&1 &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=dopa \
        -keyout "$ex/tls/key.pem" -out "$ex/tls/cert.pem" >/dev/null 2>&1; then
    cat "$ex/tls/cert.pem" "$ex/tls/key.pem" >"$ex/tls/cache.pem"
    cp "$ex/tls/cert.pem" "$ex/tls/group-ca.pem"
    has_tls=1
fi
awk -v dir="$dir" '/^\.EX/ { n++; on = 1; next } /^\.EE/ { on = 0; next }
    on { print > (dir "/conf-example" n) }' "$man/dopa.conf.5"
# Moves an example's paths into the scratch directory and its peers to
# loopback: to_scratch IN OUT
to_scratch() {
    sed -e 's/\\-/-/g' -e "s|/etc/dopa/|$ex/|g" -e "s|dopa-pub1:\.\.\.|$(grep '^dopa-pub1:' "$ex/publisher.key.pub")|" \
        -e 's|//[a-z0-9.]*:7880|//127.0.0.1:0|' -e 's/^beacons *=.*//' \
        -e 's/^listen = 127\.0\.0\.1:9464/listen = 127.0.0.1:0/' "$1" >"$2"
        sed -i '/^\[peers\]/a beacons = no' "$2"
}
# Whether dopad starts with a settings file, saying nothing on stderr but
# its start: starts NAME FILE (the log is $dir/NAME.log)
starts() {
    "$dopad" --config "$2" --socket "$dir/$1.sock" --state-dir "$dir/$1.state" >"$dir/$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        [ -S "$dir/$1.sock" ] || ! kill -0 "$pid" 2>/dev/null && break
        sleep 0.1
    done
    up=
    [ -S "$dir/$1.sock" ] && up=1
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ -n "$up" ] && ! grep -qi 'warning' "$dir/$1.log"
}
tried=0
for f in "$dir"/conf-example*; do
    head -n 1 "$f" | grep -q '^[[;]' || continue # a file, not a fragment or a command
    grep -q '/etc/dopa/tls/' "$f" && [ -z "$has_tls" ] && continue
    n=${f##*conf-example}
    to_scratch "$f" "$dir/example$n.conf"
    if ! starts "example$n" "$dir/example$n.conf"; then
        fail "dopa.conf.5: dopad does not start cleanly with example $n:"
        sed 's/^/    /' "$dir/example$n.log"
    fi
    tried=$((tried + 1))
done
[ "$tried" -gt 0 ] || fail "dopa.conf.5: no example file was tried"
echo "ok   dopa.conf.5: dopad starts with its $tried example files"

# --- The settings file the package installs (tools/pkg/dopa.conf). -------
# It names every key of every section, commented out, and dopad starts
# with it as it is and with every line that holds a value put in force.
shipped=$src/tools/pkg/dopa.conf
awk '/^\[[a-z]+\]/ { sec = substr($0, 2, length($0) - 2); next }
    match($0, /^#[a-z0-9-]+ =/) { print sec, substr($0, 2, RLENGTH - 3) }' "$shipped" | sort -u >"$dir/keys.shipped"
if ! cmp -s "$dir/keys.source" "$dir/keys.shipped"; then
    fail "tools/pkg/dopa.conf's keys differ from those dopad reads (< dopad, > the file):"
    diff "$dir/keys.source" "$dir/keys.shipped" | grep '^[<>]' | sed 's/^/    /'
fi
if ! starts shipped "$shipped"; then
    fail "dopad does not start cleanly with tools/pkg/dopa.conf:"
    sed 's/^/    /' "$dir/shipped.log"
fi
sed -n 's/^#\([a-z0-9-]* = .\)/\1/p; /^\[/p' "$shipped" >"$dir/shipped-live.in"
to_scratch "$dir/shipped-live.in" "$dir/shipped-live.conf"
live=$(grep -c ' = ' "$dir/shipped-live.conf")
[ "$live" -ge 20 ] || fail "only $live settings of tools/pkg/dopa.conf were put in force"
if ! starts shipped-live "$dir/shipped-live.conf"; then
    fail "dopad does not start cleanly with tools/pkg/dopa.conf's $live settings in force:"
    sed 's/^/    /' "$dir/shipped-live.log"
fi
echo "ok   tools/pkg/dopa.conf: $(wc -l <"$dir/keys.shipped") keys, dopad starts with it and with $live of its settings in force"


# --- libdopa(3) covers dopa.h. --------------------------------------------
header=$src/agent/client/dopa.h
sed -n 's/^[a-z][a-z0-9_ ]*[ *]\(dopa_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u >"$dir/functions"
[ "$(wc -l <"$dir/functions")" -ge 30 ] || fail "only $(wc -l <"$dir/functions") functions found in dopa.h"
section "$man/libdopa.3" SYNOPSIS | grep -o 'dopa_[a-z0-9_]*(' | tr -d '(' | sort -u >"$dir/synopsis"
if ! cmp -s "$dir/functions" "$dir/synopsis"; then
    fail "libdopa.3 SYNOPSIS differs from dopa.h's functions (< header, > page):"
    diff "$dir/functions" "$dir/synopsis" | grep '^[<>]' | sed 's/^/    /'
fi
norm "$man/libdopa.3" >"$dir/libdopa.text"
norm "$man/libdopa.3" | awk '/^\.SH / { skip = ($0 ~ /SYNOPSIS/) } !skip' >"$dir/libdopa.prose"
while read -r f; do
    has_word "$dir/libdopa.prose" "$f" || fail "libdopa.3: $f is not described outside the synopsis"
done <"$dir/functions"
sed -n '/^enum dopa_err/,/^};/p' "$header" | grep -o 'DOPA_E[A-Z_]*' | grep -v '^DOPA_ERR_END$' |
    sort -u >"$dir/errors"
section "$man/libdopa.3" ERRORS | tags | sort -u >"$dir/errors.page"
if ! cmp -s "$dir/errors" "$dir/errors.page"; then
    fail "libdopa.3 ERRORS differs from enum dopa_err (< header, > page):"
    diff "$dir/errors" "$dir/errors.page" | grep '^[<>]' | sed 's/^/    /'
fi
grep -o 'DOPA_\(STATE\|NOTIFY\)_[A-Z_]*[A-Z]' "$header" | sort -u | while read -r c; do
    has_word "$dir/libdopa.text" "$c" || echo "$c"
done >"$dir/unknown"
[ -s "$dir/unknown" ] && fail "libdopa.3 does not name $(tr '\n' ' ' <"$dir/unknown")"
# The examples: each that includes dopa.h compiles against it; one with a
# main is linked with libdopa, to be run below.
programs=
if command -v cc >/dev/null 2>&1; then
    awk -v dir="$dir" '/^\.EX/ { n++; on = 1; next } /^\.EE/ { on = 0; next }
        on { print > (dir "/example" n ".c") }' "$man/libdopa.3"
    found=0
    for ex in "$dir"/example*.c; do
        if [ ! -f "$ex" ] || ! grep -q '#include <dopa.h>' "$ex"; then
            continue
        fi
        found=$((found + 1))
        sed -i -e 's/\\e/\\/g' -e 's/\\-/-/g' -e 's/\\&//g' "$ex"
        # shellcheck disable=SC2086 # the sanitizer's flags are words
        if ! grep -q '^int main(' "$ex"; then
            cc -std=c11 -Wall -Wextra -Werror -fsyntax-only -I"$src/agent/client" "$ex" >"$dir/cc.out" 2>&1
        else
            cc -std=c11 -Wall -Wextra -Werror $sanitize -I"$src/agent/client" -o "${ex%.c}" "$ex" \
                "$libdopa" -Wl,-rpath,"$(dirname "$libdopa")" -lpthread >"$dir/cc.out" 2>&1 &&
                programs="$programs ${ex%.c}"
        fi || {
            fail "libdopa.3: $(basename "$ex") does not compile:"
            sed 's/^/    /' "$dir/cc.out"
        }
    done
    [ "$found" -gt 0 ] || fail "libdopa.3 has no example that includes dopa.h"
    [ -n "$programs" ] || fail "libdopa.3 has no example program (with a main) that builds"
else
    echo "note: no cc, libdopa.3's examples not compiled"
fi
echo "ok   libdopa.3 covers dopa.h ($(wc -l <"$dir/functions") functions)"

# --- The completion loads and completes. ----------------------------------
if ! bash -n "$completion"; then
    fail "dopa.bash does not parse"
fi
# offer FUNCTION WORD...: what FUNCTION offers for the last WORD, one a
# line, in a bash with nothing but the completion loaded.
offer() {
    bash --norc --noprofile -c '
        source "$1" || exit 1
        fn=$2
        shift 2
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        COMPREPLY=()
        "$fn"
        [ ${#COMPREPLY[@]} -eq 0 ] || printf "%s\n" "${COMPREPLY[@]}"' _ "$completion" "$@"
}
bash --norc --noprofile -c 'source "$1" && complete -p dopa dopa-manifest dopad' _ "$completion" \
    >"$dir/registered" 2>&1 || fail "dopa.bash does not register its completions: $(cat "$dir/registered")"

# dopa <TAB> and dopa-manifest <TAB>: the commands, and nothing else.
offer _dopa "$dopa" "" | sort -u >"$dir/offered"
cmp -s "$dir/offered" "$dir/dopa.commands" ||
    fail "dopa <TAB> offers $(tr '\n' ' ' <"$dir/offered")instead of $(tr '\n' ' ' <"$dir/dopa.commands")"
offer _dopa_manifest "$manifest" "" | grep -v '^-' | sort -u >"$dir/offered"
cmp -s "$dir/offered" "$dir/dopa-manifest.commands" ||
    fail "dopa-manifest <TAB> offers $(tr '\n' ' ' <"$dir/offered")"
offer _dopa "$dopa" "set-n" | sort -u | tr '\n' ' ' >"$dir/offered"
[ "$(cat "$dir/offered")" = "set-name set-no-progress-timeout set-notify-cmdline set-notify-flags " ] ||
    fail "dopa set-n<TAB> offers $(cat "$dir/offered")"

# Every long option is offered somewhere: after the program, or after one
# of its commands and up to three arguments.
for prog in dopa dopa-manifest dopad; do
    case $prog in
    dopa) fn=_dopa path=$dopa ;;
    dopa-manifest) fn=_dopa_manifest path=$manifest ;;
    dopad) fn=_dopad path=$dopad ;;
    esac
    {
        offer "$fn" "$path" --
        [ -f "$dir/$prog.commands" ] && while read -r c; do
            offer "$fn" "$path" "$c" --
            offer "$fn" "$path" "$c" a --
            offer "$fn" "$path" "$c" a b --
            offer "$fn" "$path" "$c" a b c --
        done <"$dir/$prog.commands"
    } | sort -u >"$dir/offered"
    grep -- '^--' "$dir/$prog.options" | while read -r o; do
        in_list "$o" "$dir/offered" || echo "$o"
    done >"$dir/unknown"
    [ -s "$dir/unknown" ] && fail "completion never offers $prog's $(tr '\n' ' ' <"$dir/unknown")"
done

# Each command's getopt options, after that command.
awk '
    FNR == 1 { prog = FILENAME; sub(/.*\//, "", prog); sub(/\.c$/, "", prog) }
    /^static int cmd_[a-z_]+\(/ { c = $3; sub(/^cmd_/, "", c); sub(/\(.*/, "", c); gsub(/_/, "-", c) }
    /^}/ { c = "" }
    c != "" && match($0, /\{"[a-z][a-z0-9-]*", *(required|no)_argument/) {
        line = $0
        while (match(line, /\{"[a-z][a-z0-9-]*", *(required|no)_argument/)) {
            o = substr(line, RSTART + 2); sub(/".*/, "", o); print prog, c, "--" o
            line = substr(line, RSTART + RLENGTH)
        }
    }' "$src/tools/dopa.c" "$src/tools/dopa-manifest.c" >"$dir/per-command"
[ "$(wc -l <"$dir/per-command")" -ge 15 ] || fail "only $(wc -l <"$dir/per-command") per-command options found"
while read -r prog c o; do
    if [ "$prog" = dopa ]; then
        offer _dopa "$dopa" "$c" -- | in_list "$o" - || fail "dopa $c --<TAB> does not offer $o"
    else
        offer _dopa_manifest "$manifest" "$c" -- | in_list "$o" - ||
            fail "dopa-manifest $c --<TAB> does not offer $o"
    fi
done <"$dir/per-command"

# Files after -o.
mkdir "$dir/files" && : >"$dir/files/target.bin"
offer _dopa "$dopa" get -o "$dir/files/tar" | in_list "$dir/files/target.bin" - ||
    fail "dopa get -o <TAB> does not offer files"
offer _dopad "$dopad" --state-dir "$dir/fil" | in_list "$dir/files" - ||
    fail "dopad --state-dir <TAB> does not offer directories"

# Job ids: none, quietly and quickly, without a dopad; the jobs of a dopad
# that answers.
start=$(date +%s)
offer _dopa "$dopa" --socket "$dir/none.sock" resume "" >"$dir/offered" 2>"$dir/stderr"
[ -s "$dir/offered" ] && fail "job ids offered without a dopad: $(cat "$dir/offered")"
[ -s "$dir/stderr" ] && fail "completion without a dopad printed: $(cat "$dir/stderr")"
[ $(($(date +%s) - start)) -le 5 ] || fail "completion without a dopad took more than 5 s"
"$dopad" --socket "$dir/dopad.sock" --state-dir "$dir/state" --config /dev/null >"$dir/dopad.log" 2>&1 &
dopad_pid=$!
for _ in $(seq 100); do
    [ -S "$dir/dopad.sock" ] && break
    sleep 0.1
done
job=$("$dopa" --socket "$dir/dopad.sock" create completion-test)
case $job in
????????-????-????-????-????????????)
    offer _dopa "$dopa" --socket "$dir/dopad.sock" resume "" | in_list "$job" - ||
        fail "dopa resume <TAB> does not offer the job $job"
    prefix=$(echo "$job" | cut -c1-6)
    offer _dopa "$dopa" --socket "$dir/dopad.sock" add-file "$prefix" | in_list "$job" - ||
        fail "dopa add-file $prefix<TAB> does not offer $job"
    (export DOPA_SOCKET="$dir/dopad.sock" && offer _dopa "$dopa" wait "") | in_list "$job" - ||
        fail "dopa wait <TAB> does not use \$DOPA_SOCKET"
    offer _dopa "$dopa" --socket "$dir/dopad.sock" set-priority "$job" "" | sort | tr '\n' ' ' |
        grep -qx 'foreground high low normal ' || fail "dopa set-priority JOB <TAB> does not offer priorities"
    ;;
*)
    fail "no job from a test dopad (dopa create said '$job'):"
    sed 's/^/    /' "$dir/dopad.log"
    ;;
esac
echo "ok   completion"

# --- libdopa(3)'s example program, against the same dopad. -----------------
# It fetches a file:// URL (JobTransferred: it completes the job) and a
# missing one (JobError: it says why and fails), each within a minute.
if [ -n "$programs" ] && [ -S "$dir/dopad.sock" ]; then
    was=$failures
    run=$dir/libdopa-run
    mkdir "$run"
    printf 'the bytes of libdopa(3)\n' >"$run/source"
    for program in $programs; do
        name=$(basename "$program")
        if ! DOPA_SOCKET=$dir/dopad.sock timeout 60 "$program" "file://$run/source" "$run/$name.got" \
            >"$run/$name.log" 2>&1 || ! cmp -s "$run/source" "$run/$name.got"; then
            fail "libdopa.3: $name does not download a file:"
            sed 's/^/    /' "$run/$name.log"
        fi
        DOPA_SOCKET=$dir/dopad.sock timeout 60 "$program" "file://$run/none" "$run/$name.none" \
            >"$run/$name.log" 2>&1
        rc=$?
        if [ "$rc" -ne 1 ] || ! grep -q '^failed: .' "$run/$name.log" || [ -e "$run/$name.none" ]; then
            fail "libdopa.3: $name, given a missing file, exits $rc (wanted 1, with the reason):"
            sed 's/^/    /' "$run/$name.log"
        fi
    done
    [ "$failures" -eq "$was" ] &&
        echo "ok   libdopa.3's example program downloads through its callbacks and reports an error"
elif [ -n "$programs" ]; then
    fail "no dopad to run libdopa.3's example program against"
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures checks failed"
    exit 1
fi
echo "all checks passed"
