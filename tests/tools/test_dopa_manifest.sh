#!/bin/sh
# dopa-manifest end to end: keygen, create, verify, show, and every exit
# code a publisher can meet.
# usage: test_dopa_manifest.sh PATH/TO/dopa-manifest
set -u
tool=$1
# shellcheck source=tests/tools/common.sh
. "$(dirname "$0")/common.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM
cd "$dir" || exit 1

# expect CODE SUBSTRING COMMAND...: the command exits with CODE and prints
# SUBSTRING (on stdout or stderr; empty matches anything).
expect() {
    want=$1 text=$2
    shift 2
    "$@" >out 2>&1
    got=$?
    if [ "$got" -ne "$want" ] || ! grep -qF -- "$text" out; then
        echo "FAIL: $* -> exit $got (want $want), output:"
        sed 's/^/    /' out
        failures=$((failures + 1))
    else
        echo "ok   $*"
    fi
}

head -c 3000000 /dev/urandom >data
umask 022

expect 0 "key id:" "$tool" keygen -o pub.key
[ "$(stat -c %a pub.key)" = 600 ] || { echo "FAIL: secret key mode $(stat -c %a pub.key)"; failures=$((failures + 1)); }
[ "$(stat -c %a pub.key.pub)" = 644 ] || { echo "FAIL: public key mode"; failures=$((failures + 1)); }
expect 4 "use --force" "$tool" keygen -o pub.key
expect 0 "" "$tool" keygen -o other.key

expect 0 "46 pieces of 65536" "$tool" create data --key pub.key --piece-size 64K --version 7
expect 0 "content id" "$tool" create data --key pub.key -o data.1m
expect 0 "piece size:      1048576 bytes" "$tool" show data.1m
expect 0 "OK data: 3000000 bytes, 46 pieces match" "$tool" verify data data.dopa-manifest --pubkey pub.key.pub
expect 0 "signature:       valid, trusted key" "$tool" show data.dopa-manifest --pubkey pub.key.pub
expect 0 "content version: 7" "$tool" show data.dopa-manifest
expect 0 '"piece_count":46' "$tool" show --json --pieces data.dopa-manifest
key_text=$(grep '^dopa-pub1:' pub.key.pub)
expect 0 "OK data" "$tool" verify data data.dopa-manifest --pubkey "$key_text"
expect 0 "OK data" "$tool" verify data data.dopa-manifest --pubkey other.key.pub --pubkey pub.key.pub
sha=$(sha256sum data | cut -d' ' -f1)
expect 0 "sha256:          $sha" "$tool" show data.dopa-manifest
b2=$(b2sum -l 256 data | cut -d' ' -f1)
expect 0 "blake2b:         $b2" "$tool" show data.dopa-manifest

# Content that does not match: exit 1, naming the first bad piece.
cp data changed
change_byte changed 200000
expect 1 "the first is piece 3" "$tool" verify changed data.dopa-manifest --pubkey pub.key.pub
head -c 2999999 data >short
expect 1 "file has 2999999 bytes" "$tool" verify short data.dopa-manifest --pubkey pub.key.pub

# Manifests that must be refused: exit 3.
expect 3 "untrusted key" "$tool" verify data data.dopa-manifest --pubkey other.key.pub
cp data.dopa-manifest tampered
printf '\001' | dd of=tampered bs=1 seek=20 conv=notrunc 2>/dev/null
expect 3 "signature is invalid" "$tool" verify data tampered --pubkey pub.key.pub
expect 3 "bad magic" "$tool" show data
cat data.dopa-manifest data.dopa-manifest >doubled
expect 3 "trailing bytes" "$tool" show doubled
head -c 500 data.dopa-manifest >cut
expect 3 "truncated" "$tool" show cut
expect 0 "" "$tool" create data --key pub.key --expires 1s -o soon
sleep 2
expect 3 "expired" "$tool" verify data soon --pubkey pub.key.pub
expect 0 "expires never" "$tool" create data --key pub.key --expires never -o forever
expect 0 "expires:         2099-01-02T03:04:05Z" sh -c "'$tool' create data --key pub.key --expires 2099-01-02T03:04:05Z -o dated >/dev/null && '$tool' show dated"

# Keys and files that are wrong: exit 4.
chmod 644 pub.key
expect 4 "chmod 600" "$tool" create data --key pub.key
chmod 600 pub.key
cp data.dopa-manifest notakey && chmod 600 notakey
expect 4 "not a dopa secret key" "$tool" create data --key notakey
expect 4 "not a dopa secret key (larger than" "$tool" create data --key data
expect 4 "No such file" "$tool" create missing --key pub.key
expect 4 "No such file" "$tool" verify missing data.dopa-manifest --pubkey pub.key.pub
expect 4 "not a dopa public key" "$tool" verify data data.dopa-manifest --pubkey data

# Usage errors: exit 2.
expect 2 "missing command" "$tool"
expect 2 "unknown command" "$tool" frobnicate
expect 2 "--key KEY is required" "$tool" create data
expect 2 "power of two" "$tool" create data --key pub.key --piece-size 100K
expect 2 "power of two" "$tool" create data --key pub.key --piece-size 32M
expect 2 "that time has passed" "$tool" create data --key pub.key --expires 2001-01-01
expect 2 "need never" "$tool" create data --key pub.key --expires tomorrow
expect 2 "need a non-negative integer" "$tool" create data --key pub.key --version -3
expect 2 "--pubkey KEY is required" "$tool" verify data data.dopa-manifest
expect 4 "malformed public key" "$tool" verify data data.dopa-manifest --pubkey dopa-pub1:xyz
expect 2 "need a non-negative integer" "$tool" create data --key pub.key --version " -3"
expect 2 "need never" "$tool" create data --key pub.key --expires 2030-02-31
expect 2 "need never" "$tool" create data --key pub.key --expires " 5d"
expect 0 "exit codes" "$tool" --help

# A file too large for the pieces asked for is refused before it is read.
truncate -s $((8 * 1024 * 1024 * 1024 + 1)) sparse
expect 2 "use --piece-size 1024K or larger" timeout 10 "$tool" create sparse --key pub.key --piece-size 64K
truncate -s $((2 * 1024 * 1024 * 1024 * 1024 + 1)) huge
expect 4 "more than a manifest can describe" timeout 10 "$tool" create huge --key pub.key
rm -f sparse huge

# More ways to say when, and a signature check through show.
expect 0 "expires 2100-01-01T00:00:00Z" "$tool" create data --key pub.key --expires @4102444800 -o at
expect 0 "" "$tool" create data --key pub.key --expires 12h -o hours
expect 3 "untrusted key" "$tool" show data.dopa-manifest --pubkey other.key.pub
expect 3 "signature is invalid" "$tool" show tampered --pubkey pub.key.pub

# keygen --force replaces the pair; the old public key stops verifying.
expect 0 "key id:" "$tool" keygen -o other.key --force
expect 0 "" "$tool" create data --key other.key -o by-other
expect 3 "untrusted key" "$tool" verify data by-other --pubkey pub.key.pub
expect 0 "OK data" "$tool" verify data by-other --pubkey other.key.pub

# A FIFO where a manifest should be is refused at once, not waited on.
mkfifo fifo
expect 4 "not a regular file" timeout 10 "$tool" show fifo

if [ "$failures" -ne 0 ]; then
    echo "$failures checks failed"
    exit 1
fi
echo "all checks passed"
