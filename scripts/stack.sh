#!/usr/bin/env bash
# The local stack: Postgres, ClickHouse 18.16 and a Stripe-compatible fake (localstripe),
# all on loopback, installed when missing and started when not already running.
#
#   scripts/stack.sh up       install what is missing, start what is not running
#   scripts/stack.sh status   what is running, and who started it
#   scripts/stack.sh down     stop what this checkout started (and nothing else)
#   scripts/stack.sh run      up, then run the service on 127.0.0.1:8080
#   scripts/stack.sh test     up, then run every test
#
# Every step is idempotent. A service already answering on its port is used as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.stack"
PG_HOST=127.0.0.1
PG_PORT="${SAAS_STACK_PG_PORT:-5432}"
CH_HTTP_PORT="${SAAS_STACK_CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${SAAS_STACK_CH_TCP_PORT:-9000}"
# A second ClickHouse server: the other shard of the two-shard cluster `saas_usage` that
# both servers declare (the tests of the sharded schema use it).
CH2_HTTP_PORT="${SAAS_STACK_CH2_HTTP_PORT:-8124}"
CH2_TCP_PORT="${SAAS_STACK_CH2_TCP_PORT:-9001}"
# Both ClickHouse servers also serve HTTPS, with a certificate for localhost that the
# stack's own CA signed ($STATE/tls/ca.crt): the tests of encrypted connections use it.
CH_HTTPS_PORT="${SAAS_STACK_CH_HTTPS_PORT:-8443}"
CH2_HTTPS_PORT="${SAAS_STACK_CH2_HTTPS_PORT:-8444}"
STRIPE_PORT="${SAAS_STACK_STRIPE_PORT:-8420}"
LOCALSTRIPE_VERSION=1.15.10
# Stripe's Python library for the API version async-stripe pins (2026-09-30.endive): the
# reference the request conformance check reads its operations and parameters from.
STRIPE_PYTHON_VERSION=16.0.1
CHDB_VERSION=4.4.0
# The official Standard Webhooks library: the tests' webhook receiver verifies with it.
STANDARDWEBHOOKS_VERSION=1.1.0
STRIPE_TEST_KEY=sk_test_local_stack
STRIPE_WEBHOOK_SECRET=whsec_local_stack

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Waits up to $2 seconds for command $1 to succeed.
wait_for() {
    local check="$1" seconds="$2" i
    for ((i = 0; i < seconds * 10; i++)); do
        if eval "$check" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Starts a command in its own session, detached, logging to $STATE/<name>.log.
start_detached() {
    local name="$1"; shift
    mkdir -p "$STATE"
    setsid nohup "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE/$name.pid"
}

# --- Postgres -------------------------------------------------------------------------

postgres_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

psql_superuser() {
    # Trust auth over TCP where the cluster allows it, else peer auth as postgres.
    if psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q "$@"
    else
        su postgres -c "psql -p $PG_PORT -d postgres -v ON_ERROR_STOP=1 -q $(printf '%q ' "$@")"
    fi
}

postgres_up() {
    if ! postgres_ready; then
        command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
        local version
        version="$(ls /etc/postgresql | sort -n | tail -n 1)"
        [ -n "$version" ] || die "no Postgres cluster found after installing postgresql"
        log "starting Postgres $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        echo "$version" >"$STATE/postgres.started"
        wait_for postgres_ready 30 || die "Postgres did not become ready"
    fi
    psql_superuser -f "$ROOT/deploy/postgres-bootstrap.sql" >/dev/null
    postgres_tls
    log "postgres   ready on $PG_HOST:$PG_PORT (roles saas_owner, saas_app; database saas)"
}

# Postgres must offer TLS for the tests of encrypted connections; they trust the CA in
# $STATE/tls/postgres-ca.crt. A server with TLS on keeps its own certificate (Debian's
# snakeoil one names localhost); one without gets the stack's, undone by `down`.
postgres_tls() {
    if [ "$(psql_superuser -tAc 'SHOW ssl')" != "on" ]; then
        local key=/var/lib/postgresql/saas-stack-server.key
        install -o postgres -m 0600 "$STATE/tls/server.key" "$key"
        psql_superuser -c "ALTER SYSTEM SET ssl_cert_file = '$STATE/tls/server.crt'" \
            -c "ALTER SYSTEM SET ssl_key_file = '$key'" -c "ALTER SYSTEM SET ssl = on" \
            -c "SELECT pg_reload_conf()" >/dev/null
        touch "$STATE/postgres.tls"
        wait_for "[ \"\$(psql_superuser -tAc 'SHOW ssl')\" = on ]" 10 || die "Postgres did not turn TLS on"
        cp "$STATE/tls/ca.crt" "$STATE/tls/postgres-ca.crt"
        return
    fi
    local cert
    cert="$(psql_superuser -tAc 'SHOW ssl_cert_file')"
    case "$cert" in
        /*) ;;
        *) cert="$(psql_superuser -tAc 'SHOW data_directory')/$cert" ;;
    esac
    cp "$cert" "$STATE/tls/postgres-ca.crt"
}

# --- TLS ------------------------------------------------------------------------------

# A CA of this checkout, a certificate it signs for localhost and 127.0.0.1, and a second
# CA that signs nothing here (a client trusting only that one must refuse the servers).
tls_up() {
    local dir="$STATE/tls"
    [ -f "$dir/server.crt" ] && [ -f "$dir/other-ca.crt" ] && return
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$dir"
    log "making the stack's TLS certificates in $dir"
    local quiet=(-batch)
    openssl req "${quiet[@]}" -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=saas stack CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req "${quiet[@]}" -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=saas other CA" \
        -keyout "$dir/other-ca.key" -out "$dir/other-ca.crt" 2>/dev/null
    openssl req "${quiet[@]}" -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    chmod 0644 "$dir/server.key"
}

# --- ClickHouse -----------------------------------------------------------------------

clickhouse_ready() { clickhouse_answers "$CH_HTTP_PORT"; }
clickhouse_shard2_ready() { clickhouse_answers "$CH2_HTTP_PORT"; }
clickhouse_answers() { [ "$(curl -fsS "http://127.0.0.1:$1/?query=SELECT%201" 2>/dev/null)" = "1" ]; }

# Starts ClickHouse server $1 (its state under $STATE/$1) on HTTP port $2, native port
# $3 and HTTPS port $4, unless one answers there already.
clickhouse_server_up() {
    local name="$1" http="$2" tcp="$3" https="$4"
    if clickhouse_answers "$http"; then
        log "$name already running on 127.0.0.1:$http"
        return
    fi
    command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
    local dir="$STATE/$name"
    mkdir -p "$dir/log" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
    sed -e "s#@DIR@#$dir#g" -e "s#@HTTP_PORT@#$http#g" -e "s#@TCP_PORT@#$tcp#g" \
        -e "s#@HTTPS_PORT@#$https#g" -e "s#@TLS_DIR@#$STATE/tls#g" \
        -e "s#@SHARD1_TCP_PORT@#$CH_TCP_PORT#g" -e "s#@SHARD2_TCP_PORT@#$CH2_TCP_PORT#g" \
        "$ROOT/scripts/clickhouse/config.xml.template" >"$dir/config.xml"
    cp "$ROOT/scripts/clickhouse/users.xml" "$dir/users.xml"
    log "starting $name ($(clickhouse-server --version 2>/dev/null | head -n 1 || echo unknown))"
    start_detached "$name" clickhouse-server --config-file="$dir/config.xml"
    wait_for "clickhouse_answers $http" 60 || { tail -n 20 "$dir/log/error.log" >&2 || true; die "$name did not start"; }
    log "$name ready on 127.0.0.1:$http"
}

clickhouse_up() {
    clickhouse_server_up clickhouse "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CH_HTTPS_PORT"
    clickhouse_server_up clickhouse-shard2 "$CH2_HTTP_PORT" "$CH2_TCP_PORT" "$CH2_HTTPS_PORT"
}

# --- localstripe ----------------------------------------------------------------------

stripe_ready() { curl -fsS -u "$STRIPE_TEST_KEY:" "http://127.0.0.1:$STRIPE_PORT/v1/customers?limit=1" >/dev/null 2>&1; }

stripe_up() {
    if stripe_ready; then
        log "localstripe already running on 127.0.0.1:$STRIPE_PORT"
        return
    fi
    if ! python3 -c "import localstripe" 2>/dev/null; then
        log "pip install localstripe==$LOCALSTRIPE_VERSION"
        python3 -m pip install -q --disable-pip-version-check "localstripe==$LOCALSTRIPE_VERSION"
    fi
    mkdir -p "$STATE/localstripe"
    log "starting localstripe"
    LOCALSTRIPE_STATE_FILE="$STATE/localstripe/state.pickle" \
    LOCALSTRIPE_REQUEST_LOG="$STATE/localstripe/requests.jsonl" \
        start_detached localstripe python3 "$ROOT/scripts/localstripe_faithful.py" \
        --host 127.0.0.1 --port "$STRIPE_PORT" --from-scratch --in-memory
    wait_for stripe_ready 30 || { tail -n 20 "$STATE/localstripe.log" >&2 || true; die "localstripe did not start"; }
    log "localstripe ready on 127.0.0.1:$STRIPE_PORT"
}

# --- commands -------------------------------------------------------------------------

up() {
    mkdir -p "$STATE"
    command -v curl >/dev/null || apt_install curl
    tls_up
    postgres_up
    clickhouse_up
    stripe_up
}

stop_pid() {
    local name="$1" file="$STATE/$1.pid" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        wait_for "! kill -0 $pid" 20 || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

down() {
    stop_pid localstripe
    stop_pid clickhouse
    stop_pid clickhouse-shard2
    if [ -f "$STATE/postgres.tls" ] && postgres_ready; then
        log "turning Postgres TLS back off"
        psql_superuser -c "ALTER SYSTEM RESET ssl" -c "ALTER SYSTEM RESET ssl_cert_file" \
            -c "ALTER SYSTEM RESET ssl_key_file" -c "SELECT pg_reload_conf()" >/dev/null || true
        rm -f "$STATE/postgres.tls"
    fi
    if [ -f "$STATE/postgres.started" ]; then
        log "stopping Postgres"
        pg_ctlcluster --skip-systemctl-redirect "$(cat "$STATE/postgres.started")" main stop || true
        rm -f "$STATE/postgres.started"
    fi
}

status() {
    local started
    for service in postgres clickhouse clickhouse_shard2 stripe; do
        started="already running"
        case $service in
            postgres) [ -f "$STATE/postgres.started" ] && started="started here" ;;
            clickhouse) [ -f "$STATE/clickhouse.pid" ] && started="started here (pid $(cat "$STATE/clickhouse.pid"))" ;;
            clickhouse_shard2) [ -f "$STATE/clickhouse-shard2.pid" ] && started="started here (pid $(cat "$STATE/clickhouse-shard2.pid"))" ;;
            stripe) [ -f "$STATE/localstripe.pid" ] && started="started here (pid $(cat "$STATE/localstripe.pid"))" ;;
        esac
        if "${service}_ready"; then echo "$service: up, $started"; else echo "$service: down"; fi
    done
}

# The environment that points the service at this stack.
export_stack_env() {
    export SAAS_CLICKHOUSE__URL="http://127.0.0.1:$CH_HTTP_PORT"
    # The service's own user (scripts/clickhouse/users.xml); `default` owns the schema.
    export SAAS_CLICKHOUSE__USER="${SAAS_CLICKHOUSE__USER:-saas_app}"
    export SAAS_CLICKHOUSE__PASSWORD="${SAAS_CLICKHOUSE__PASSWORD:-saas_app}"
    export SAAS_STRIPE__API_BASE="http://127.0.0.1:$STRIPE_PORT"
    export SAAS_STRIPE__SECRET_KEY="${SAAS_STRIPE__SECRET_KEY:-$STRIPE_TEST_KEY}"
}

# Points the fake's webhooks at the service, signed with the service's secret (kept in
# localstripe's memory only, so registered on every run).
register_webhook() {
    local listen="${SAAS_LISTEN:-127.0.0.1:8080}"
    export SAAS_STRIPE__WEBHOOK_SECRET="${SAAS_STRIPE__WEBHOOK_SECRET:-$STRIPE_WEBHOOK_SECRET}"
    curl -fsS -u "$STRIPE_TEST_KEY:" "http://127.0.0.1:$STRIPE_PORT/_config/webhooks/saas" \
        --data-urlencode "url=http://$listen/webhooks/stripe" \
        --data-urlencode "secret=$SAAS_STRIPE__WEBHOOK_SECRET" >/dev/null \
        || die "could not register the webhook endpoint with localstripe"
    log "localstripe delivers webhooks to http://$listen/webhooks/stripe"
}

run() {
    up
    export_stack_env
    register_webhook
    export SAAS_LOG__FORMAT="${SAAS_LOG__FORMAT:-pretty}"
    if [ -z "${SAAS_OPERATOR_TOKEN:-}" ]; then
        export SAAS_OPERATOR_TOKEN="local-operator-token-change-me"
        log "operator token for /v1/admin/*: $SAAS_OPERATOR_TOKEN"
    fi
    cd "$ROOT"
    exec cargo run --quiet --bin saas -- serve
}

# The dashboard's end-to-end test drives a real headless browser.
browser_up() {
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        apt_install chromium chromium-driver
    fi
}

# Current ClickHouse, in-process: every statement the tests send to the 18.16 server is
# run again on it afterwards (scripts/clickhouse_on_current.py).
chdb_up() {
    if [ "$(python3 -c 'import chdb; print(chdb.__version__)' 2>/dev/null)" != "$CHDB_VERSION" ]; then
        log "pip install chdb==$CHDB_VERSION"
        python3 -m pip install -q --disable-pip-version-check "chdb==$CHDB_VERSION"
    fi
}

stripe_reference_up() {
    if [ "$(python3 -c 'import stripe; print(stripe.VERSION)' 2>/dev/null)" != "$STRIPE_PYTHON_VERSION" ]; then
        log "pip install stripe==$STRIPE_PYTHON_VERSION"
        python3 -m pip install -q --disable-pip-version-check "stripe==$STRIPE_PYTHON_VERSION"
    fi
}

# The tests' webhook receiver (scripts/webhook_receiver.py) verifies every delivery with
# the Standard Webhooks library, as a tenant's receiver would.
standardwebhooks_up() {
    if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null)" != "$STANDARDWEBHOOKS_VERSION" ]; then
        log "pip install standardwebhooks==$STANDARDWEBHOOKS_VERSION"
        python3 -m pip install -q --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
    fi
}

test_all() {
    up
    browser_up
    stripe_reference_up
    chdb_up
    standardwebhooks_up
    export_stack_env
    # Databases left behind by earlier runs (a killed test cannot drop its own).
    psql_superuser -tAc "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
                         FROM pg_database WHERE datname LIKE 'saas\_test\_%'" \
        | psql_superuser >/dev/null 2>&1 || true
    cd "$ROOT"
    # The crash tests run the real binary as a child process.
    cargo build --quiet --bin saas
    # Every request the tests make the service (and themselves) send to Stripe is
    # checked afterwards against Stripe's published API.
    local requests="$STATE/localstripe/requests.jsonl" status=0
    # The fake itself first: each behaviour the service relies on, as Stripe documents it
    # (its deliberately wrong requests are left out of the log checked below).
    python3 "$ROOT/scripts/test_localstripe_faithful.py" --port "$STRIPE_PORT" || status=$?
    : >"$requests"
    local since
    since="$(date +%s)"
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast "$@" || status=$?
    else
        cargo test --workspace --no-fail-fast "$@" || status=$?
    fi
    # A whole run makes thousands; a filtered one may make none.
    local least=0
    [ "$#" -eq 0 ] && least=100
    python3 "$ROOT/scripts/stripe_conformance.py" "$requests" --min-requests "$least" || status=$?
    # And every statement they sent ClickHouse 18.16 must run on current ClickHouse too.
    python3 "$ROOT/scripts/clickhouse_on_current.py" --port "$CH_HTTP_PORT" --since "$since" \
        --min-statements "$least" || status=$?
    # The whole business at once, driven from outside and checked against books of its
    # own: the simulator's short profile (on a whole run only).
    if [ "$#" -eq 0 ]; then
        cargo build --quiet --bin saas --bin saas-sim
        "$ROOT/target/debug/saas-sim" --profile short || status=$?
    fi
    return "$status"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    run) run ;;
    test) shift; test_all "$@" ;;
    *) echo "usage: $0 {up|down|status|run|test [test args]}" >&2; exit 2 ;;
esac
