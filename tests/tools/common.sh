# Shared by the shell tests of tests/tools: sourced, not run.
# Counting failures: fail MESSAGE, ok MESSAGE, show FILE (indented).
# A loopback origin: start_nginx ROOT WORK serves ROOT on a free port of
# 127.0.0.1 with its logs in WORK/logs, and sets nginx_pid and port; the
# caller stops nginx_pid.
# change_byte FILE OFFSET writes, at OFFSET, a byte FILE did not have there.

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
ok() {
    echo "ok   $*"
}
show() {
    sed 's/^/    /' "$1"
}
skip() {
    echo "SKIP: $*"
    exit 77
}

change_byte() {
    byte=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
    [ -n "$byte" ] || { echo "change_byte: $1 has no byte at $2" >&2; return 1; }
    printf "\\$(printf %o $(((byte + 1) % 256)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# One try on a random port; start_nginx tries five.
nginx_once() {
    port=$(shuf -i 20000-60000 -n 1)
    cat >"$2/nginx.conf" <<CONF
daemon off;
master_process off;
error_log $2/logs/nginx-error.log;
pid $2/nginx.pid;
events { worker_connections 64; }
http {
  log_format plain '\$request_uri \$status \$body_bytes_sent';
  access_log $2/logs/access.log plain;
  client_body_temp_path $2/tmp;
  proxy_temp_path $2/tmp;
  fastcgi_temp_path $2/tmp;
  uwsgi_temp_path $2/tmp;
  scgi_temp_path $2/tmp;
  server { listen 127.0.0.1:$port; root $1; location /slow/ { limit_rate 20k; } }
}
CONF
    /usr/sbin/nginx -p "$2" -c "$2/nginx.conf" -e "$2/logs/nginx-error.log" \
        >/dev/null 2>&1 </dev/null &
    nginx_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$nginx_pid" 2>/dev/null || {
            nginx_pid=""
            return 1
        }
        sleep 0.05
    done
    kill "$nginx_pid" 2>/dev/null
    wait "$nginx_pid" 2>/dev/null
    nginx_pid=""
    return 1
}
start_nginx() {
    mkdir -p "$2/logs" "$2/tmp"
    for _ in 1 2 3 4 5; do
        nginx_once "$1" "$2" && return 0
    done
    echo "nginx did not start:"
    [ -f "$2/logs/nginx-error.log" ] && show "$2/logs/nginx-error.log"
    return 1
}
