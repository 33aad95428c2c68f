"""A sandbox for the seed node's scripts: the user data rendered as CloudFormation would, its files
unpacked, and strict fakes of the commands they call (curl against IMDSv2, condor_config_val over
HTCondor's own config parser, condor_token_create, aws secretsmanager put-secret-value)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.seed_userdata import DELIMITER, LIB, render

POOL_TOKEN_PARAMETER = "/annex/annex-prod/pool-token"
STACK_VALUES = {
    "AWS::StackName": "annex-prod",
    "AWS::Region": "us-east-1",
    "AWS::URLSuffix": "amazonaws.com",
    "AnnexApi": "a1b2c3d4e5",
    "PoolTokenParameterName": "pool-token",
    "SeedTokenLifetime": "2592000",
    "SeedCondorSeries": "25.x",
    "SeedClientRequirement": "git+https://github.com/example/annex@v1.0#subdirectory=client",
}
IMDS = {
    "local-ipv4": "10.0.1.23",
    "public-ipv4": "203.0.113.45",
    "mac": "0e:12:34:56:78:9a",
    "network/interfaces/macs/0e:12:34:56:78:9a/vpc-id": "vpc-0123456789abcdef0",
}
# What the RPM's /etc/condor/condor_config does that matters here: the config.d directory and the
# recommended security (HTCondor 9.0+).
SITE_CONFIG = "use SECURITY : RECOMMENDED_V9_0\n"

_HEREDOC = re.compile(rf"^cat > (\S+) << '{DELIMITER}'\n(.*?)^{DELIMITER}$", re.M | re.S)


def user_data() -> str:
    return render(STACK_VALUES)


def unpacked(script: str | None = None) -> dict[str, str]:
    """Each file the user data writes, by its path on the instance."""
    return dict(_HEREDOC.findall(script or user_data()))


FAKE_CURL = r"""
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
args, method, headers, url, flags = sys.argv[1:], "GET", {}, None, set()
while args:
    a = args.pop(0)
    if a in ("-X", "--request"):
        method = args.pop(0)
    elif a in ("-H", "--header"):
        name, _, value = args.pop(0).partition(":")
        headers[name.strip().lower()] = value.strip()
    elif a.startswith("-") and not a.startswith("--") and set(a[1:]) <= set("fsSL"):
        flags |= set(a[1:])
    elif a.startswith("-"):
        sys.stderr.write(f"curl: option {a}: is unknown\n"); sys.exit(2)
    elif url is None:
        url = a
    else:
        sys.stderr.write("fake curl: one URL only\n"); sys.exit(2)
base = os.environ["FAKE_IMDS_URL"]
def fail(code):
    if "f" not in flags:
        sys.stdout.write(f"<html>{code}</html>")
        sys.exit(0)
    sys.stderr.write(f"curl: (22) The requested URL returned error: {code}\n"); sys.exit(22)
if url is None or not url.startswith(base):
    sys.stderr.write("curl: (7) Failed to connect\n"); sys.exit(7)
path = url[len(base):]
if path == "/latest/api/token":
    ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
    if method != "PUT" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
        fail(400)
    sys.stdout.write((state / "imds-token").read_text()); sys.exit(0)
if method != "GET":
    fail(405)
if headers.get("x-aws-ec2-metadata-token") != (state / "imds-token").read_text():
    fail(401)  # IMDSv2 only, as the template requires (HttpTokens: required)
data = json.loads((state / "imds.json").read_text())
key = path.removeprefix("/latest/meta-data/")
if key not in data:
    fail(404)
sys.stdout.write(data[key])
"""

FAKE_CONDOR_CONFIG_VAL = r"""
import sys
args = sys.argv[1:]
if len(args) != 1 or args[0].startswith("-"):
    sys.stderr.write("fake condor_config_val: only the `condor_config_val NAME` form is used\n"); sys.exit(1)
import htcondor2
htcondor2.reload_config()
value = htcondor2.param.get(args[0])
if value is None:
    sys.stderr.write(f"Not defined: {args[0]}\n"); sys.exit(1)
print(value)
"""

# condor_token_create(1): -identity user@domain [-key keyid] [-authz authz ...] [-lifetime value]
# [-token filename | -file filename] [-debug]; -help. One value per -authz, repeated for several.
FAKE_CONDOR_TOKEN_CREATE = r"""
import base64, json, os, secrets, sys, time
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
AUTHZ = {"ALLOW", "READ", "WRITE", "NEGOTIATOR", "ADMINISTRATOR", "OWNER", "CONFIG", "DAEMON",
         "ADVERTISE_STARTD", "ADVERTISE_SCHEDD", "ADVERTISE_MASTER"}
def usage(why):
    sys.stderr.write(f"condor_token_create: {why}\nusage: condor_token_create -identity user@domain "
                     "[-key keyid] [-authz authz ...] [-lifetime value] [-token filename] [-debug]\n")
    sys.exit(1)
args, opts, authz = sys.argv[1:], {}, []
while args:
    a = args.pop(0)
    if a == "-help":
        usage("help")
    if a == "-debug":
        continue
    if a not in ("-identity", "-key", "-authz", "-lifetime", "-token", "-file"):
        usage(f"unknown argument {a}")
    if not args:
        usage(f"{a} needs a value")
    v = args.pop(0)
    if a == "-authz":
        if v not in AUTHZ:
            usage(f"unknown authorization {v}")
        authz.append(v)
    elif a in opts:
        usage(f"{a} given twice")
    else:
        opts[a] = v
ident = opts.get("-identity", "")
if "@" not in ident:
    usage("-identity must be user@domain")
if "-lifetime" in opts and not opts["-lifetime"].isdigit():
    usage("-lifetime must be a number of seconds")
key = Path(os.environ["FAKE_POOL_KEY"])
if not key.is_file() or not os.access(key, os.R_OK):
    sys.stderr.write(f"Failed to read the signing key {key}\n"); sys.exit(1)
claims = {"sub": ident, "iat": int(time.time()), "scope": " ".join(f"condor:/{a}" for a in authz)}
if "-lifetime" in opts:
    claims["exp"] = claims["iat"] + int(opts["-lifetime"])
b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
token = b64({"alg": "HS256", "kid": "POOL"}) + "." + b64(claims) + "." + secrets.token_urlsafe(32)
with open(state / "issued.jsonl", "a") as log:
    log.write(json.dumps({"token": token, "identity": ident, "authz": authz,
                          "lifetime": opts.get("-lifetime")}) + "\n")
if "-token" in opts or "-file" in opts:
    sys.stderr.write("fake condor_token_create: the seed must not write the token into a tokens directory\n")
    sys.exit(1)
print(token)
"""

# aws ssm put-parameter (AWS CLI v2), judged by botocore's service model for ssm: every option is an
# input member of PutParameter in the CLI's spelling (--name, --value, --type, --tier, --overwrite |
# --no-overwrite, --key-id, ...) plus the global --region and --output; Name and Value are required;
# enums (Type, Tier) must be members; a parameter that exists is replaced only with --overwrite; tags
# cannot go with --overwrite. The seed's role may write only the stack's parameter (AccessDenied else).
FAKE_AWS = r"""
import json, os, stat, sys
from pathlib import Path
import botocore.session
from botocore import xform_name
state = Path(os.environ["FAKE_STATE"])
argv = sys.argv[1:]
with open(state / "aws-argv.jsonl", "a") as log:
    log.write(json.dumps(argv) + "\n")
if argv[:2] != ["ssm", "put-parameter"]:
    sys.stderr.write("fake aws: only `aws ssm put-parameter` exists here\n"); sys.exit(252)
shape = botocore.session.get_session().get_service_model("ssm").operation_model("PutParameter").input_shape
members = {"--" + xform_name(m, "-"): m for m in shape.members}
flags = {f"--{p}{xform_name(m, '-')}" : (m, p == "") for m, t in shape.members.items()
         if t.type_name == "boolean" for p in ("", "no-")}
args, opts = argv[2:], {}
while args:
    a = args.pop(0)
    if a in flags:
        member, value = flags[a]
    elif (a in members or a in ("--region", "--output")) and args:
        member, value = members.get(a, a), args.pop(0)
    else:
        sys.stderr.write(f"aws: error: Unknown options: {a}\n"); sys.exit(252)
    if member in opts:
        sys.stderr.write(f"aws: error: {a} given twice\n"); sys.exit(252)
    opts[member] = value
missing = [m for m in shape.required_members if m not in opts]
if missing:
    sys.stderr.write("aws: error: the following arguments are required: "
                     + ", ".join("--" + xform_name(m, "-") for m in missing) + "\n"); sys.exit(252)
for m in ("Type", "Tier"):
    if m in opts and opts[m] not in shape.members[m].enum:
        sys.stderr.write(f"aws: error: argument --{m.lower()}: Invalid choice '{opts[m]}'\n"); sys.exit(252)
allowed = json.loads((state / "iam.json").read_text())["PutParameter"]
if opts["Name"] != allowed:
    sys.stderr.write("An error occurred (AccessDeniedException) when calling the PutParameter operation: "
                     "not authorized to perform: ssm:PutParameter\n"); sys.exit(254)
store = state / "parameters.json"
params = json.loads(store.read_text()) if store.exists() else {}
if opts["Name"] in params and not opts.get("Overwrite"):
    sys.stderr.write("An error occurred (ParameterAlreadyExists) when calling the PutParameter operation: "
                     "The parameter already exists. To overwrite this value, set the overwrite option in "
                     "the request to true.\n"); sys.exit(254)
if opts.get("Overwrite") and "Tags" in opts:
    sys.stderr.write("An error occurred (ValidationException) when calling the PutParameter operation: "
                     "Invalid request: tags and overwrite can't be used together.\n"); sys.exit(254)
value = opts["Value"]
if value.startswith("file://"):
    path = Path(value[len("file://"):])
    modes = {"file": stat.S_IMODE(path.stat().st_mode), "dir": stat.S_IMODE(path.parent.stat().st_mode)}
    with open(state / "aws-files.jsonl", "a") as log:
        log.write(json.dumps(modes) + "\n")
    value = path.read_text()
version = params.get(opts["Name"], {}).get("Version", 0) + 1
params[opts["Name"]] = {"Name": opts["Name"], "Type": opts.get("Type", "String"), "Value": value,
                        "Version": version, "Tier": opts.get("Tier", "Standard")}
store.write_text(json.dumps(params))
print(json.dumps({"Version": version, "Tier": params[opts["Name"]]["Tier"]}, indent=4))
"""


_CONFIG_INSTALL = re.compile(r'^install -m 0644 "\$LIB/(\S+)" (/etc/condor/config\.d/\S+)$', re.M)
_UNIT = re.compile(r"^cat > /etc/systemd/system/(\S+) << 'UNIT_EOF'\n(.*?)^UNIT_EOF$", re.M | re.S)


def config_installs(boot_script: str) -> list[tuple[str, str]]:
    """(file in the seed's lib directory, HTCondor config file) for each config the boot installs."""
    return _CONFIG_INSTALL.findall(boot_script)


def systemd_units(boot_script: str) -> dict[str, str]:
    return dict(_UNIT.findall(boot_script))


@dataclass
class Sandbox:
    root: Path
    bin: Path
    state: Path
    condor: Path
    files: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "FAKE_STATE": str(self.state),
            "FAKE_IMDS_URL": "http://169.254.169.254",
            "FAKE_POOL_KEY": str(self.condor / "passwords.d" / "POOL"),
            "CONDOR_CONFIG": str(self.condor / "condor_config"),
            "ANNEX_SEED_ENV": str(self.root / "etc" / "annex-seed" / "seed.env"),
            "ANNEX_SEED_STATE": str(self.root / "var" / "lib" / "annex-seed"),
            "ANNEX_SEED_ADDRESS_CONF": str(self.condor / "config.d" / "50-annex-seed-address.conf"),
            "ANNEX_RETRY_DELAY": "0",
            "ANNEX_ADDRESS_TRIES": "2",
        }
        env.update(extra)
        return env

    def run(self, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        path = self.root / "usr" / "local" / "lib" / "annex-seed" / script
        return subprocess.run(
            ["/bin/bash", str(path)], env=self.env(**extra), capture_output=True, text=True, check=False
        )

    def issued(self) -> list[dict[str, Any]]:
        log = self.state / "issued.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def parameter(self, name: str = POOL_TOKEN_PARAMETER) -> dict[str, Any]:
        """The parameter as SSM holds it (KeyError: it was never put)."""
        store = self.state / "parameters.json"
        return json.loads(store.read_text() if store.exists() else "{}")[name]  # type: ignore[no-any-return]

    def jsonl(self, name: str) -> list[Any]:
        log = self.state / name
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make_sandbox(
    root: Path, *, imds: dict[str, str] | None = None, site_config: str = SITE_CONFIG
) -> Sandbox:
    """The seed's files as the user data writes them, its HTCondor configuration directory as
    annex-seed-boot installs it, and the fakes first on PATH."""
    files = unpacked()
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    bin_dir, state, condor = root / "fakebin", root / "fake-state", root / "etc" / "condor"
    for d in (bin_dir, state, condor / "config.d", condor / "passwords.d", root / "tmp", root / "home"):
        d.mkdir(parents=True, exist_ok=True)
    for name, body in {
        "curl": FAKE_CURL,
        "condor_config_val": FAKE_CONDOR_CONFIG_VAL,
        "condor_token_create": FAKE_CONDOR_TOKEN_CREATE,
        "aws": FAKE_AWS,
    }.items():
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    (state / "imds-token").write_text("AQAEAFake-imds-session-token==")
    (state / "imds.json").write_text(json.dumps(IMDS if imds is None else imds))
    # what the seed role's policy allows (template.yaml, SeedRole: ssm:PutParameter on this one name)
    (state / "iam.json").write_text(json.dumps({"PutParameter": POOL_TOKEN_PARAMETER}))
    key = condor / "passwords.d" / "POOL"
    key.write_text("fake-signing-key\n")
    key.chmod(0o600)
    (condor / "condor_config").write_text(f"LOCAL_CONFIG_DIR = {condor / 'config.d'}\n{site_config}")
    lib = root / "usr" / "local" / "lib" / "annex-seed"
    # What annex-seed-boot installs into HTCondor's config directory, read from its `install` lines.
    for source, target in config_installs(files[f"{LIB}/annex-seed-boot"]):
        (root / target.lstrip("/")).write_text((lib / source).read_text())
    os.chmod(root / "tmp", 0o1777)
    return Sandbox(root=root, bin=bin_dir, state=state, condor=condor, files=files)
