#!/bin/bash
# annex-heartbeat: the agent on every annex instance; docs/failsafe.md says what it does and when.
set -uo pipefail

ENV_FILE=${ANNEX_ENV_FILE:-/etc/annex/annex.env}
STATE_DIR=${ANNEX_STATE_DIR:-/var/lib/annex}
IMDS=${ANNEX_IMDS:-http://169.254.169.254/latest}
JITTER_SECONDS=${ANNEX_JITTER_SECONDS:-15}
RETRY_BUDGET_SECONDS=${ANNEX_RETRY_BUDGET_SECONDS:-20}

usage() {
  echo 'usage: annex-heartbeat [beat|arm|lease-end|spot-watch] | annex-heartbeat --report-problem "<reason>"' >&2
  exit 2
}

MODE=${1:-beat}
PROBLEM=""
NOTICE=""
case $MODE in
  beat | arm | lease-end | spot-watch) (( $# <= 1 )) || usage ;;
  --report-problem)
    (( $# == 2 )) || usage
    PROBLEM=$2
    [[ -n $PROBLEM && $PROBLEM != *$'\n'* ]] || usage
    ;;
  *) usage ;;
esac

# shellcheck source=/dev/null
. "$ENV_FILE"
: "${ANNEX_ID:?}" "${INSTANCE_ID:?}" "${REGION:?}" "${HEARTBEAT_URL:?}" "${DEADMAN_MARGIN_SECONDS:?}"
DRAIN_LEAD_SECONDS=${DRAIN_LEAD_SECONDS:-300}
SELF=$(readlink -f "$0")
RANDOM=$(( $(date +%s) ^ $$ ^ $(cksum <<<"$INSTANCE_ID" | cut -d' ' -f1) ))

log() {
  logger -t annex-heartbeat -- "$*" 2>/dev/null
  echo "annex-heartbeat: $*" >&2
}

power_off() {
  log "powering off: $*"
  systemctl poweroff --no-wall || shutdown -P now
  exit 0
}

now() { date +%s; }

lease_epoch() {
  local value
  value=$(cat "$STATE_DIR/lease-expires" 2>/dev/null) || value=0
  [[ $value =~ ^[0-9]+$ ]] || value=0
  echo "$value"
}

# The OS powers off at lease + margin even if this agent never runs again.
arm_backstop() {
  local minutes
  minutes=$(( ($(lease_epoch) + DEADMAN_MARGIN_SECONDS - $(now) + 59) / 60 ))
  (( minutes < 1 )) && minutes=1
  shutdown -P --no-wall "+${minutes}" >/dev/null 2>&1 || log "could not schedule the backstop shutdown"
}

# A transient timer NAME-EPOCH that runs this agent with MODE at EPOCH, replacing the previous NAME-*
# (a new name: the run that re-arms may itself be NAME-<old>.service).
arm_at() {
  local name=$1 epoch=$2 mode=$3 delay
  systemctl stop "${name}-*.timer" >/dev/null 2>&1
  delay=$(( epoch - $(now) ))
  (( delay > 0 )) || return 0
  systemd-run --quiet --collect --unit="${name}-${epoch}" --on-active="${delay}s" \
    --timer-property=AccuracySec=1s "$SELF" "$mode" >/dev/null 2>&1 ||
    log "could not arm ${name}: the minute timer enforces it instead"
}

# The lease timer to the second: drain ahead of the lease end, decide at the lease end.
arm_lease_timers() {
  local lease
  lease=$(lease_epoch)
  (( lease > 0 )) || return 0
  arm_at annex-drain-ahead $(( lease - DRAIN_LEAD_SECONDS )) beat
  arm_at annex-lease-end "$lease" lease-end
}

arm() {
  arm_backstop
  arm_lease_timers
}

set_lease() {
  [[ $1 =~ ^[0-9]+$ ]] || return 0
  [[ $1 == "$(lease_epoch)" ]] && return 0
  printf '%s\n' "$1" >"$STATE_DIR/lease-expires.new" && mv "$STATE_DIR/lease-expires.new" "$STATE_DIR/lease-expires"
  log "the lease now ends at $1"
  arm
}

deadman() {
  local lease
  lease=$(lease_epoch)
  if (( $(now) > lease + DEADMAN_MARGIN_SECONDS )); then
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

host() { condor_config_val FULL_HOSTNAME; }

# "claimed total" as a user reads "busy 4 of 4" (docs/failsafe.md). -slots, not -startd (24.4+: no State).
count_slots() {
  local ads
  ads=$(condor_status -slots -direct "$(host)" -af SlotType State Cpus 2>/dev/null) || ads=""
  awk 'NF < 3 || $3 !~ /^[0-9]+$/ { next }
    $1 == "Partitionable" { total += $3; next }
    { total++ } $2 == "Claimed" || $2 == "Preempting" { claimed++ }
    END { printf "%d %d\n", claimed, total }' <<<"$ads"
}

draining() { [[ -e $STATE_DIR/draining ]]; }

drain() {
  draining && return 0
  if condor_drain -graceful -reason "annex: $1" "$(host)" >/dev/null; then
    touch "$STATE_DIR/draining"
    log "draining ($1): running jobs finish, no new ones start"
  else
    log "condor_drain failed; trying again at the next run"
  fi
}

cancel_drain() {
  draining && [[ ! -e $STATE_DIR/spot-interruption ]] || return 0
  if condor_drain -cancel "$(host)" >/dev/null; then
    rm -f "$STATE_DIR/draining"
    log "drain cancelled: the lease was extended"
  fi
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

body() {
  local claimed total
  read -r claimed total < <(count_slots)
  python3 -c '
import json, sys
a = sys.argv
b = {"instance_id": a[1], "annex_id": a[2], "claimed_slots": int(a[3]), "total_slots": int(a[4])}
p = "".join(c for c in a[5] if c.isprintable()).strip()[:300]
b.update([("problem", p)] if p else [])
b.update([("spot_notice", a[6])] if a[6] else [])
print(json.dumps(b))' "$INSTANCE_ID" "$ANNEX_ID" "$claimed" "$total" "$PROBLEM" "$NOTICE"
}

# POST the body, print the answer; 429, 5xx, network errors: retried with jittered backoff, in budget.
report() {
  local payload=$1 deadline attempt=1 waited=0 config response status delay
  deadline=$(( $(now) + RETRY_BUDGET_SECONDS ))
  while :; do
    if config=$(signing_config); then
      response=$(curl -sS --max-time 10 --aws-sigv4 "aws:amz:${REGION}:execute-api" \
        --config <(printf '%s\n' "$config") -H "Content-Type: application/json" \
        --data-binary "$payload" -w '\n%{http_code}' "$HEARTBEAT_URL") || response=$'\n000'
      status=${response##*$'\n'}
      response=${response%$'\n'*}
      if [[ $status == 200 ]]; then
        printf '%s' "$response"
        return 0
      fi
      if [[ $status != 000 && $status != 429 && $status != 5?? ]]; then
        log "heartbeat refused (HTTP ${status}): ${response:0:300}"
        return 1
      fi
      log "heartbeat failed (HTTP ${status}, attempt ${attempt}): ${response:0:200}"
    else
      log "no instance credentials from IMDSv2 (attempt ${attempt})"
    fi
    delay=$(( 1 + RANDOM % (1 << (attempt < 3 ? attempt : 3)) ))
    if (( $(now) + delay >= deadline || waited + delay >= RETRY_BUDGET_SECONDS )); then
      log "heartbeat failed: giving up until the next run"
      return 1
    fi
    sleep "$delay"
    waited=$(( waited + delay ))
    attempt=$(( attempt + 1 ))
  done
}

obey() {
  local parsed action lease reason
  parsed=$(printf '%s' "$1" | python3 -c '
import json, sys
from datetime import datetime
answer = json.load(sys.stdin)
lease = answer.get("lease_expires_at") or ""
if lease:
    lease = int(datetime.fromisoformat(lease.replace("Z", "+00:00")).timestamp())
reason = " ".join(str(answer.get("reason") or "").split())[:200]
print(answer.get("action", ""), lease or "-", reason)') || { log "unreadable heartbeat answer"; return 1; }
  read -r action lease reason <<<"$parsed"
  [[ $lease == - ]] || set_lease "$lease"
  case $action in
    run)
      # Extended after a drain began: take jobs again (unless within the drain lead).
      if (( $(lease_epoch) - $(now) > DRAIN_LEAD_SECONDS )); then
        cancel_drain
      fi
      ;;
    drain) drain "${reason:-the control plane said drain}" ;;
    terminate) power_off "the control plane said terminate: ${reason}" ;;
    *) log "unknown action '${action}'" ;;
  esac
}

# The instance's own timer; 0 when the lease end was handled.
lease_timer() {
  local lease answer
  lease=$(lease_epoch)
  if (( $(now) < lease )); then
    if (( $(now) >= lease - DRAIN_LEAD_SECONDS )); then
      drain "the lease ends at ${lease}"
    fi
    return 1
  fi
  # Ended by our clock: one last question, then off unless extended.
  if answer=$(report "$(body)"); then
    obey "$answer"
    if (( $(lease_epoch) <= $(now) )); then
      power_off "the lease ended at ${lease}"
    fi
    log "the lease was extended to $(lease_epoch)"
  else
    drain "the lease ended at ${lease}"
    log "the lease ended at ${lease}; the control plane is silent: powering off at $(( lease + DEADMAN_MARGIN_SECONDS )) unless it extends"
  fi
  return 0
}

beat() {
  local answer
  sleep $(( RANDOM % (JITTER_SECONDS + 1) ))
  answer=$(report "$(body)") || return 1
  obey "$answer"
}

# Spot: an interruption notice (two minutes' warning) vacates jobs at once (-quick: MaxVacateTime, no
# retirement) and is reported; a rebalance recommendation is reported. Polls IMDS every 5 s, forever.
spot_check() {
  local token notice
  token=$(curl -sf --max-time 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$IMDS/api/token") || return 0
  if [[ ! -e $STATE_DIR/spot-interruption ]] && notice=$(imds_get "$token" spot/instance-action); then
    notice=$(python3 -c 'import json,sys; n=json.loads(sys.argv[1]); print(n["action"], n["time"])' \
      "$notice" 2>/dev/null) || { log "unreadable spot notice ignored"; return 0; }
    touch "$STATE_DIR/spot-interruption"
    log "spot interruption: ${notice}"
    draining && condor_drain -cancel "$(host)" >/dev/null && rm -f "$STATE_DIR/draining"
    condor_drain -quick -reason "annex: spot interruption (${notice})" "$(host)" >/dev/null && touch "$STATE_DIR/draining"
    NOTICE=interruption
    report "$(body)" >/dev/null
  elif imds_get "$token" events/recommendations/rebalance >/dev/null 2>&1 && [[ ! -e $STATE_DIR/spot-rebalance ]]; then
    touch "$STATE_DIR/spot-rebalance"
    log "spot rebalance recommendation"
    NOTICE=rebalance
    report "$(body)" >/dev/null
  fi
  NOTICE=""
}

spot_watch() {
  local polls=${ANNEX_SPOT_POLLS:-0}
  while :; do
    spot_check
    (( polls > 0 && --polls == 0 )) && return 0
    sleep 5
  done
}

mkdir -p "$STATE_DIR"
case $MODE in
  spot-watch) spot_watch ;;
  arm) arm ;;
  --report-problem)
    log "reporting a boot problem: ${PROBLEM:0:300}"
    report "$(body)" >/dev/null
    ;;
  lease-end)
    deadman
    lease_timer || beat
    ;;
  beat)
    deadman
    master_watch
    lease_timer || beat
    ;;
esac
