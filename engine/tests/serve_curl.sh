#!/usr/bin/env bash
# Drives `proctor serve` with curl alone, as a user following the README would: health,
# register the example diamond, start an execution, poll it to completion, stream its events,
# and a 404's JSON error; then SIGTERM and a clean exit.
#
# Usage: serve_curl.sh PROCTOR_BINARY TEMP_DIR
# (run by `cargo test -p proctor-engine --test serve curl_script_drives_the_api`)
set -euo pipefail

proctor=${1:?usage: serve_curl.sh PROCTOR_BINARY TEMP_DIR}
dir=${2:?usage: serve_curl.sh PROCTOR_BINARY TEMP_DIR}
examples="$(cd "$(dirname "${BASH_SOURCE[0]}")/../examples" && pwd)"

fail() {
  echo "serve_curl.sh: FAIL: $*" >&2
  echo "--- server stdout" >&2
  cat "$dir/server.out" >&2 || true
  echo "--- server stderr" >&2
  cat "$dir/server.err" >&2 || true
  exit 1
}

command -v curl >/dev/null || fail "curl is not installed"

"$proctor" serve --db "$dir/proctor.db" --listen 127.0.0.1:0 \
  --agents "$examples/agents.yaml" >"$dir/server.out" 2>"$dir/server.err" &
server=$!
cleanup() {
  if kill -0 "$server" 2>/dev/null; then
    kill -KILL "$server" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# Every request is bounded.
c() { curl --silent --show-error --max-time 20 "$@"; }

# The server prints its address once recovery is done and it listens (up to 60 s).
base=
for _ in $(seq 1 600); do
  base=$(sed -n 's#^listening on \(http://[^ ]*\)$#\1#p' "$dir/server.out")
  [ -n "$base" ] && break
  kill -0 "$server" 2>/dev/null || fail "the server exited before listening"
  sleep 0.1
done
[ -n "$base" ] || fail "the server printed no address within 60 s"
echo "server at $base"

health=$(c --fail "$base/api/health") || fail "health check failed"
[ "$health" = '{"status":"ok"}' ] || fail "unexpected health answer: $health"

code=$(c -o "$dir/register.json" -w '%{http_code}' -X POST \
  -H 'Content-Type: application/yaml' --data-binary "@$examples/diamond.yaml" \
  "$base/api/definitions") || fail "register: curl failed"
[ "$code" = 201 ] || fail "register: HTTP $code: $(cat "$dir/register.json")"
grep -q '"name":"diamond","version":1' "$dir/register.json" ||
  fail "register: unexpected answer: $(cat "$dir/register.json")"
echo "registered diamond v1"

code=$(c -o "$dir/start.json" -w '%{http_code}' -X POST \
  -H 'Content-Type: application/json' -H 'Idempotency-Key: curl-run-1' \
  --data '{"definition": "diamond", "input": {"text": "hello"}}' \
  "$base/api/executions") || fail "start: curl failed"
[ "$code" = 201 ] || fail "start: HTTP $code: $(cat "$dir/start.json")"
id=$(sed -n 's/.*"execution":{"id":"\([^"]*\)".*/\1/p' "$dir/start.json")
[ -n "$id" ] || fail "start: no execution id in $(cat "$dir/start.json")"
echo "started $id"

# Poll (up to 60 s): the execution's own status is the first "status" in its view.
status=
for _ in $(seq 1 600); do
  c --fail -o "$dir/execution.json" "$base/api/executions/$id" || fail "GET $id failed"
  status=$(grep -o '"status":"[a-z]*"' "$dir/execution.json" | sed -n '1s/.*:"\(.*\)"/\1/p')
  case "$status" in
    completed) break ;;
    failed | cancelled) fail "execution $status: $(cat "$dir/execution.json")" ;;
  esac
  sleep 0.1
done
[ "$status" = completed ] || fail "not completed within 60 s (last status: $status)"
grep -q '"summary":"hello has 5 characters"' "$dir/execution.json" ||
  fail "unexpected output: $(cat "$dir/execution.json")"
echo "completed"

# The stream of a finished execution replays its history and ends after the terminal event.
c -N --max-time 30 -H 'Accept: text/event-stream' \
  "$base/api/executions/$id/events/stream" >"$dir/stream.txt" || fail "stream: curl failed"
last=$(grep '^event:' "$dir/stream.txt" | tail -n 1 | sed 's/^event: *//') || true
[ "$last" = ExecutionCompleted ] ||
  fail "the stream's last event is '$last': $(cat "$dir/stream.txt")"
ids=$(grep '^id:' "$dir/stream.txt" | sed 's/^id: *//' | tr '\n' ' ') || true
count=$(grep -c '^id:' "$dir/stream.txt") || true
expected=$(seq 1 "$count" | tr '\n' ' ')
[ "$count" -gt 0 ] && [ "$ids" = "$expected" ] || fail "stream ids are not 1..$count: $ids"
echo "streamed $count events, the last ExecutionCompleted"

code=$(c -o "$dir/missing.json" -w '%{http_code}' "$base/api/executions/nosuchexecution") ||
  fail "GET a missing execution: curl failed"
[ "$code" = 404 ] || fail "missing execution: HTTP $code: $(cat "$dir/missing.json")"
grep -q '^{"error":{"type":"not_found","message":"' "$dir/missing.json" ||
  fail "missing execution: not a JSON error: $(cat "$dir/missing.json")"
echo "404 is a JSON error"

kill -TERM "$server"
for _ in $(seq 1 600); do
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$server" 2>/dev/null && fail "the server is still running 60 s after SIGTERM"
exit_status=0
wait "$server" || exit_status=$?
[ "$exit_status" = 0 ] || fail "the server exited with $exit_status after SIGTERM"
grep -q '^stopped: ' "$dir/server.out" || fail "no 'stopped:' line after SIGTERM"
echo "serve_curl.sh: ok"
