"""annex-client and HTCondor: whose jobs the annex runs is sent, shown, and the submit-file line that
sends jobs to it is in `request --help`, the confirmation and the status."""

from __future__ import annotations

import getpass

from annex_client.cli import main

from tests.unit.client_fakes import HEALTH, Wire, annex

REQUEST = ["request", "bio", "--count", "3", "--lease", "4h", "--yes"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def posted(wire: Wire) -> dict:
    (post,) = [c for c in wire.calls if c.method == "POST" and c.path == "/annexes"]
    return post.body


def test_request_sends_the_login_name_as_the_htcondor_user_by_default(capsys, monkeypatch):
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (200, annex()))
    )

    code, _, err = run(capsys, *REQUEST)

    assert code == 0
    body = posted(wire)
    assert (body["condor_user"], body["share_with"], body["all_my_jobs"]) == ("alice", [], False)
    assert 'alice\'s jobs sent to it (+AnnexTarget = "bio")' in err  # the confirmation says whose jobs


def test_request_options_for_the_htcondor_user_sharing_and_all_jobs(capsys, monkeypatch):
    wire = (
        Wire.install(monkeypatch).on("GET", "/health", (200, HEALTH)).on("POST", "/annexes", (200, annex()))
    )

    code, _, err = run(
        capsys,
        *REQUEST,
        "--condor-user",
        "rsmith",
        "--share-with",
        "bob",
        "--share-with",
        "carol",
        "--all-my-jobs",
    )

    assert code == 0
    body = posted(wire)
    assert (body["condor_user"], body["share_with"], body["all_my_jobs"]) == (
        "rsmith",
        ["bob", "carol"],
        True,
    )
    assert "rsmith's jobs (every idle one), and those bob, carol send to it" in err


def test_request_help_shows_the_submit_file_lines(capsys):
    code, out, _ = run(capsys, "request", "--help")

    assert code == 0

    assert '+AnnexTarget = "NAME"' in out
    assert "allowed_execute_duration = 3600" in out
    assert "--condor-user" in out


def test_status_shows_whose_jobs_the_annex_runs(capsys, monkeypatch):
    detail = annex(state="running", condor_user="alice", share_with=["bob"], instances=[], history=[])
    Wire.install(monkeypatch).on("GET", "/annexes/ax-0123456789abcdef", (200, detail))

    code, out, _ = run(capsys, "status", "ax-0123456789abcdef")

    assert code == 0
    assert 'alice (+AnnexTarget = "bio"); shared with bob' in out
