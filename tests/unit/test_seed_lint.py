"""cfn-lint and `sam validate --lint` judge the template with the seed off (as committed) and on (every
seed option set), so a seed property CloudFormation would refuse fails here, not at the first deploy."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from annex_local.template import REPO_ROOT, TEMPLATE, load_template

CFN_LINT = Path(sys.executable).with_name("cfn-lint")
SAM = REPO_ROOT / ".venv-sam" / "bin" / "sam"
SEED_ON = {
    "SeedNode": "on",
    "SeedVpcId": "vpc-0123456789abcdef0",
    "SeedSubnetId": "subnet-0123456789abcdef0",
    "SeedAdminCidr": "198.51.100.0/24",
    "SeedCondorCidr": "203.0.113.0/24",
    "SeedKeyName": "admin",
    "SeedApiCaller": "on",
    "SeedClientRequirement": "git+https://github.com/example/annex@v1.0#subdirectory=client",
    "PoolSecurityGroupId": "sg-0123456789abcdef0",
    "SubnetIds": "subnet-0123456789abcdef1",
}


def long_form(node: Any) -> Any:
    """The loader reads `!Condition X` as Fn::Condition; in CloudFormation JSON it is Condition."""
    if isinstance(node, dict):
        return {("Condition" if k == "Fn::Condition" else k): long_form(v) for k, v in node.items()}
    if isinstance(node, list):
        return [long_form(v) for v in node]
    return node


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """The committed template (seed off) and the same template with the seed's parameters defaulted on."""
    on = long_form(copy.deepcopy(load_template()))
    for name, value in SEED_ON.items():
        on["Parameters"][name]["Default"] = value
    path = tmp_path_factory.mktemp("seed") / "template-seed-on.json"
    path.write_text(json.dumps(on, indent=1))
    return {"off": TEMPLATE, "on": path}


@pytest.mark.parametrize("case", ["off", "on"])
def test_cfn_lint_accepts_the_template(templates, case):
    result = subprocess.run(
        [str(CFN_LINT), str(templates[case])], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", ["off", "on"])
def test_sam_validate_lint_accepts_the_template(templates, case):
    assert SAM.exists(), "sam is missing: `make template` builds .venv-sam"
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    result = subprocess.run(
        [str(SAM), "validate", "--lint", "--template-file", str(templates[case])],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO_ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
