#!/bin/bash
# Annex node bootstrap, rendered by the launch function for one annex and run once by cloud-init.
# It joins this instance to the HTCondor pool and installs what stops it. It carries no secret: the
# pool token is read from SSM Parameter Store at boot with the instance's own role. Any failure powers the
# instance off (its shutdown behaviour is terminate), and so does running out of time to configure.
# Before HTCondor starts it checks, and powers off with a reported reason when one fails: jobs cannot
# reach the instance metadata service; the annex policy is the effective configuration; the pool
# token authorizes what the node needs. docs/htcondor.md explains the configuration written here.
set -Eeuo pipefail
umask 022

# The renderer validated every value below (annex.launch.userdata); they are shell-quoted.
ANNEX_ID=@@ANNEX_ID@@
ANNEX_NAME=@@ANNEX_NAME@@
CONDOR_USER=@@CONDOR_USER@@
SHARE_WITH=@@SHARE_WITH@@
ALL_MY_JOBS=@@ALL_MY_JOBS@@
CONDOR_HOST=@@CONDOR_HOST@@
COLLECTOR_HOST=@@COLLECTOR_HOST@@
USE_CCB=@@USE_CCB@@
POOL_TOKEN_PARAMETER=@@POOL_TOKEN_PARAMETER@@
SSM_ENDPOINT=@@SSM_ENDPOINT@@
HEARTBEAT_URL=@@HEARTBEAT_URL@@
LEASE_EXPIRES_EPOCH=@@LEASE_EXPIRES_EPOCH@@
DRAIN_LEAD_SECONDS=@@DRAIN_LEAD_SECONDS@@
IDLE_TIMEOUT_SECONDS=@@IDLE_TIMEOUT_SECONDS@@
DEADMAN_MARGIN_SECONDS=@@DEADMAN_MARGIN_SECONDS@@
CONFIG_TIMEOUT_SECONDS=@@CONFIG_TIMEOUT_SECONDS@@

# ANNEX_ROOT is empty on an instance; the tests run these steps in a sandbox under a temporary root.
ROOT=${ANNEX_ROOT:-}
IMDS=${ANNEX_IMDS:-http://169.254.169.254/latest}
CONDOR_ETC=$ROOT/etc/condor
ANNEX_CONFIG=$CONDOR_ETC/annex.conf
TOKEN_DIR=$CONDOR_ETC/tokens.d
TOKEN_FILE=$TOKEN_DIR/annex-pool
STATE_DIR=$ROOT/var/lib/annex
SBIN=$ROOT/usr/local/sbin
DEADLINE=$(( $(date +%s) + CONFIG_TIMEOUT_SECONDS ))

log() {
  echo "annex-boot: $*"
  logger -t annex-boot -- "$*" 2>/dev/null || true
}

power_off() {
  log "powering off: $*"
  systemctl poweroff --no-wall 2>/dev/null || shutdown -P now
  exit 1
}
trap 'power_off "bootstrap failed at line ${LINENO}"' ERR

# A reason the owner can act on: sent to the control plane (annex-client status shows it), then off.
problem() {
  log "PROBLEM: $1"
  "$SBIN/annex-heartbeat" --report-problem "$1" || log "could not report the problem to the control plane"
  power_off "$1"
}

# retry STEP: run the function STEP until it succeeds; power off once the configuration bound passes.
# Exponential backoff (2, 4, 8, 16, 30, 30... s) with jitter: each wait is drawn between half of it and
# all of it, so instances that booted together (a launch of 1,000) do not retry in step against a
# shared rate limit (SSM's GetParameter: 40 per second per account and region by default).
retry() {
  local delay=2 wait
  until "$1"; do
    wait=$(( delay / 2 + RANDOM % (delay / 2 + 1) ))
    if (( $(date +%s) + wait > DEADLINE )); then
      power_off "${1//_/ } did not succeed within ${CONFIG_TIMEOUT_SECONDS}s"
    fi
    sleep "$wait"
    delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))
  done
}

imds_get() {
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: ${IMDS_TOKEN}" "$IMDS/meta-data/$1"
}

read_instance_identity() {
  IMDS_TOKEN=$(curl -sf --max-time 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 3600" "$IMDS/api/token") &&
    INSTANCE_ID=$(imds_get instance-id) && REGION=$(imds_get placement/region) &&
    ZONE=$(imds_get placement/availability-zone) && VM_TYPE=$(imds_get instance-type) &&
    IMAGE_ID=$(imds_get ami-id) && LIFE_CYCLE=$(imds_get instance-life-cycle) &&
    [[ $INSTANCE_ID =~ ^i-[0-9a-f]{8,17}$ && $REGION =~ ^[a-z0-9-]+$ && $ZONE =~ ^[a-z0-9-]+$ ]] &&
    [[ $VM_TYPE =~ ^[a-z0-9.-]+$ && $IMAGE_ID =~ ^ami-[0-9a-f]{8,17}$ && $LIFE_CYCLE =~ ^(spot|on-demand|scheduled|capacity-block)$ ]]
}

# A curl config carrying the role's credentials, printed to a pipe (never an argument, never a file).
signing_config() {
  local role creds
  role=$(imds_get iam/security-credentials/) || return 1
  creds=$(imds_get "iam/security-credentials/${role%%$'\n'*}") || return 1
  printf '%s' "$creds" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("user = \"%s:%s\"" % (c["AccessKeyId"], c["SecretAccessKey"]))
print("header = \"x-amz-security-token: %s\"" % c["Token"])'
}

# The pool token goes from SSM Parameter Store (GetParameter, decrypted: a SecureString) straight into a
# root-only file (directory 0700, file 0600, whatever the image had): never echoed, never logged. Its
# identity (not secret) is kept for messages. A throttled or failed request fails the step; `retry`
# tries again with backoff and jitter.
fetch_pool_token() {
  local config
  config=$(signing_config) || return 1
  install -d -m 0700 "$TOKEN_DIR" && chmod 0700 "$TOKEN_DIR"
  curl -sS -f --max-time 20 --aws-sigv4 "aws:amz:${REGION}:ssm" \
    --config <(printf '%s\n' "$config") \
    -H "Content-Type: application/x-amz-json-1.1" -H "X-Amz-Target: AmazonSSM.GetParameter" \
    --data-binary "{\"Name\":\"${POOL_TOKEN_PARAMETER}\",\"WithDecryption\":true}" "$SSM_ENDPOINT" |
    python3 -c '
import base64, json, os, re, sys
token = json.load(sys.stdin).get("Parameter", {}).get("Value", "").strip()
if not token:
    sys.exit("annex-boot: the pool token parameter holds no token (see the deploy guide)")
fd = os.open(sys.argv[1] + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
with os.fdopen(fd, "w") as out:
    out.write(token + "\n")
os.replace(sys.argv[1] + ".new", sys.argv[1])
try:
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    who = "%s@%s" % (claims["sub"].split("@")[0], claims["iss"])
except Exception:
    who = "unknown"
print(who if re.fullmatch(r"[A-Za-z0-9._@:-]{1,200}", who) else "unknown")' "$TOKEN_FILE" >"$STATE_DIR/token-identity"
}

# The annex policy (docs/htcondor.md). Each is one literal line, so the boot check can compare it.
ANNEX_START='(TARGET.Owner =?= MY.AnnexOwner || (isString(TARGET.Owner) && stringListMember(TARGET.Owner, MY.AnnexSharedWith))) && (TARGET.AnnexTarget =?= MY.AnnexName || TARGET.AnnexTarget =?= MY.AnnexId || (MY.AnnexAllMyJobs =?= true && TARGET.Owner =?= MY.AnnexOwner && TARGET.AnnexTarget =?= undefined && TARGET.TargetAnnexName =?= undefined)) && (time() + MY.AnnexDrainLead < MY.AnnexLeaseExpires) && ((TARGET.AllowedExecuteDuration =?= undefined && TARGET.AllowedJobDuration =?= undefined) || (time() + TARGET.AllowedExecuteDuration <= MY.AnnexLeaseExpires) =?= true || (time() + TARGET.AllowedJobDuration <= MY.AnnexLeaseExpires) =?= true)'
ANNEX_RETIREMENT='ifThenElse(isInteger(MY.JobStart), MY.AnnexLeaseExpires - MY.JobStart, 0)'
ANNEX_MASTER_SHUTDOWN='(STARTD_StartTime =?= 0) && ((CurrentTime - DaemonStartTime) > 300)'
ANNEX_STARTD_ATTRS='IsAnnex AnnexName AnnexId AnnexOwner AnnexSharedWith AnnexAllMyJobs AnnexLeaseExpires AnnexDrainLead CloudProvider CloudPlatform CloudInstanceID CloudVMType CloudZone CloudRegion CloudImage CloudInterruptible'
ANNEX_MASTER_ATTRS='IsAnnex AnnexName AnnexId AnnexOwner CloudInstanceID'

write_condor_config() {
  local interruptible=false ccb="" vacate=""
  # A spot node gets a two-minute notice: the agent vacates with condor_drain -quick, which must fit it.
  [[ $LIFE_CYCLE == spot ]] && interruptible=true && vacate="MachineMaxVacateTime = 90"
  [[ $USE_CCB == true ]] && ccb="CCB_ADDRESS = \$(COLLECTOR_HOST)"
  mkdir -p "$CONDOR_ETC/config.d"
  # Read after every other local file, condor_config.local included: LOCAL_CONFIG_FILE is processed
  # after LOCAL_CONFIG_DIR, and this appends the annex file to its end.
  cat >"$CONDOR_ETC/config.d/99-annex.conf" <<CONDOR_EOF
# Written at boot by Annex: the annex configuration is read last, from ${ANNEX_CONFIG}.
LOCAL_CONFIG_FILE = \$(LOCAL_CONFIG_FILE) ${ANNEX_CONFIG}
CONDOR_EOF
  cat >"$ANNEX_CONFIG.new" <<CONDOR_EOF
# Written at boot by Annex for annex ${ANNEX_ID}. Site security settings come from the image.
CONDOR_HOST = ${CONDOR_HOST}
COLLECTOR_HOST = ${COLLECTOR_HOST}
${ccb}
${vacate}
DAEMON_LIST = MASTER, STARTD
IsAnnex = true
AnnexName = "${ANNEX_NAME}"
AnnexId = "${ANNEX_ID}"
AnnexOwner = "${CONDOR_USER}"
AnnexSharedWith = "${SHARE_WITH}"
AnnexAllMyJobs = ${ALL_MY_JOBS}
AnnexLeaseExpires = ${LEASE_EXPIRES_EPOCH}
AnnexDrainLead = ${DRAIN_LEAD_SECONDS}
CloudProvider = "AWS"
CloudPlatform = "EC2"
CloudInstanceID = "${INSTANCE_ID}"
CloudVMType = "${VM_TYPE}"
CloudZone = "${ZONE}"
CloudRegion = "${REGION}"
CloudImage = "${IMAGE_ID}"
CloudInterruptible = ${interruptible}
STARTD_ATTRS = \$(STARTD_ATTRS) ${ANNEX_STARTD_ATTRS}
MASTER_ATTRS = \$(MASTER_ATTRS) ${ANNEX_MASTER_ATTRS}
SYSTEM_JOB_MACHINE_ATTRS = \$(SYSTEM_JOB_MACHINE_ATTRS) AnnexName AnnexId CloudInstanceID CloudVMType CloudZone CloudInterruptible
# The owner's jobs (and those of the users the owner shares with) sent to this annex by name or id
# (+AnnexTarget), or every idle job of the owner when asked for, that can finish before the lease ends.
START = ${ANNEX_START}
STARTD.START = ${ANNEX_START}
# A drain (or any preemption) lets running jobs finish until the lease ends.
MAXJOBRETIREMENTTIME = ${ANNEX_RETIREMENT}
# The lease as the agent last heard it, every minute, without restarting the startd.
STARTD_CRON_JOBLIST = \$(STARTD_CRON_JOBLIST) ANNEXLEASE
STARTD_CRON_ANNEXLEASE_EXECUTABLE = ${SBIN}/annex-lease-attr
STARTD_CRON_ANNEXLEASE_MODE = Periodic
STARTD_CRON_ANNEXLEASE_PERIOD = 60
# Idle: no slot claimed for this long, HTCondor shuts down; the master then powers the machine off.
STARTD_NOCLAIM_SHUTDOWN = ${IDLE_TIMEOUT_SECONDS}
MASTER.DAEMON_SHUTDOWN = ${ANNEX_MASTER_SHUTDOWN}
DEFAULT_MASTER_SHUTDOWN_SCRIPT = ${SBIN}/annex-poweroff
CONDOR_EOF
  mv "$ANNEX_CONFIG.new" "$ANNEX_CONFIG"
}

install_agents() {
  mkdir -p "$ROOT/etc/annex" "$STATE_DIR" "$SBIN"
  {
    printf 'ANNEX_ID=%q\n' "$ANNEX_ID"
    printf 'INSTANCE_ID=%q\n' "$INSTANCE_ID"
    printf 'REGION=%q\n' "$REGION"
    printf 'HEARTBEAT_URL=%q\n' "$HEARTBEAT_URL"
    printf 'DEADMAN_MARGIN_SECONDS=%q\n' "$DEADMAN_MARGIN_SECONDS"
    printf 'DRAIN_LEAD_SECONDS=%q\n' "$DRAIN_LEAD_SECONDS"
  } >"$ROOT/etc/annex/annex.env"
  printf '%s\n' "$LEASE_EXPIRES_EPOCH" >"$STATE_DIR/lease-expires"

  cat >"$SBIN/annex-poweroff" <<'POWEROFF_EOF'
#!/bin/sh
logger -t annex "condor_master exited; powering off" || true
exec systemctl poweroff --no-wall
POWEROFF_EOF

  cat >"$SBIN/annex-lease-attr" <<'LEASE_EOF'
#!/bin/sh
lease=$(cat /var/lib/annex/lease-expires 2>/dev/null)
case $lease in '' | *[!0-9]*) exit 0 ;; esac
echo "AnnexLeaseExpires = $lease"
LEASE_EOF

  cat >"$SBIN/annex-heartbeat" <<'ANNEX_AGENT_EOF'
@@HEARTBEAT_AGENT@@
ANNEX_AGENT_EOF
  chmod 0755 "$SBIN/annex-poweroff" "$SBIN/annex-lease-attr" "$SBIN/annex-heartbeat"

  mkdir -p "$ROOT/etc/systemd/system"
  cat >"$ROOT/etc/systemd/system/annex-heartbeat.service" <<'UNIT_EOF'
[Unit]
Description=Annex heartbeat: report slots, obey drain/terminate, enforce the lease
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/annex-heartbeat
TimeoutStartSec=50
UNIT_EOF
  cat >"$ROOT/etc/systemd/system/annex-heartbeat.timer" <<'UNIT_EOF'
[Unit]
Description=Annex heartbeat every minute
[Timer]
OnActiveSec=30
OnUnitActiveSec=60
AccuracySec=5
[Install]
WantedBy=timers.target
UNIT_EOF
  cat >"$ROOT/etc/systemd/system/annex-spot-watch.service" <<'UNIT_EOF'
[Unit]
Description=Annex spot watch: vacate on an interruption notice, report it at once
[Service]
ExecStart=/usr/local/sbin/annex-heartbeat spot-watch
Restart=always
RestartSec=5
[Install]
WantedBy=multi-user.target
UNIT_EOF
}

# Jobs run on this machine too: only root may reach the instance metadata (and so the role). Fails
# closed: iptables, else nftables, then an unprivileged user must fail to connect, or the node stops.
lock_metadata() {
  local rule=(OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT)
  if command -v iptables >/dev/null 2>&1 && { iptables -C "${rule[@]}" 2>/dev/null || iptables -A "${rule[@]}"; }; then
    log "instance metadata restricted to root (iptables)"
  elif command -v nft >/dev/null 2>&1 && { nft list table inet annex >/dev/null 2>&1 ||
    nft -f - <<'NFT_EOF'
table inet annex {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 169.254.169.254 meta skuid != 0 reject
    ip6 daddr fd00:ec2::254 meta skuid != 0 reject
  }
}
NFT_EOF
  }; then
    log "instance metadata restricted to root (nftables)"
  else
    problem "could not restrict the instance metadata service to root (neither iptables nor nftables worked)"
  fi
  local rc=0
  runuser -u nobody -- curl -s -o /dev/null --max-time 3 -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$IMDS/api/token" || rc=$?
  case $rc in
    7 | 28) log "verified: an unprivileged user cannot reach the instance metadata service" ;;
    0 | 22) problem "an unprivileged user can still reach the instance metadata service after the lock" ;;
    *) problem "could not verify the instance metadata lock (runuser/curl exit ${rc})" ;;
  esac
}

# condor_config_val as the daemon that uses the value: a later file or a SUBSYS.-prefixed knob counts.
effective() {
  condor_config_val -subsystem "$1" "$2" 2>/dev/null || echo "<undefined>"
}

expect_value() {
  local got
  got=$(effective "$1" "$2")
  [[ $got == "$3" ]] || problem "the effective $2 is not the annex's (a later HTCondor configuration file overrides ${ANNEX_CONFIG}); fix the image, see docs/htcondor.md"
}

expect_attrs() {
  local list attr
  list=" $(effective "$1" "$2" | tr ',' ' ') "
  for attr in $3; do
    [[ $list == *" $attr "* ]] || problem "the effective $2 lacks ${attr} (a later HTCondor configuration file overrides ${ANNEX_CONFIG}); fix the image, see docs/htcondor.md"
  done
}

verify_effective_config() {
  expect_value startd START "$ANNEX_START"
  expect_value startd MAXJOBRETIREMENTTIME "$ANNEX_RETIREMENT"
  expect_value startd STARTD_NOCLAIM_SHUTDOWN "$IDLE_TIMEOUT_SECONDS"
  expect_value master DAEMON_SHUTDOWN "$ANNEX_MASTER_SHUTDOWN"
  expect_value master DEFAULT_MASTER_SHUTDOWN_SCRIPT "$SBIN/annex-poweroff"
  expect_value startd AnnexOwner "\"${CONDOR_USER}\""
  expect_value startd AnnexName "\"${ANNEX_NAME}\""
  expect_value startd AnnexId "\"${ANNEX_ID}\""
  expect_value startd COLLECTOR_HOST "$COLLECTOR_HOST"
  expect_attrs startd STARTD_ATTRS "$ANNEX_STARTD_ATTRS"
  expect_attrs master MASTER_ATTRS "$ANNEX_MASTER_ATTRS"
  log "verified: the effective HTCondor configuration holds the annex policy"
}

# The token must let this node advertise itself and read the pool: ask the collector, level by level.
ping_collector() {
  condor_ping -type collector -quiet "$1" >/dev/null 2>&1
}

verify_authorization() {
  local level delay identity
  identity=$(cat "$STATE_DIR/token-identity" 2>/dev/null || echo "the annex identity")
  for level in READ ADVERTISE_STARTD ADVERTISE_MASTER; do
    delay=2
    until ping_collector "$level"; do
      if (( $(date +%s) + delay > DEADLINE )); then
        if [[ $level == READ ]]; then
          problem "the collector at ${COLLECTOR_HOST} refused READ for ${identity} or could not be reached — see the deploy guide"
        fi
        problem "the collector at ${COLLECTOR_HOST} refused ${level} for ${identity} — see the deploy guide (pool/annex-central-manager.conf)"
      fi
      sleep "$delay"
      delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))
    done
  done
  log "verified: the collector authorizes READ, ADVERTISE_STARTD and ADVERTISE_MASTER for ${identity}"
}

annex_boot() {
  # Backstop: whatever happens below, the OS powers off when the configuration bound has passed.
  shutdown -P --no-wall "+$(( (CONFIG_TIMEOUT_SECONDS + 59) / 60 ))" || log "could not schedule the boot backstop"
  retry read_instance_identity
  log "annex ${ANNEX_ID} (${ANNEX_NAME}) for ${CONDOR_USER}: instance ${INSTANCE_ID} (${VM_TYPE}, ${ZONE}, ${LIFE_CYCLE})"
  systemctl stop condor 2>/dev/null || true
  install_agents
  lock_metadata
  retry fetch_pool_token
  write_condor_config
  verify_effective_config
  verify_authorization
  systemctl daemon-reload
  systemctl enable --now annex-heartbeat.timer
  if [[ $LIFE_CYCLE == spot ]]; then systemctl enable --now annex-spot-watch.service; fi
  systemctl enable condor
  systemctl restart condor
  # Configured: the lease (plus the margin) replaces the configuration bound as the OS backstop.
  "$SBIN/annex-heartbeat" arm
  trap - ERR
  log "joined the pool at ${COLLECTOR_HOST}; the lease ends at ${LEASE_EXPIRES_EPOCH} (epoch)"
}

annex_boot
