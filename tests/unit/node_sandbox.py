"""Runs steps of the REAL rendered boot script (annex-node.sh) in a sandbox: a temporary root, and stub
commands on PATH that accept only the argument forms the real tools accept. condor_config_val is
answered by HTCondor's own configuration reader (htcondor2) over the sandbox's files; the firewall stubs
keep their rules in a file that the runuser/curl stubs consult, like the kernel would.

Used by tests/unit/test_htcondor_*.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from annex.launch.userdata import NodeConfig, render_user_data, unpack_user_data

POOL_TOKEN_PARAMETER = "/annex/annex-test/pool-token"
HEARTBEAT_URL = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/v1/heartbeat"
SSM_ENDPOINT = "https://ssm.us-east-1.amazonaws.com"
# A token-shaped secret: header.payload.signature with sub/iss claims (base64url, no padding).
POOL_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ."
    "eyJzdWIiOiJhbm5leEBwb29sLmV4YW1wbGUub3JnIiwiaXNzIjoicG9vbC5leGFtcGxlLm9yZyJ9."
    "c2lnbmF0dXJlLW5vdC1hLXJlYWwtb25lLWJ1dC1zZWNyZXQ"
)


def node_config(**changes: object) -> NodeConfig:
    fields: dict[str, object] = {
        "annex_id": "ax-0123456789abcdef",
        "annex_name": "bio-run",
        "condor_user": "alice",
        "central_manager": "cm.pool.example.org:9618",
        "pool_token_parameter": POOL_TOKEN_PARAMETER,
        "ssm_endpoint": SSM_ENDPOINT,
        "heartbeat_url": HEARTBEAT_URL,
        "lease_expires_at": datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2),
        "idle_timeout": timedelta(minutes=20),
        "deadman_margin": timedelta(minutes=10),
        "config_timeout": timedelta(minutes=10),
        "drain_lead": timedelta(minutes=5),
    }
    return NodeConfig(**{**fields, **changes})  # type: ignore[arg-type]


STUB_LOG = """log() { printf '%s\\n' "$(basename "$0") $*" >>"$SANDBOX/commands.log"; }"""

STUBS: dict[str, str] = {
    # Recorded, harmless.
    "logger": f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n',
    "shutdown": f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n',
    "poweroff": f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n',
    "sleep": f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n',
    "systemctl": f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n',
    # iptables: only the two forms the boot script uses; -C answers from the rule file.
    "iptables": f"""#!/bin/bash
{STUB_LOG}
log "$@"
if [[ -n ${{FAKE_IPTABLES_BROKEN:-}} ]]; then
  echo "iptables: can't initialize iptables table 'filter'" >&2; exit 3
fi
rule="OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j REJECT"
op=$1; shift
[[ "$*" == "$rule" ]] || {{ echo "iptables: unexpected arguments: $*" >&2; exit 2; }}
case $op in
  -C) grep -qx "iptables $rule" "$SANDBOX/firewall" 2>/dev/null ;;
  -A) [[ -n ${{FAKE_IPTABLES_NOOP:-}} ]] || echo "iptables $rule" >>"$SANDBOX/firewall" ;;
  *) echo "iptables: unexpected option $op" >&2; exit 2 ;;
esac
""",
    # nft: 'list table inet annex' and '-f -' with the ruleset on stdin.
    "nft": f"""#!/bin/bash
{STUB_LOG}
log "$@"
if [[ "$*" == "list table inet annex" ]]; then
  grep -q '^nft ' "$SANDBOX/firewall" 2>/dev/null && exit 0
  echo "Error: No such file or directory; list table inet annex" >&2; exit 1
fi
[[ "$*" == "-f -" ]] || {{ echo "nft: unexpected arguments: $*" >&2; exit 1; }}
ruleset=$(cat)
if [[ -n ${{FAKE_NFT_BROKEN:-}} ]]; then
  echo "Error: Could not process rule: Operation not supported" >&2; exit 1
fi
if ! grep -q 'ip daddr 169.254.169.254 meta skuid != 0 reject' <<<"$ruleset"; then
  echo "nft: no IMDS rule" >&2; exit 1
fi
echo "nft imds-reject" >>"$SANDBOX/firewall"
""",
    # runuser -u USER -- COMMAND...: runs it as that user (the curl stub sees FAKE_AS_USER).
    "runuser": """#!/bin/bash
[[ $1 == -u && -n $2 && $3 == -- ]] || { echo "runuser: unexpected arguments: $*" >&2; exit 1; }
user=$2; shift 3
FAKE_AS_USER=$user exec "$@"
""",
    # condor_ping -type collector -quiet LEVEL: refused for the levels in FAKE_PING_DENY.
    "condor_ping": f"""#!/bin/bash
{STUB_LOG}
log "$@"
levels=" READ WRITE ADMINISTRATOR CONFIG DAEMON NEGOTIATOR ADVERTISE_MASTER ADVERTISE_STARTD "
levels+="ADVERTISE_SCHEDD CLIENT "
[[ $1 == -type && $2 == collector && $3 == -quiet && $# == 4 && $levels == *" $4 "* ]] ||
  {{ echo "condor_ping: unexpected arguments: $*" >&2; exit 1; }}
[[ " ${{FAKE_PING_DENY:-}} " == *" $4 "* ]] && exit 1
exit 0
""",
}

CURL = """#!{python}
# curl: the instance metadata service (refused to a non-root user once the firewall holds a rule),
# and SSM's GetParameter (JSON 1.1 protocol, SigV4-signed for ssm in the instance's region, a body the
# service model accepts: botocore's own model judges it). Any other URL is an error, as it would be
# offline. FAKE_PARAMETER unset: the parameter does not exist (HTTP 400 ParameterNotFound, so -f fails);
# FAKE_SSM_THROTTLE=N: the first N requests are throttled (HTTP 400 ThrottlingException), as at 40 TPS.
import json, os, sys
args = sys.argv[1:]
url = args[-1]
sandbox = os.environ["SANDBOX"]
with open(os.path.join(sandbox, "curl.log"), "a") as log:
    log.write(json.dumps(args) + "\\n")
imds = os.environ["ANNEX_IMDS"]
if url.startswith(imds):
    firewall = os.path.join(sandbox, "firewall")
    if os.environ.get("FAKE_AS_USER", "root") != "root" and os.path.exists(firewall):
        sys.stderr.write("curl: (7) Failed to connect\\n")
        sys.exit(7)
    path = url[len(imds):]
    answers = {{
        "/api/token": "imds-session-token",
        "/meta-data/instance-id": "i-0123456789abcdef0",
        "/meta-data/placement/region": "us-east-1",
        "/meta-data/placement/availability-zone": "us-east-1b",
        "/meta-data/instance-type": "c7i.xlarge",
        "/meta-data/ami-id": "ami-0123456789abcdef0",
        "/meta-data/instance-life-cycle": os.environ.get("FAKE_LIFE_CYCLE", "on-demand"),
        "/meta-data/iam/security-credentials/": "annex-instance",
        "/meta-data/iam/security-credentials/annex-instance": json.dumps(
            {{"AccessKeyId": "AKIAFAKE", "SecretAccessKey": "FAKESECRET", "Token": "FAKESESSION"}}
        ),
    }}
    if path not in answers:
        sys.exit(22)
    sys.stdout.write(answers[path])
elif url == os.environ["FAKE_SSM_ENDPOINT"]:
    import botocore.session
    def opt(name):
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    headers = dict(h.split(": ", 1) for h in opt("-H"))
    def fail(status, kind, message):
        # what SSM answers (a JSON 1.1 error body); with -f curl prints its own line and exits 22
        with open(os.path.join(sandbox, "ssm.log"), "a") as log:
            log.write(json.dumps({{"status": status, "__type": kind, "message": message}}) + "\\n")
        if "-f" in args:
            sys.stderr.write("curl: (22) The requested URL returned error: %d\\n" % status)
            sys.exit(22)
        sys.stdout.write(json.dumps({{"__type": kind, "message": message}}))
        sys.exit(0)
    if opt("--aws-sigv4") != ["aws:amz:us-east-1:ssm"] or "--config" not in args:
        fail(400, "IncompleteSignatureException", "not signed for ssm in us-east-1: %r" % args)
    target = headers.get("X-Amz-Target", "")
    if target.partition(".")[0] != "AmazonSSM" or headers.get("Content-Type") != "application/x-amz-json-1.1":
        fail(400, "UnknownOperationException", "headers: %r" % headers)
    operation = headers["X-Amz-Target"].partition(".")[2]
    model = botocore.session.get_session().get_service_model("ssm")
    if operation not in model.operation_names:
        fail(400, "UnknownOperationException", operation)
    if operation != "GetParameter":
        fail(400, "AccessDeniedException", "the instance role may only call ssm:GetParameter")
    body = json.loads((opt("--data-binary") or opt("-d"))[0])
    shape = model.operation_model(operation).input_shape
    unknown = set(body) - set(shape.members)
    missing = set(shape.required_members) - set(body)
    types = {{"string": str, "boolean": bool}}
    wrong = [
        k for k, v in body.items()
        if k in shape.members and not isinstance(v, types[shape.members[k].type_name])
    ]
    if unknown or missing or wrong:
        fail(400, "SerializationException", "unknown %s, missing %s, type %s" % (unknown, missing, wrong))
    with open(os.path.join(sandbox, "ssm-requests"), "a") as log:
        log.write("x")
    throttled = int(os.environ.get("FAKE_SSM_THROTTLE", "0"))
    if os.path.getsize(os.path.join(sandbox, "ssm-requests")) <= throttled:
        fail(400, "ThrottlingException", "Rate exceeded")
    if "FAKE_PARAMETER" not in os.environ or body["Name"] != os.environ["FAKE_PARAMETER_NAME"]:
        fail(400, "ParameterNotFound", body["Name"])
    value = os.environ["FAKE_PARAMETER"] if body.get("WithDecryption") else "AQICAHhEncryptedNotTheToken=="
    sys.stdout.write(json.dumps({{"Parameter": {{
        "Name": body["Name"], "Type": "SecureString", "Value": value, "Version": 3,
        "LastModifiedDate": 1764763200.0, "DataType": "text",
        "ARN": "arn:aws:ssm:us-east-1:123456789012:parameter" + body["Name"]}}}}))
else:
    sys.stderr.write("curl: (6) Could not resolve host\\n")
    sys.exit(6)
"""

CONDOR_CONFIG_VAL = """#!{python}
# condor_config_val [-subsystem NAME] KNOB, answered by HTCondor's own configuration reader.
import sys
args = sys.argv[1:]
subsystem = "TOOL"
if len(args) == 3 and args[0] == "-subsystem":
    subsystem = args[1].upper()
    args = args[2:]
if len(args) != 1 or args[0].startswith("-"):
    sys.exit("condor_config_val: unexpected arguments: " + " ".join(sys.argv[1:]))
import htcondor2
htcondor2.set_subsystem(subsystem)
htcondor2.reload_config()
# The real tool reads SUBSYS.KNOB before KNOB; htcondor2's param finds a prefixed-only knob by full name.
value = htcondor2.param.get(subsystem + "." + args[0]) if subsystem != "TOOL" else None
if value is None:
    value = htcondor2.param.get(args[0])
if value is None:
    sys.stderr.write("Not defined: %s\\n" % args[0])
    sys.exit(1)
print(value)
"""

SITE_BASE_CONFIG = """\
# A site image's condor_config, as packaged: local files after this one.
LOCAL_CONFIG_DIR = {etc}/config.d
LOCAL_CONFIG_FILE = {etc}/condor_config.local
REQUIRE_LOCAL_CONFIG_FILE = false
START = True
MAXJOBRETIREMENTTIME = 0
"""

# Files a site image might carry that try to replace the annex policy.
SITE_OVERRIDES = {
    "config.d/00-site.conf": "STARTD_ATTRS = SiteAttr\nMASTER_ATTRS = SiteAttr\nSiteAttr = 1\n",
    "config.d/zz-site-override.conf": (
        "START = True\nSTARTD.START = True\nSTARTD_NOCLAIM_SHUTDOWN = 0\nSTARTD_ATTRS = SiteAttr\n"
        'MAXJOBRETIREMENTTIME = 0\nAnnexOwner = "mallory"\n'
    ),
    "condor_config.local": "START = True\nMASTER_ATTRS = SiteAttr\nMASTER.DAEMON_SHUTDOWN = False\n",
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class NodeSandbox:
    """A temporary root with a simulated site image, the rendered boot script, and stub commands."""

    def __init__(self, tmp_path: Path, config: NodeConfig | None = None) -> None:
        self.dir = tmp_path
        self.root = tmp_path / "root"
        self.etc = self.root / "etc" / "condor"
        (self.etc / "config.d").mkdir(parents=True)
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.config = config or node_config()
        self.user_data = render_user_data(self.config)
        boot = unpack_user_data(self.user_data)
        body, _, last = boot.rstrip("\n").rpartition("\n")
        assert last == "annex_boot", "the boot script must end by calling annex_boot"
        self.script = tmp_path / "annex-boot-steps.sh"
        self.script.write_text(body + "\n")
        for name, text in STUBS.items():
            (self.bin / name).write_text(text)
        (self.bin / "curl").write_text(CURL.format(python=sys.executable))
        (self.bin / "condor_config_val").write_text(CONDOR_CONFIG_VAL.format(python=sys.executable))
        (self.bin / "python3").symlink_to(sys.executable)
        for tool in self.bin.iterdir():
            tool.chmod(0o755)
        (self.etc / "condor_config").write_text(SITE_BASE_CONFIG.format(etc=self.etc))

    def add_site_overrides(self, files: dict[str, str] | None = None) -> None:
        for name, text in (files or SITE_OVERRIDES).items():
            (self.etc / name).write_text(text)

    def without(self, *tools: str) -> None:
        for tool in tools:
            (self.bin / tool).unlink()

    def run(self, steps: str, **env: str) -> Result:
        """Source the boot script (all but its last line, `annex_boot`) and run STEPS in it. The
        configuration deadline is 'now', so retry loops give up at once instead of waiting."""
        environ = {
            "PATH": f"{self.bin}:/usr/bin",
            "HOME": str(self.dir),
            "SANDBOX": str(self.dir),
            "ANNEX_ROOT": str(self.root),
            "ANNEX_IMDS": "http://imds.invalid/latest",
            "CONDOR_CONFIG": str(self.etc / "condor_config"),
            "FAKE_SSM_ENDPOINT": SSM_ENDPOINT,
            "FAKE_PARAMETER_NAME": POOL_TOKEN_PARAMETER,
            "FAKE_PARAMETER": POOL_TOKEN,
            **env,
        }
        command = f"source {shlex.quote(str(self.script))}\nDEADLINE=$(date +%s)\n{steps}\n"
        done = subprocess.run(
            ["/bin/bash", "-c", command],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def stub_reporter(self) -> Path:
        """annex-heartbeat as the boot script finds it, recording --report-problem calls."""
        sbin = self.root / "usr" / "local" / "sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        agent = sbin / "annex-heartbeat"
        agent.write_text(f'#!/bin/bash\n{STUB_LOG}\nlog "$@"\n')
        agent.chmod(0o755)
        return agent

    def commands(self, name: str = "") -> list[str]:
        log = self.dir / "commands.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.startswith(name)]

    def powered_off(self) -> bool:
        return any(line.startswith("systemctl poweroff") for line in self.commands())

    def reported(self) -> list[str]:
        return [
            line.split("--report-problem ", 1)[1]
            for line in self.commands("annex-heartbeat --report-problem")
        ]


def load_condor_config(config_file: Path, subsystem: str = "TOOL") -> dict[str, str]:
    """HTCondor's effective configuration for SUBSYSTEM, read by htcondor2 in a fresh process (its
    configuration is process-global), as {knob: value} for every knob it knows."""
    code = (
        "import json, sys, htcondor2\n"
        f"htcondor2.set_subsystem({subsystem!r})\n"
        "htcondor2.reload_config()\n"
        "json.dump({k: htcondor2.param[k] for k in htcondor2.param.keys()}, sys.stdout)\n"
    )
    env = {**os.environ, "CONDOR_CONFIG": str(config_file)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))
