"""The TLS path as a user takes it: `pocketpost tls generate`, `tls install` over the sim's
console link, `tls show`, then `pocketpost check --tls` against the sim, verified."""

import json

import pytest

from pocketpost_host.check import CHECKS

from emulated_board import free_port
from sim_process import SimProcess, run_cli, run_pocketpost, stop_quietly


@pytest.fixture
def tls_sim(tmp_path):
    pop3s, smtps, submission = free_port(), free_port(), free_port()
    sim = SimProcess(
        tmp_path / "sim", "--demo-user", "demo:demo-pass", "--pop3s-port", str(pop3s), "--smtps-port", str(smtps),
        "--submission-port", str(submission),
    )
    sim.ports = {"pop3s": pop3s, "smtps": smtps, "submission": submission}
    yield sim.start()
    stop_quietly(sim)


@pytest.mark.memory
def test_generate_install_show_and_check_over_tls(tls_sim, tmp_path):
    sim = tls_sim
    assert f"POP3S    127.0.0.1:{sim.ports['pop3s']} (needs a certificate: pocketpost tls install)" in sim.lines
    cert, key = tmp_path / "board.pem", tmp_path / "board.key"
    made = run_cli("tls", "generate", "--hostname", "127.0.0.1", "--cert-out", str(cert), "--key-out", str(key))
    assert made.exit_code == 0, made.output
    assert (key.stat().st_mode & 0o777) == 0o600  # the key is private
    installed = sim.cli("tls", "install", "--cert", str(cert), "--key", str(key))
    assert installed.exit_code == 0, installed.output
    assert installed.stdout.startswith("installed: CN=127.0.0.1, valid until ")
    shown = json.loads(sim.cli("tls", "show", "--json").stdout)
    assert shown["subject"] == "CN=127.0.0.1" and shown["key"] == "EC"
    if "takes effect after" in installed.stdout:
        assert sim.cli("reboot").exit_code == 0
        sim.wait_for("INFO boot: ready", start=len(sim.lines) - 1)
    # With one TLS session at a time (the default without PSRAM) a new session waits for the
    # place of the one that just ended; only the [IN-USE] check, which needs two at once, cannot
    # run, and says why.
    result = run_pocketpost(
        "check", "--host", "127.0.0.1", "--pop3-port", str(sim.pop3_port), "--smtp-port", str(sim.smtp_port),
        "--user", "demo", "--password-stdin", "--domain", "pocketpost.local", "--tls", "starttls",
        "--cafile", str(cert), "--large-size", "300000", "--json", "--allow-unsupported",
        input="demo-pass\n", timeout=240,
    )
    report = json.loads(result.stdout)
    not_passed = {c["name"]: (c["result"], c["detail"]) for c in report["checks"] if c["result"] != "pass"}
    assert list(not_passed) == ["pop3-in-use"] and result.returncode == 0, not_passed
    assert not_passed["pop3-in-use"][0] == "unsupported"
    assert not_passed["pop3-in-use"][1].endswith("allow two TLS sessions (pocketpost config set tls_max_sessions 2) to check the lock")
    # With two, every check runs.
    assert sim.cli("config", "set", "tls_max_sessions", "2").exit_code == 0
    for tls, ports in (("starttls", (sim.pop3_port, sim.smtp_port)), ("implicit", (sim.ports["pop3s"], sim.ports["smtps"]))):
        result = run_pocketpost(
            "check", "--host", "127.0.0.1", "--pop3-port", str(ports[0]), "--smtp-port", str(ports[1]),
            "--user", "demo", "--password-stdin", "--domain", "pocketpost.local", "--tls", tls,
            "--cafile", str(cert), "--large-size", "300000", "--json",
            input="demo-pass\n", timeout=240,
        )
        report = json.loads(result.stdout)
        failed = {c["name"]: c["detail"] for c in report["checks"] if c["result"] != "pass"}
        assert failed == {} and result.returncode == 0, (tls, failed)
        assert {c["name"] for c in report["checks"]} == set(CHECKS)


def test_install_refuses_a_key_that_is_not_the_certificates(tls_sim, tmp_path):
    files = {}
    for name in ("a", "b"):
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        assert run_cli("tls", "generate", "--hostname", name + ".example", "--cert-out", str(cert), "--key-out", str(key)).exit_code == 0
        files[name] = (cert, key)
    result = tls_sim.cli("tls", "install", "--cert", str(files["a"][0]), "--key", str(files["b"][1]))
    assert result.exit_code == 1
    assert result.stderr == "Error: the key does not belong to the certificate\n"
    assert tls_sim.cli("tls", "show").exit_code == 4  # nothing was installed
