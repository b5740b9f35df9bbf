#!/usr/bin/env bash
# Checks the deployable image as far as a machine without a Docker engine can (CI runs it after the tests):
#   1. the Dockerfile: both stages install through deploy/image/install.sh and nothing else, and the
#      container's command is a Dagster code server for datapool_pipeline.definitions;
#   2. a fresh virtualenv (.venv-image/) gets exactly what the image gets: the files the build stage copies,
#      `install.sh wheels` (build stage) then `install.sh install` (runtime stage, offline from the wheels);
#   3. `dagster definitions validate -m datapool_pipeline.definitions` with DATAPOOL_EXECUTOR=k8s against the
#      instance files deploy/k8s/dagster.yaml and deploy/postgres/dagster.yaml, on a throwaway PostgreSQL
#      server on 127.0.0.1 (the Postgres storage connects when the instance loads);
#   4. the Dockerfile's command itself starts in that virtualenv and answers a gRPC health check.
# What it cannot check: Debian's packages and the base image (no Docker engine, no base images here).
#
# Torch: the image takes torch from TORCH_INDEX_URL (PyTorch's CPU wheel index for the CPU image). Here the
# same pins come from pip's configured index, whose releases lie on this machine's disk; set TORCH_INDEX_URL /
# TORCH_PACKAGES to check another source. DATAPOOL_IMAGE_CHECK_KEEP=1 keeps .venv-image/ afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$SECONDS
WORK="$ROOT/.venv-image"
export TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
export TORCH_PACKAGES="${TORCH_PACKAGES:-}"

say() { echo "check_image: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

PG_BIN=""
PG_DATA=""
SERVER_PID=""
stop_server() {
  # `dagster code-server start` does not exit on SIGTERM alone (Kubernetes follows up with SIGKILL after the
  # grace period): TERM the group, then KILL what is left after 10 s.
  kill -TERM -- "-$SERVER_PID" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 -- "-$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}
cleanup() {
  local code=$?
  if [ -n "$SERVER_PID" ]; then stop_server; fi
  if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  [ -n "$PG_DATA" ] && rm -rf "$(dirname "$PG_DATA")"
  if [ "${DATAPOOL_IMAGE_CHECK_KEEP:-0}" != "1" ]; then rm -rf "$WORK"; fi
  say "$([ $code -eq 0 ] && echo ok || echo "failed (exit $code)") in $((SECONDS - START)) s"
}
trap cleanup EXIT

as_pg() {
  # PostgreSQL refuses to run as root: as root, run its tools as Debian's `postgres` system user.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---- 1. the Dockerfile -------------------------------------------------------------------------------------
python3 - Dockerfile <<'EOF' || fail "Dockerfile"
import json, re, sys
text = open(sys.argv[1]).read()
lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
stages = [l for l in lines if l.upper().startswith("FROM ")]
assert len(stages) >= 2, "expected a build stage and a runtime stage"
assert any(re.search(r"datapool-install\.sh wheels ", l) for l in lines), "build stage must run install.sh wheels"
assert any(re.search(r"datapool-install\.sh install ", l) for l in lines), "runtime stage must run install.sh install"
for l in lines:
    if l.upper().startswith("RUN") and re.search(r"\bpip(3)?\b.*\binstall\b|\bpython3? -m pip\b", l):
        raise AssertionError(f"only deploy/image/install.sh installs Python packages, found: {l}")
cmds = [l for l in lines if l.upper().startswith("CMD ")]
assert len(cmds) == 1, "expected one CMD"
argv = json.loads(cmds[0][4:])
assert argv[:3] == ["dagster", "code-server", "start"], f"CMD must start a code server, not {argv}"
assert "dev" not in argv, argv
pairs = dict(zip(argv[3::2], argv[4::2]))
assert pairs.get("-m") == "datapool_pipeline.definitions", argv
assert pairs.get("-h") == "0.0.0.0" and pairs.get("-p") == "4000", argv
assert "EXPOSE 4000" in lines, "EXPOSE 4000"
print(" ".join(argv))
EOF
CMD_LINE="$(python3 - Dockerfile <<'EOF'
import json, sys
print(" ".join(json.loads([l for l in open(sys.argv[1]) if l.startswith("CMD ")][0][4:])))
EOF
)"
say "Dockerfile: two stages through deploy/image/install.sh; CMD: $CMD_LINE"

# The base image's Python (python:3.11-slim-...) decides the wheels; use the same minor version here.
PY_MINOR="$(sed -n 's/^ARG PYTHON_IMAGE=python:\([0-9]*\.[0-9]*\).*/\1/p' Dockerfile)"
[ -n "$PY_MINOR" ] || fail "no ARG PYTHON_IMAGE=python:X.Y... in the Dockerfile"
PYTHON_HOST="$(command -v "python$PY_MINOR" || true)"
[ -n "$PYTHON_HOST" ] || fail "the image uses Python $PY_MINOR; python$PY_MINOR is not on this machine"

# ---- 2. a fresh virtualenv with exactly what the image installs -------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK/src" "$WORK/app" "$WORK/run"
# The files the build stage copies into its WORKDIR, read from the Dockerfile's COPY lines.
python3 - Dockerfile "$WORK/src" <<'EOF' || fail "copying the build stage's files"
import re, shutil, sys
from pathlib import Path
dockerfile, dest_root = sys.argv[1], Path(sys.argv[2])
stage, workdir, copied = 0, "/", []
for raw in open(dockerfile):
    line = raw.strip()
    if line.upper().startswith("FROM "):
        stage += 1
    elif stage == 1 and line.upper().startswith("WORKDIR "):
        workdir = line.split()[1]
    elif stage == 1 and line.upper().startswith("COPY ") and "--from" not in line:
        *sources, dest = line.split()[1:]
        if dest.startswith("/") and not dest.startswith(workdir):
            continue  # install.sh itself: run from the repository below
        target = dest_root / (dest if not dest.startswith("/") else dest[len(workdir):].lstrip("/"))
        for src in sources:
            path = Path(src)
            out = target / path.name if dest.endswith("/") else target
            if path.is_dir():
                shutil.copytree(path, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
            copied.append(src)
assert "pyproject.toml" in copied and "datapool_pipeline" in copied, copied
print(" ".join(copied))
EOF
"$PYTHON_HOST" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
t0=$SECONDS
# Build stage (wheels), then runtime stage (offline install from those wheels), as the Dockerfile does.
PYTHON="$VPY" sh deploy/image/install.sh wheels "$WORK/src" "$WORK/wheels" >"$WORK/wheels.log" 2>&1 \
  || { tail -40 "$WORK/wheels.log" >&2; fail "install.sh wheels"; }
say "install.sh wheels (build stage): $((SECONDS - t0)) s, $(du -sh "$WORK/wheels" | cut -f1) of wheels"
t0=$SECONDS
PYTHON="$VPY" sh deploy/image/install.sh install "$WORK/wheels" >"$WORK/install.log" 2>&1 \
  || { tail -40 "$WORK/install.log" >&2; fail "install.sh install"; }
rm -rf "$WORK/wheels"
say "install.sh install (runtime stage): $((SECONDS - t0)) s: $("$VPY" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(datapool.pipeline|dagster|dagster-postgres|dagster-k8s|torch|torchvision|hnswlib)==' | tr '\n' ' ')"
cp datasets.yaml "$WORK/app/datasets.yaml"
cd "$WORK/run"   # away from the repository: the installed package is what loads
where="$("$VPY" -c 'import datapool_pipeline, dagster_postgres, dagster_k8s; print(datapool_pipeline.__file__)')"
case "$where" in "$WORK/venv/"*) ;; *) fail "datapool_pipeline loads from $where, not from the fresh venv" ;; esac

# ---- 3. dagster definitions validate on the deploy/ instance files, with a real PostgreSQL --------------------
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
[ -x "$PG_BIN/initdb" ] || fail "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (scripts/setup.sh test installs them)"
PG_ROOT="$(mktemp -d /tmp/datapool-image-pg.XXXXXX)"
PG_DATA="$PG_ROOT/data"
PG_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf '%s\n' "$PG_PASSWORD" > "$PG_ROOT/pwfile"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$PG_ROOT"
as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U dagster --pwfile="$PG_ROOT/pwfile" --auth=scram-sha-256 \
  --encoding=UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; fail initdb; }
rm -f "$PG_ROOT/pwfile"
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_ROOT/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_ROOT -c fsync=off" start >/dev/null \
  || { cat "$PG_ROOT/server.log" >&2; fail "pg_ctl start"; }
PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U dagster -d postgres \
  -c "CREATE DATABASE dagster_k8s" -c "CREATE DATABASE dagster_postgres" >/dev/null || fail "createdb"

for variant in k8s postgres; do
  home="$WORK/home-$variant"
  mkdir -p "$home"
  # The instance file as deployed, but for the server's free port (the files say 5432).
  sed "s/^\( *port:\) 5432\$/\1 $PG_PORT/" "$ROOT/deploy/$variant/dagster.yaml" > "$home/dagster.yaml"
  [ "$(grep -c "port: $PG_PORT\$" "$home/dagster.yaml")" -eq 1 ] || fail "deploy/$variant/dagster.yaml: no 'port: 5432'"
  t0=$SECONDS
  env DAGSTER_HOME="$home" DATAPOOL_DATASETS="$WORK/app/datasets.yaml" DATAPOOL_EXECUTOR=k8s \
    DATAPOOL_IMAGE=datapool-pipeline:check DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_DB="dagster_$variant" \
    DAGSTER_PG_USERNAME=dagster DAGSTER_PG_PASSWORD="$PG_PASSWORD" \
    "$WORK/venv/bin/dagster" definitions validate -m datapool_pipeline.definitions >"$WORK/validate-$variant.log" 2>&1 \
    || { tail -40 "$WORK/validate-$variant.log" >&2; fail "dagster definitions validate with deploy/$variant/dagster.yaml"; }
  tables="$(PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -tA -h 127.0.0.1 -p "$PG_PORT" -U dagster -d "dagster_$variant" \
    -c "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('runs', 'event_logs')")"
  [ "$tables" = "2" ] || fail "deploy/$variant/dagster.yaml: the instance did not create its tables in PostgreSQL"
  say "dagster definitions validate (DATAPOOL_EXECUTOR=k8s, deploy/$variant/dagster.yaml, PostgreSQL): ok in $((SECONDS - t0)) s"
done

# ---- 4. the container's command serves ----------------------------------------------------------------------
CS_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
read -r -a ARGV <<< "$CMD_LINE"
for i in "${!ARGV[@]}"; do  # same command, on loopback and a free port
  case "${ARGV[$i]}" in -h) ARGV[i + 1]=127.0.0.1 ;; -p) ARGV[i + 1]=$CS_PORT ;; esac
done
ARGV[0]="$WORK/venv/bin/${ARGV[0]}"
t0=$SECONDS
env DAGSTER_HOME="$WORK/home-postgres" DATAPOOL_DATASETS="$WORK/app/datasets.yaml" DATAPOOL_EXECUTOR=k8s \
  DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_DB=dagster_postgres DAGSTER_PG_USERNAME=dagster DAGSTER_PG_PASSWORD="$PG_PASSWORD" \
  setsid "${ARGV[@]}" >"$WORK/code-server.log" 2>&1 &
SERVER_PID=$!   # its own process group: the code server and the gRPC server it spawns stop together
until "$WORK/venv/bin/dagster" api grpc-health-check -p "$CS_PORT" >/dev/null 2>&1; do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -40 "$WORK/code-server.log" >&2; fail "the code server exited"; }
  [ $((SECONDS - t0)) -lt 180 ] || { tail -40 "$WORK/code-server.log" >&2; fail "the code server did not answer in 180 s"; }
  sleep 2
done
say "the Dockerfile's CMD serves: gRPC health check ok after $((SECONDS - t0)) s"
stop_server
SERVER_PID=""
