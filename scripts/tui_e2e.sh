#!/usr/bin/env bash
# End-to-end test of `rho tui` in tmux: builds a small study from the committed
# fixtures, opens it, moves, filters, searches, starts a short training run,
# sees its progress, and quits; checks what tmux's capture-pane shows.
# Usage: scripts/tui_e2e.sh   (RHO=path/to/rho, default target/release/rho;
#        STUDY=dir to use an existing study instead, e.g. a demo study)
set -euo pipefail
cd "$(dirname "$0")/.."
RHO="${RHO:-target/release/rho}"
command -v tmux >/dev/null || { echo "tmux is not installed"; exit 1; }
WORK="$(mktemp -d)"
S="rho-e2e-$$"
cleanup() { tmux kill-session -t "$S" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

if [ -z "${STUDY:-}" ]; then
    STUDY="$WORK/study"
    "$RHO" eval --checkpoints "$PWD/fixtures/llama" --data "$PWD/fixtures/data/val.jsonl" --study "$STUDY" --quiet
    "$RHO" categorize --study "$STUDY" >/dev/null
fi

cap() { tmux capture-pane -p -t "$S"; }
fail() { echo "FAIL: $1"; echo "---- screen ----"; cap || true; exit 1; }
# wait_for PATTERN SECONDS
wait_for() {
    local end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ]; do
        if cap | grep -qE -- "$1"; then return 0; fi
        sleep 0.3
    done
    fail "did not see /$1/ within $2 s"
}
send() { tmux send-keys -t "$S" "$@"; sleep 0.3; }

tmux new-session -d -s "$S" -c "$PWD" -x 100 -y 30 "$RHO tui --study '$STUDY'"
tmux set-option -t "$S" remain-on-exit on >/dev/null
wait_for "Checkpoints" 20
wait_for "Mean loss per category" 5
echo "ok: opened on the Overview"

send Tab
wait_for "Loss by checkpoint" 5
send l l l j
wait_for "ΔL" 5
send "]"
wait_for "Doc 1 \(2/" 5
echo "ok: token browser, moved by token, line and document"

send 4
wait_for "filter L→L" 5
send l l
send 0
wait_for "filter all" 5
send / "\$" Enter
wait_for "/\\$" 5
send f
wait_for "fluctuating #1" 5
echo "ok: filter, search, most fluctuating"

send F3
wait_for "Distribution of residual_std" 5
send Enter
wait_for "by residual_std" 5
echo "ok: variance view"

send F4
wait_for "No runs yet|Runs \(n new\)" 5
send n
wait_for "New training run" 5
send Right       # mode: slm -> random (needs no reference model)
send Down Down Left Left   # steps 32 -> 16
send s
wait_for "tui-random-1" 5
wait_for "step [0-9]+/16" 60
wait_for "tokens/s" 10
echo "ok: run started, progress shown"
wait_for "done: 16 steps|step 16/16" 120
echo "ok: run finished"

send "?"
wait_for "Keys \(\? or Esc to close\)" 5
send Escape
send q
sleep 1
tmux list-panes -t "$S" -F '#{pane_dead}' | grep -q 1 || fail "rho tui did not exit on q"
cap | grep -q "Checkpoints" && fail "the alternate screen was not left"
[ -f "$STUDY/runs/tui-random-1/metrics.jsonl" ] || fail "no metrics.jsonl for the run"
echo "PASS: tui end-to-end"
