# Helpers shared by the load-test scripts (run.sh, compare.sh, idle-memory.sh), sourced by
# each. They use the calling script's globals at call time: PIDS ("name:pid:signal" for every
# process it started), PORT, TMP, UPSTREAM_PORT, EXPECTED_BODY and its `log` function.

stop_pid() {  # name pid signal   -- pid leads its own process group (see start_bg)
  local name="$1" pid="$2" sig="$3" i
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true           # the leader only: nginx master stops its workers
    for ((i = 0; i < 50; i++)); do                    # up to 5 s
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIG$sig for 5 s, sending SIGKILL"
    fi
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true           # sweep the group: leader if stuck, orphans
  wait "$pid" 2>/dev/null || true
}

port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

pick_port() {  # VAR default
  local var="$1" p
  if [[ -n "${!var:-}" ]]; then
    p="${!var}"
    port_busy "$p" && die "$var=$p is already in use"
  else
    p="$2"
    while port_busy "$p" || [[ "$USED_PORTS" == *" $p "* ]]; do
      p=$((p + 1)); (( p < 65535 )) || die "no free port for $var"
    done
  fi
  [[ "$USED_PORTS" == *" $p "* ]] && die "$var=$p collides with another port"
  USED_PORTS+="$p "
  printf -v "$var" '%s' "$p"
}

pid_of() { local e; for e in "${PIDS[@]}"; do [[ "${e%%:*}" == "$1" ]] && { e="${e#*:}"; echo "${e%%:*}"; return; }; done; }

cpu_sample() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat; }

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { printf "%.3f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

as_root() { if (( EUID == 0 )); then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

# CPU time of processes, in clock ticks: "user system", summed over the pids given (all
# threads of each). /proc/PID/stat's comm field may hold spaces, so fields count from its ")".
proc_ticks() {  # pid...
  local p
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null; done |
    awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { printf "%d %d\n", u, s }'
}

# The nginx upstream (and the common parts of an nginx config) of run.sh and compare.sh;
# idle-memory.sh writes its own (sized for its idle connection sets).
# NGINX_NOFILE (worker_rlimit_nofile), NGINX_KEEPALIVE_TIMEOUT and NGINX_HEADER_TIMEOUT
# (client_header_timeout) let a script that holds many idle connections raise nginx's limits.
nginx_common() {  # name [worker_connections, default 4096]
  cat <<EOF
worker_processes 1;
${NGINX_NOFILE:+worker_rlimit_nofile $NGINX_NOFILE;
}daemon off;
pid $TMP/$1.pid;
error_log $TMP/$1-error.log warn;
events { worker_connections ${2:-4096}; }
EOF
}

nginx_http_common() {  # name
  cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout ${NGINX_KEEPALIVE_TIMEOUT:-75s};
${NGINX_HEADER_TIMEOUT:+    client_header_timeout $NGINX_HEADER_TIMEOUT;
}    client_body_temp_path $TMP/nginx-temp/$1-body;
    proxy_temp_path       $TMP/nginx-temp/$1-proxy;
    fastcgi_temp_path     $TMP/nginx-temp/$1-fastcgi;
    uwsgi_temp_path       $TMP/nginx-temp/$1-uwsgi;
    scgi_temp_path        $TMP/nginx-temp/$1-scgi;
EOF
}

write_upstream_conf() {
  { nginx_common upstream
    cat <<EOF
http {
$(nginx_http_common upstream)
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / {
            default_type application/json;
            return 200 '$EXPECTED_BODY';
        }
    }
}
EOF
  } >"$TMP/upstream.conf"
}
