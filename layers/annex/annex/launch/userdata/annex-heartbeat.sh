#!/bin/bash
# annex-heartbeat: installed on every annex instance by its user data; a systemd timer runs it every
# minute (and the boot script runs `annex-heartbeat arm` once). Each run:
#   1. dead-man switch: powers off once the last lease it heard (plus a margin) has passed, network or
#      not; the OS also has a scheduled shutdown at that time (`shutdown -P +M`), re-armed on each change;
#   2. powers off when condor_master has not been running for three runs in a row;
#   3. reports claimed and total slots to POST /heartbeat, signed (SigV4) with this instance's role
#      credentials from IMDSv2, which never appear on a command line;
#   4. obeys the answer: run, drain (condor_drain -graceful) or terminate, and keeps the lease it carries.
set -uo pipefail

ENV_FILE=${ANNEX_ENV_FILE:-/etc/annex/annex.env}
STATE_DIR=${ANNEX_STATE_DIR:-/var/lib/annex}
IMDS=${ANNEX_IMDS:-http://169.254.169.254/latest}
# shellcheck source=/dev/null
. "$ENV_FILE"
: "${ANNEX_ID:?}" "${INSTANCE_ID:?}" "${REGION:?}" "${HEARTBEAT_URL:?}" "${DEADMAN_MARGIN_SECONDS:?}"

log() {
  logger -t annex-heartbeat -- "$*" 2>/dev/null
  echo "annex-heartbeat: $*" >&2
}

power_off() {
  log "powering off: $*"
  systemctl poweroff --no-wall || shutdown -P now
  exit 0
}

lease_epoch() {
  local value
  value=$(cat "$STATE_DIR/lease-expires" 2>/dev/null) || value=0
  [[ $value =~ ^[0-9]+$ ]] || value=0
  echo "$value"
}

# The OS powers off at lease + margin even if this agent never runs again.
arm_backstop() {
  local minutes
  minutes=$(( ($(lease_epoch) + DEADMAN_MARGIN_SECONDS - $(date +%s) + 59) / 60 ))
  (( minutes < 1 )) && minutes=1
  shutdown -P --no-wall "+${minutes}" >/dev/null 2>&1 || log "could not schedule the backstop shutdown"
}

set_lease() {
  [[ $1 =~ ^[0-9]+$ ]] || return 0
  [[ $1 == "$(lease_epoch)" ]] && return 0
  printf '%s\n' "$1" >"$STATE_DIR/lease-expires.new" && mv "$STATE_DIR/lease-expires.new" "$STATE_DIR/lease-expires"
  log "the lease now ends at $1"
  arm_backstop
}

deadman() {
  local lease
  lease=$(lease_epoch)
  if (( $(date +%s) > lease + DEADMAN_MARGIN_SECONDS )); then
    power_off "the lease ended at ${lease} and no extension was heard"
  fi
}

master_watch() {
  local misses
  if systemctl is-active --quiet condor; then
    rm -f "$STATE_DIR/master-down"
    return 0
  fi
  misses=$(( $(cat "$STATE_DIR/master-down" 2>/dev/null || echo 0) + 1 ))
  echo "$misses" >"$STATE_DIR/master-down"
  if (( misses >= 3 )); then
    power_off "condor_master has not been running for ${misses} checks"
  fi
}

# "claimed total" for this machine's startd; "0 0" when it does not answer.
count_slots() {
  local states
  states=$(condor_status -startd -direct "$(condor_config_val FULL_HOSTNAME)" -af State 2>/dev/null) || states=""
  awk 'NF { total++ } $1 == "Claimed" { claimed++ } END { printf "%d %d\n", claimed, total }' <<<"$states"
}

imds_get() {
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $1" "$IMDS/meta-data/$2"
}

# A curl config carrying the role's credentials, printed to a pipe (never an argument, never a file).
signing_config() {
  local token role creds
  token=$(curl -sf --max-time 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/api/token") || return 1
  role=$(imds_get "$token" iam/security-credentials/) || return 1
  creds=$(imds_get "$token" "iam/security-credentials/${role%%$'\n'*}") || return 1
  printf '%s' "$creds" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("user = \"%s:%s\"" % (c["AccessKeyId"], c["SecretAccessKey"]))
print("header = \"x-amz-security-token: %s\"" % c["Token"])'
}

obey() {
  local parsed action lease
  parsed=$(printf '%s' "$1" | python3 -c '
import json, sys
from datetime import datetime
answer = json.load(sys.stdin)
lease = answer.get("lease_expires_at") or ""
if lease:
    lease = int(datetime.fromisoformat(lease.replace("Z", "+00:00")).timestamp())
print(answer.get("action", ""), lease)') || { log "unreadable heartbeat answer"; return 1; }
  read -r action lease <<<"$parsed"
  set_lease "${lease:-}"
  case $action in
    run)
      # The lease was extended after a drain began: take jobs again.
      if [[ -e $STATE_DIR/draining ]]; then
        condor_drain -cancel "$(condor_config_val FULL_HOSTNAME)" && rm -f "$STATE_DIR/draining"
        log "drain cancelled: the lease was extended"
      fi
      ;;
    drain)
      if [[ ! -e $STATE_DIR/draining ]]; then
        condor_drain -graceful "$(condor_config_val FULL_HOSTNAME)" && touch "$STATE_DIR/draining"
        log "draining: running jobs finish, no new ones start"
      fi
      ;;
    terminate) power_off "the control plane said terminate" ;;
    *) log "unknown action '${action}'" ;;
  esac
}

beat() {
  local claimed total body config answer
  read -r claimed total < <(count_slots)
  body=$(printf '{"instance_id":"%s","annex_id":"%s","claimed_slots":%d,"total_slots":%d}' \
    "$INSTANCE_ID" "$ANNEX_ID" "$claimed" "$total")
  config=$(signing_config) || { log "no instance credentials from IMDSv2"; return 1; }
  answer=$(curl -sS --fail-with-body --max-time 20 --aws-sigv4 "aws:amz:${REGION}:execute-api" \
    --config <(printf '%s\n' "$config") -H "Content-Type: application/json" \
    --data-binary "$body" "$HEARTBEAT_URL") || { log "heartbeat failed: ${answer:0:300}"; return 1; }
  obey "$answer"
}

mkdir -p "$STATE_DIR"
case ${1:-beat} in
  arm) arm_backstop ;;
  beat)
    deadman
    master_watch
    beat
    ;;
  *)
    echo "usage: annex-heartbeat [beat|arm]" >&2
    exit 2
    ;;
esac
