# Sourced by the benchmark scripts: `run NAME COMMAND...` runs COMMAND under GNU time
# and prints one line: name, exit code, wall seconds, max RSS (MiB), load average
# before. Needs $OUT (a scratch folder); COMMAND's stdout/stderr go to $OUT/stdout,
# $OUT/stderr.
run() { # name, command...
  local name=$1; shift
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  local rc=0
  /usr/bin/time -v -o "$OUT/time" "$@" >"$OUT/stdout" 2>"$OUT/stderr" || rc=$?
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$OUT/time")
  rss=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$OUT/time")
  printf '%-28s rc=%d  wall %7.2f s  max RSS %6d MiB  load %s\n' "$name" "$rc" "$wall" "$rss" "$load"
}
