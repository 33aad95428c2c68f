#!/bin/bash
# Annex node bootstrap, rendered by the launch function for one annex and run once by cloud-init.
# It joins this instance to the HTCondor pool and installs what stops it. It carries no secret: the
# pool token is read from Secrets Manager at boot with the instance's own role. Any failure powers the
# instance off (its shutdown behaviour is terminate), and so does running out of time to configure.
set -Eeuo pipefail
umask 022

ANNEX_ID=@@ANNEX_ID@@
ANNEX_NAME=@@ANNEX_NAME@@
CONDOR_OWNER=@@CONDOR_OWNER@@
CENTRAL_MANAGER=@@CENTRAL_MANAGER@@
POOL_TOKEN_SECRET_ARN=@@POOL_TOKEN_SECRET_ARN@@
SECRETS_ENDPOINT=@@SECRETS_ENDPOINT@@
HEARTBEAT_URL=@@HEARTBEAT_URL@@
LEASE_EXPIRES_EPOCH=@@LEASE_EXPIRES_EPOCH@@
IDLE_TIMEOUT_SECONDS=@@IDLE_TIMEOUT_SECONDS@@
DEADMAN_MARGIN_SECONDS=@@DEADMAN_MARGIN_SECONDS@@
CONFIG_TIMEOUT_SECONDS=@@CONFIG_TIMEOUT_SECONDS@@

IMDS=http://169.254.169.254/latest
STATE_DIR=/var/lib/annex
TOKEN_FILE=/etc/condor/tokens.d/annex-pool
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

# Backstop: whatever happens below, the OS powers off when the configuration bound has passed.
shutdown -P --no-wall "+$(( (CONFIG_TIMEOUT_SECONDS + 59) / 60 ))" || log "could not schedule the boot backstop"

# retry STEP: run the function STEP until it succeeds; power off once the configuration bound passes.
retry() {
  local delay=2
  until "$1"; do
    if (( $(date +%s) + delay > DEADLINE )); then
      power_off "${1//_/ } did not succeed within ${CONFIG_TIMEOUT_SECONDS}s"
    fi
    sleep "$delay"
    delay=$(( delay < 30 ? delay * 2 : 30 ))
  done
}

imds_get() {
  curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: ${IMDS_TOKEN}" "$IMDS/meta-data/$1"
}

read_instance_identity() {
  IMDS_TOKEN=$(curl -sf --max-time 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 3600" "$IMDS/api/token") &&
    INSTANCE_ID=$(imds_get instance-id) &&
    REGION=$(imds_get placement/region) &&
    [[ $INSTANCE_ID =~ ^i-[0-9a-f]{8,17}$ && $REGION =~ ^[a-z0-9-]+$ ]]
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

# The pool token goes from Secrets Manager straight into a root-only file: never echoed, never logged.
fetch_pool_token() {
  local config
  config=$(signing_config) || return 1
  mkdir -p "$(dirname "$TOKEN_FILE")"
  curl -sS -f --max-time 20 --aws-sigv4 "aws:amz:${REGION}:secretsmanager" \
    --config <(printf '%s\n' "$config") \
    -H "Content-Type: application/x-amz-json-1.1" -H "X-Amz-Target: secretsmanager.GetSecretValue" \
    --data-binary "{\"SecretId\":\"${POOL_TOKEN_SECRET_ARN}\"}" "$SECRETS_ENDPOINT" |
    python3 -c '
import json, os, sys
token = json.load(sys.stdin).get("SecretString", "").strip()
if not token or token.startswith("replace-me"):
    sys.exit("annex-boot: the pool token secret holds no token yet (see the deploy guide)")
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as out:
    out.write(token + "\n")' "$TOKEN_FILE"
}

write_condor_config() {
  mkdir -p /etc/condor/config.d
  cat >/etc/condor/config.d/90-annex.conf <<CONDOR_EOF
# Written at boot by Annex for annex ${ANNEX_ID}. Site security settings come from the image.
CONDOR_HOST = ${CENTRAL_MANAGER}
DAEMON_LIST = MASTER, STARTD
AnnexName = "${ANNEX_NAME}"
AnnexId = "${ANNEX_ID}"
AnnexOwner = "${CONDOR_OWNER}"
EC2InstanceID = "${INSTANCE_ID}"
STARTD_ATTRS = \$(STARTD_ATTRS) AnnexName AnnexId AnnexOwner EC2InstanceID
# Only the owner's jobs, or jobs that ask for this annex: +TargetAnnexName = "${ANNEX_NAME}"
START = (\$(START:True)) && ((TARGET.Owner =?= MY.AnnexOwner) || (TARGET.TargetAnnexName =?= MY.AnnexName))
# Idle: the startd exits after this long unclaimed, then the master, then the machine powers off.
STARTD_NOCLAIM_SHUTDOWN = ${IDLE_TIMEOUT_SECONDS}
MASTER.DAEMON_SHUTDOWN = (STARTD_StartTime =?= 0) && ((CurrentTime - DaemonStartTime) > 300)
DEFAULT_MASTER_SHUTDOWN_SCRIPT = /usr/local/sbin/annex-poweroff
CONDOR_EOF
}

install_agents() {
  mkdir -p /etc/annex "$STATE_DIR"
  {
    printf 'ANNEX_ID=%q\n' "$ANNEX_ID"
    printf 'INSTANCE_ID=%q\n' "$INSTANCE_ID"
    printf 'REGION=%q\n' "$REGION"
    printf 'HEARTBEAT_URL=%q\n' "$HEARTBEAT_URL"
    printf 'DEADMAN_MARGIN_SECONDS=%q\n' "$DEADMAN_MARGIN_SECONDS"
  } >/etc/annex/annex.env
  printf '%s\n' "$LEASE_EXPIRES_EPOCH" >"$STATE_DIR/lease-expires"

  cat >/usr/local/sbin/annex-poweroff <<'POWEROFF_EOF'
#!/bin/sh
logger -t annex "condor_master exited; powering off" || true
exec systemctl poweroff --no-wall
POWEROFF_EOF

  cat >/usr/local/sbin/annex-heartbeat <<'ANNEX_AGENT_EOF'
@@HEARTBEAT_AGENT@@
ANNEX_AGENT_EOF
  chmod 0755 /usr/local/sbin/annex-poweroff /usr/local/sbin/annex-heartbeat

  cat >/etc/systemd/system/annex-heartbeat.service <<'UNIT_EOF'
[Unit]
Description=Annex heartbeat: report slots, obey drain/terminate, enforce the lease
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/annex-heartbeat
TimeoutStartSec=50
UNIT_EOF
  cat >/etc/systemd/system/annex-heartbeat.timer <<'UNIT_EOF'
[Unit]
Description=Annex heartbeat every minute
[Timer]
OnActiveSec=30
OnUnitActiveSec=60
AccuracySec=5
[Install]
WantedBy=timers.target
UNIT_EOF
}

# Jobs run on this machine too: only root may reach the instance metadata (and so the role).
lock_metadata() {
  if command -v iptables >/dev/null 2>&1; then
    iptables -C OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT 2>/dev/null ||
      iptables -A OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT ||
      log "could not restrict the instance metadata service to root"
  else
    log "iptables is missing: jobs on this instance can reach the instance metadata service"
  fi
}

retry read_instance_identity
log "annex ${ANNEX_ID} (${ANNEX_NAME}): instance ${INSTANCE_ID} in ${REGION}"
systemctl stop condor 2>/dev/null || true
retry fetch_pool_token
write_condor_config
install_agents
lock_metadata
systemctl daemon-reload
systemctl enable --now annex-heartbeat.timer
systemctl enable condor
systemctl restart condor
# Configured: the lease (plus the margin) replaces the configuration bound as the OS backstop.
/usr/local/sbin/annex-heartbeat arm
trap - ERR
log "joined the pool at ${CENTRAL_MANAGER}; the lease ends at ${LEASE_EXPIRES_EPOCH} (epoch)"
