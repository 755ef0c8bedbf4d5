#!/usr/bin/env bash
# Integration check of `rho slurm eval` against a real single-node Slurm on this machine.
#
#   scripts/slurm_local.sh              # full check (needs target/debug/rho: run `cargo build` first)
#   scripts/slurm_local.sh --smoke      # only bring the cluster up and run a trivial job array
#
# What it does:
#   1. installs Debian's slurm-wlm and munge when missing (apt-get; needs root),
#   2. starts munged, slurmctld and slurmd by hand (no systemd) from a generated minimal
#      slurm.conf under $WORK (proctrack/linuxproc, task/none, select/cons_tres, no accounting,
#      one node = this host with the CPUs and memory `slurmd -C` reports, ports 16817/16818),
#   3. runs a trivial `sbatch --array=0-2 --wrap ...` to check the cluster,
#   4. evaluates a fixture series both ways: plain `rho eval` (one process) into S1, and
#      `rho slurm eval --shards 3` (a job array) into S2 (a path with a space, to exercise
#      quoting); waits for the array, checks `rho status` exits 0, categorizes both and checks
#      that the two studies agree (audit CSV of every token byte-identical; losses and
#      trajectories equal, with pyarrow when /work/pyvenv/bin/python or python3 has it),
#   5. deletes one part file (a lost task), checks `rho status` reports the study incomplete,
#      re-submits that task alone with `--array I` and checks the study is complete and equal again,
#   6. stops every daemon and job it started (trap on exit), leaving no process behind.
#
# Idempotent: each run first stops what a previous run under the same $WORK left, then wipes $WORK.
# Environment: RHO (binary, default target/debug/rho), WORK (default /tmp/rho-slurm-local),
# SERIES (default fixtures/llama), DATA (default fixtures/data/val.jsonl), SHARDS (default 3),
# TIMEOUT (seconds per job array, default 300), SLURM_PORT (slurmctld port, default 16817; slurmd +1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RHO=${RHO:-$ROOT/target/debug/rho}
WORK=${WORK:-/tmp/rho-slurm-local}
SERIES=${SERIES:-$ROOT/fixtures/llama}
DATA=${DATA:-$ROOT/fixtures/data/val.jsonl}
SHARDS=${SHARDS:-3}
TIMEOUT=${TIMEOUT:-300}
PORT=${SLURM_PORT:-16817}
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
T0=$(now)
say() { printf '[%7ss] %s\n' "$(since "$T0")" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# Every daemon, job and task of this cluster carries this variable in its environment,
# so cleanup can find exactly those processes (and no others).
TAG="rho-slurm-local:$WORK"
tagged() { RHO_SLURM_LOCAL_TAG="$TAG" SLURM_CONF="$WORK/slurm.conf" "$@"; }

# ---------------------------------------------------------------- install
need_install=0
for b in munged munge slurmctld slurmd sbatch squeue scontrol scancel; do
  command -v "$b" >/dev/null || need_install=1
done
if [ "$need_install" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge missing and not root: install them (apt-get install slurm-wlm munge)"
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# ---------------------------------------------------------------- stop / cleanup
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Processes whose environment carries $TAG (our daemons, slurmstepd, job scripts, rho tasks).
tagged_pids() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    if grep -qzxF "RHO_SLURM_LOCAL_TAG=$TAG" "/proc/$p/environ" 2>/dev/null; then
      echo "$p"
    fi
  done
}

stop_pidfile() { # NAME PIDFILE
  local pid
  pid=$(cat "$2" 2>/dev/null || true)
  if pid_alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do pid_alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

stop_cluster() {
  if [ -f "$WORK/slurm.conf" ] && [ -f "$WORK/slurmctld.pid" ] && pid_alive "$(cat "$WORK/slurmctld.pid" 2>/dev/null)"; then
    # Cancel every job of this cluster, give it a moment, then shut the daemons down.
    local jobs
    jobs=$(tagged squeue -h -o %A 2>/dev/null | sort -u || true)
    if [ -n "$jobs" ]; then
      tagged scancel $jobs 2>/dev/null || true
      for _ in $(seq 30); do [ -z "$(tagged squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    tagged scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop_pidfile slurmd "$WORK/slurmd.pid"
  stop_pidfile slurmctld "$WORK/slurmctld.pid"
  stop_pidfile munged "$WORK/munge/munged.pid"
  local left
  left=$(tagged_pids)
  if [ -n "$left" ]; then
    kill -TERM $left 2>/dev/null || true
    sleep 1
    left=$(tagged_pids)
    [ -n "$left" ] && kill -KILL $left 2>/dev/null || true
  fi
  return 0
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "stopping the cluster"
  stop_cluster
  local left
  left=$(tagged_pids)
  [ -z "$left" ] || { echo "processes left behind: $left" >&2; rc=1; }
  if [ "$rc" = 0 ]; then say "all checks passed"; else say "exit status $rc (logs under $WORK/log, $WORK/s2/slurm/logs)"; fi
  exit "$rc"
}

# ---------------------------------------------------------------- start
stop_cluster                               # whatever a previous run left
rm -rf "$WORK"
mkdir -p "$WORK"/{munge,state,spool,log}
chmod 0755 "$WORK" "$WORK/munge"           # munged wants its socket folder world-executable
trap cleanup EXIT
trap 'exit 130' INT TERM

dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 0600 "$WORK/munge/munge.key"
tagged munged --socket="$WORK/munge/munge.socket" --key-file="$WORK/munge/munge.key" \
  --log-file="$WORK/munge/munged.log" --pid-file="$WORK/munge/munged.pid" \
  --seed-file="$WORK/munge/munged.seed" || { cat "$WORK/munge/munged.log" >&2; die "munged did not start"; }

HOST=$(hostname -s)
NODE=$(slurmd -C | head -n1 | sed 's/ *$//')     # NodeName=HOST CPUs=... RealMemory=...
case "$NODE" in NodeName=*) ;; *) die "slurmd -C printed no node line: $NODE" ;; esac
NODE=${NODE#NodeName=* }                          # keep the hardware fields
cat >"$WORK/slurm.conf" <<EOF
# Generated by scripts/slurm_local.sh: a one-node cluster for integration tests.
ClusterName=rholocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge/munge.socket
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/slurmd-%n
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 $NODE State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

tagged slurmctld -f "$WORK/slurm.conf" || { tail -n 20 "$WORK/log/slurmctld.log" >&2; die "slurmctld did not start"; }
tagged slurmd -f "$WORK/slurm.conf" -N "$HOST" || { tail -n 20 "$WORK/log/slurmd.log" >&2; die "slurmd did not start"; }
export SLURM_CONF="$WORK/slurm.conf"

state=""
for _ in $(seq 60); do
  state=$(tagged sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || { tail -n 20 "$WORK/log/slurmctld.log" "$WORK/log/slurmd.log" >&2; die "node $HOST is '$state', not idle"; }
ours=$(tagged_pids)
for d in slurmctld slurmd munge/munged; do
  grep -qx "$(cat "$WORK/$d.pid" 2>/dev/null || echo none)" <<<"$ours" || die "cleanup cannot find ${d#munge/} by its environment tag"
done
say "cluster up: node $HOST ($NODE), slurm $(sbatch --version | awk '{print $2}')"

# ---------------------------------------------------------------- helpers
# Wait until job array $1 has left the queue; fail unless every task COMPLETED.
wait_array() {
  local id=$1 deadline=$(( $(date +%s) + TIMEOUT )) states
  while tagged squeue -h -j "$id" -t PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED -o %i 2>/dev/null | grep . >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { tagged scancel "$id" || true; die "job $id still queued after ${TIMEOUT}s"; }
    sleep 0.5
  done
  states=$(tagged squeue -h -t all -j "$id" -o '%i %T' 2>/dev/null | sort)
  echo "$states" | sed 's/^/    /'
  if grep -v ' COMPLETED$' <<<"$states" | grep . >/dev/null; then
    die "job $id: not every task completed"
  fi
}

# ---------------------------------------------------------------- smoke test
mkdir -p "$WORK/smoke"
J=$(tagged sbatch --parsable --array=0-2 --output="$WORK/smoke/%A_%a.out" \
  --wrap 'echo "task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname -s)"')
J=${J%%;*}
wait_array "$J"
for i in 0 1 2; do grep -q "^task $i of job $J" "$WORK/smoke/${J}_$i.out" || die "smoke task $i printed nothing"; done
say "smoke: sbatch --array=0-2 --wrap ran 3 tasks"
[ "$SMOKE" = 1 ] && exit 0

# ---------------------------------------------------------------- rho: plain vs sharded on Slurm
[ -x "$RHO" ] || die "$RHO not found: run cargo build (or set RHO)"
"$RHO" eval --help | grep -- '--shard' >/dev/null || die "$RHO has no \`eval --shard\`"
"$RHO" slurm eval --help >/dev/null 2>&1 || die "$RHO has no \`slurm eval\` subcommand (wire Command::Slurm in src/cli.rs)"
[ -d "$SERIES" ] && [ -f "$DATA" ] || die "fixtures missing: $SERIES, $DATA"

S1="$WORK/s1"
S2="$WORK/study two"          # a space: #SBATCH --output and the exec line must quote it
EVAL_ARGS=(--quiet --checkpoints "$SERIES" --data "$DATA")

t=$(now)
"$RHO" eval "${EVAL_ARGS[@]}" --study "$S1"
"$RHO" categorize --study "$S1" >/dev/null
say "plain rho eval + categorize into $S1: $(since "$t")s"

# Dry run: prints the script, submits nothing.
tagged "$RHO" slurm eval --shards "$SHARDS" --study "$S2" --dry-run -- "${EVAL_ARGS[@]}" >"$WORK/dry-run.sbatch"
grep -qx "#SBATCH --array=0-$((SHARDS - 1))" "$WORK/dry-run.sbatch" || die "dry run: no array line"
[ -z "$(tagged squeue -h -o %A)" ] || die "dry run submitted a job"
cmp -s "$WORK/dry-run.sbatch" "$S2/slurm/eval-$SHARDS.sbatch" || die "dry run: printed script differs from the written one"

# The flags rho adds itself are refused after `--`.
if out=$(tagged "$RHO" slurm eval --shards "$SHARDS" --study "$S2" --dry-run -- "${EVAL_ARGS[@]}" --shard 0/2 2>&1); then
  die "--shard after -- was accepted"
fi
grep -- '--shard' <<<"$out" >/dev/null || die "refusing --shard: unclear error: $out"

t=$(now)
J=$(tagged "$RHO" slurm eval --shards "$SHARDS" --study "$S2" --job-name rho-local -- "${EVAL_ARGS[@]}" 2>"$WORK/submit.err") \
  || { cat "$WORK/submit.err" >&2; die "rho slurm eval failed"; }
sed 's/^/    /' "$WORK/submit.err"
say "submitted job array $J ($SHARDS tasks)"
wait_array "$J"
say "job array $J done: $(since "$t")s from submission"
ls "$S2/slurm/logs" | sed 's/^/    log: /'

"$RHO" status --study "$S2" >"$WORK/status.txt" || { cat "$WORK/status.txt"; die "rho status: S2 incomplete after the array"; }
"$RHO" categorize --study "$S2" >/dev/null

PY=""
for p in /work/pyvenv/bin/python python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import pyarrow' 2>/dev/null; then PY=$p; break; fi
done

compare_studies() {
  "$RHO" audit --study "$S1" --format csv --top 100000000 >"$WORK/audit1.csv"
  "$RHO" audit --study "$S2" --format csv --top 100000000 >"$WORK/audit2.csv"
  cmp -s "$WORK/audit1.csv" "$WORK/audit2.csv" || { diff "$WORK/audit1.csv" "$WORK/audit2.csv" | head -20; die "audit CSVs differ"; }
  local n; n=$(( $(wc -l <"$WORK/audit1.csv") - 1 ))
  [ "$n" -gt 0 ] || die "audit CSV has no tokens"
  if [ -n "$PY" ]; then
    "$PY" - "$S1" "$S2" <<'PYEOF' || die "losses/trajectories differ"
import sys, glob, os
import pyarrow.parquet as pq, pyarrow.compute as pc, pyarrow as pa
s1, s2 = sys.argv[1:]
def rows(paths):
    t = pa.concat_tables([pq.read_table(p) for p in paths])
    return t.sort_by([("checkpoint", "ascending"), ("seq", "ascending"), ("pos", "ascending")])
a = rows(sorted(glob.glob(os.path.join(s1, "losses", "*.parquet"))))
b = rows(sorted(glob.glob(os.path.join(s2, "losses", "checkpoint=*", "part-*.parquet"))))
assert a.num_rows == b.num_rows > 0, (a.num_rows, b.num_rows)
for col in a.column_names:
    assert a[col].equals(b[col]), f"losses column {col} differs"
for f in ["tokens.parquet", "trajectories.parquet"]:
    x, y = pq.read_table(os.path.join(s1, f)), pq.read_table(os.path.join(s2, f))
    assert x.equals(y), f"{f} differs"
print(f"    pyarrow: {a.num_rows} loss rows, tokens.parquet and trajectories.parquet identical")
PYEOF
  fi
  say "S1 (plain) and S2 (Slurm, $SHARDS shards) agree: $n tokens, audit CSV byte-identical"
}
compare_studies

# ---------------------------------------------------------------- a lost task, re-submitted alone
LOST=$(( SHARDS > 1 ? 1 : 0 ))
part=$(find "$S2/losses" -name "part-$LOST-of-$SHARDS.parquet" | sort | tail -n1)
[ -n "$part" ] || die "no part-$LOST-of-$SHARDS.parquet in $S2/losses"
rm -f "$part"
say "removed $(basename "$(dirname "$part")")/$(basename "$part") (task $LOST lost)"
if "$RHO" status --study "$S2" >"$WORK/status-lost.txt" 2>&1; then
  cat "$WORK/status-lost.txt"; die "rho status exits 0 with a part missing"
fi
sed 's/^/    /' "$WORK/status-lost.txt"

t=$(now)
J=$(tagged "$RHO" slurm eval --shards "$SHARDS" --study "$S2" --job-name rho-local --array "$LOST" -- "${EVAL_ARGS[@]}" 2>"$WORK/submit2.err") \
  || { cat "$WORK/submit2.err" >&2; die "re-submitting task $LOST failed"; }
say "re-submitted task $LOST alone as job $J"
wait_array "$J"
n=$(tagged squeue -h -t all -j "$J" -o %i | wc -l)
[ "$n" = 1 ] || die "re-submission ran $n tasks, not 1"
say "re-submission done: $(since "$t")s"
"$RHO" status --study "$S2" >"$WORK/status2.txt" || { cat "$WORK/status2.txt"; die "rho status: S2 still incomplete"; }
"$RHO" categorize --study "$S2" >/dev/null
compare_studies
