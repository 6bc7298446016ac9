# RabbitMQ for the tests: a private node on 127.0.0.1, on free non-default ports, with its
# data, logs, config and Erlang cookie in a temporary directory. Sourced by scripts/test;
# it can also be used alone for a by-hand run:
#
#     source scripts/rabbitmq.sh
#     rabbitmq_start "$(mktemp -d)"     # exports WIRETASK_TEST_AMQP_URL and _CTL
#     ...
#     rabbitmq_stop
#
# rabbitmq_start exports:
#   WIRETASK_TEST_AMQP_URL   amqp://guest:guest@127.0.0.1:<port>// (guest may log in on loopback)
#   WIRETASK_TEST_AMQP_CTL   a rabbitmqctl wrapper with this node's environment; the outage
#                            tests run "$WIRETASK_TEST_AMQP_CTL stop_app" / "start_app"
#
# Needs bash, python3 with py-amqp (the handshake check) and rabbitmq-server installed.

_rabbitmq_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Install rabbitmq-server from Debian without letting the package start a system service on
# the default ports: a policy-rc.d that forbids service starts is in place during the install
# (and removed after, unless one was there already).
rabbitmq_install() {
    if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install rabbitmq-server" >&2; return 1; fi
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local rc=0
    { [ -n "${WIRETASK_APT_UPDATED:-}" ] || apt-get update -qq; } &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null || rc=$?
    [ -n "$own_policy" ] && rm -f "$policy"
    return $rc
}

# rabbitmq_start DIR: start a node whose state lives in DIR; wait (at most ~30 s) until it
# completes an AMQP handshake. Returns non-zero if it does not.
rabbitmq_start() {
    local dir="${1:?rabbitmq_start needs a directory}"
    local sbin=/usr/lib/rabbitmq/bin
    [ -x "$sbin/rabbitmq-server" ] || { echo "rabbitmq-server is not installed" >&2; return 1; }
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    local port dist epmd
    port="$(_rabbitmq_free_port)"
    dist="$(_rabbitmq_free_port)"
    epmd="$(_rabbitmq_free_port)"
    # A cookie of our own (rabbitmqctl reads the same HOME), not the system node's.
    python3 -c 'import secrets; print(secrets.token_hex(20).upper(), end="")' >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    # disk_free_limit: the default (50 MB) can block publishers on a small temporary disk.
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
disk_free_limit.absolute = 1MB
log.console = false
log.file.level = warning
EOF
    # The node's environment, in one file: sourced here and by the ctl wrapper.
    cat >"$dir/env" <<EOF
export HOME='$dir/home'
export RABBITMQ_NODENAME='wt-$port@localhost'
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$port
export RABBITMQ_DIST_PORT=$dist
export RABBITMQ_MNESIA_BASE='$dir/mnesia'
export RABBITMQ_LOG_BASE='$dir/log'
export RABBITMQ_CONFIG_FILE='$dir/rabbitmq.conf'
export RABBITMQ_ENABLED_PLUGINS_FILE='$dir/enabled_plugins'
export RABBITMQ_CONF_ENV_FILE='$dir/rabbitmq-env.conf'
export RABBITMQ_PID_FILE='$dir/rabbitmq.pid'
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$epmd
# Erlang distribution (the node's and rabbitmqctl's) on loopback only.
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
EOF
    cat >"$dir/ctl" <<EOF
#!/usr/bin/env bash
. '$dir/env'
exec '$sbin/rabbitmqctl' "\$@"
EOF
    chmod 755 "$dir/ctl"
    RABBITMQ_DIR="$dir"
    (. "$dir/env"; exec "$sbin/rabbitmq-server") >"$dir/log/server.out" 2>&1 &
    RABBITMQ_PID=$!
    local started=$SECONDS
    python3 - "$port" <<'EOF' || { echo "RabbitMQ did not answer within 30 s; see $dir/log" >&2; return 1; }
import sys, time
import amqp
deadline = time.monotonic() + 30
while True:
    try:
        with amqp.Connection(f"127.0.0.1:{sys.argv[1]}", connect_timeout=1):
            break
    except Exception:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.1)
EOF
    echo "RabbitMQ on 127.0.0.1:$port answered after $((SECONDS - started)) s"
    export WIRETASK_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$port//"
    export WIRETASK_TEST_AMQP_CTL="$dir/ctl"
}

# Stop the node started by rabbitmq_start: rabbitmqctl shutdown, then kill if it is still
# there, then its epmd.
rabbitmq_stop() {
    [ -n "${RABBITMQ_DIR:-}" ] || return 0
    local dir="$RABBITMQ_DIR"
    timeout 30 "$dir/ctl" shutdown >/dev/null 2>&1 || true
    if [ -n "${RABBITMQ_PID:-}" ] && kill -0 "$RABBITMQ_PID" 2>/dev/null; then
        kill "$RABBITMQ_PID" 2>/dev/null || true
    fi
    if [ -s "$dir/rabbitmq.pid" ]; then
        kill -9 "$(cat "$dir/rabbitmq.pid")" 2>/dev/null || true
    fi
    (. "$dir/env"; epmd -kill >/dev/null 2>&1) || true
    RABBITMQ_DIR=""
    RABBITMQ_PID=""
}
