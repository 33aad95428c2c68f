#!/bin/bash
# Checks, on the central manager, that the effective HTCondor configuration lets annex nodes join
# (pool/annex-central-manager.conf) without locking out the pool's own execute nodes. Read-only: it
# only runs condor_config_val. Exit 0 when every check passes, 1 otherwise.
#   usage: check-central-manager.sh [IDENTITY]     (default: annex@$(condor_config_val TRUST_DOMAIN))
set -uo pipefail
set -f  # list entries such as * are patterns, never file names

failures=0
ok() { echo "ok:   $*"; }
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# The value the collector itself uses (SUBSYS.-prefixed knobs count); empty when undefined.
knob() {
  condor_config_val -subsystem collector "$1" 2>/dev/null || true
}

# matches IDENTITY LIST: some entry of an ALLOW/DENY list (comma or space separated, user@domain or
# user@domain/host, with * wildcards) covers IDENTITY.
matches() {
  local identity=$1 entry
  for entry in ${2//,/ }; do
    entry=${entry%%/*}
    # shellcheck disable=SC2053  # the entry is a glob pattern
    [[ $identity == $entry ]] && return 0
  done
  return 1
}

trust_domain=$(knob TRUST_DOMAIN)
if [[ -z $trust_domain ]]; then
  fail "TRUST_DOMAIN is not defined; the annex token names annex@<TRUST_DOMAIN>"
fi
identity=${1:-annex@${trust_domain}}
echo "checking that ${identity} may join this pool"

# Undefined ALLOW_ADVERTISE_STARTD/MASTER fall back to ALLOW_DAEMON.
daemon=$(knob ALLOW_DAEMON)
for level in ADVERTISE_STARTD ADVERTISE_MASTER READ; do
  allow=$(knob "ALLOW_${level}")
  shown=${allow:-undefined}
  if [[ -z $allow && $level == ADVERTISE_* ]]; then
    allow=$daemon
    shown="undefined, so ALLOW_DAEMON: ${daemon}"
  fi
  deny=$(knob "DENY_${level}")
  if matches "$identity" "$allow"; then
    ok "ALLOW_${level} admits ${identity}"
  else
    fail "ALLOW_${level} (${shown}) does not admit ${identity}: install pool/annex-central-manager.conf"
  fi
  if [[ -n $deny ]] && matches "$identity" "$deny"; then
    fail "DENY_${level} (${deny}) refuses ${identity}"
  fi
done

# Additive, not a replacement: every identity ALLOW_DAEMON admits may still advertise.
for level in ADVERTISE_STARTD ADVERTISE_MASTER; do
  allow=$(knob "ALLOW_${level}")
  [[ -z $allow ]] && allow=$daemon
  missing=""
  for entry in ${daemon//,/ }; do
    [[ " ${allow//,/ } " == *" ${entry} "* ]] || missing+=" ${entry}"
  done
  if [[ -n $missing ]]; then
    fail "ALLOW_${level} lacks${missing} from ALLOW_DAEMON: the pool's own execute nodes would be locked out"
  else
    ok "ALLOW_${level} still admits everything ALLOW_DAEMON admits"
  fi
done

methods=$(knob SEC_DEFAULT_AUTHENTICATION_METHODS)
if [[ -z $methods || ${methods^^} =~ (IDTOKENS|TOKEN) ]]; then
  ok "IDTOKENS authentication is accepted (SEC_DEFAULT_AUTHENTICATION_METHODS=${methods:-default})"
else
  fail "SEC_DEFAULT_AUTHENTICATION_METHODS (${methods}) does not include IDTOKENS"
fi

ccb=$(knob ENABLE_CCB_SERVER)
if [[ ${ccb,,} =~ ^(false|no|0)$ ]]; then
  fail "ENABLE_CCB_SERVER is off: annex nodes in private subnets (CCB_ADDRESS) cannot be reached"
else
  ok "the collector is a CCB server"
fi

if ((failures)); then
  echo "${failures} check(s) failed; see docs/htcondor.md"
  exit 1
fi
echo "all checks passed"
