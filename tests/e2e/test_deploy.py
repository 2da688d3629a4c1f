"""What ships for operators under scripts/deploy/: the Grafana dashboard and the systemd units.

The dashboard's queries are checked against a real /metrics answer, so a renamed metric breaks a test
rather than a panel. The units are checked by ``systemd-analyze`` (verify, and the hardening score),
and the service's own command line, environment and state directory are run as the unit would run
them, to see SIGTERM stop bbb-lb within the unit's TimeoutStopSec with every answered create on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from lb_core import checksum
from lb_core.store_tinydb import TinyDbStore
from tests.conftest import LB, REPO, http, required_tool, wait_for
from tests.e2e.test_admin import TOKEN, admin_url, create, wait_admin

DEPLOY = REPO / "scripts" / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
UNITS = [DEPLOY / "bbb-lb.service", DEPLOY / "bbb-lb-workers@.service"]
INSTALLED_BINARY = "/opt/bbb-lb/.venv/bin/bbb-lb"
INSTALLED_CONFIG = "/etc/bbb-lb/config.yaml"
MOODLE_SECRET = "moodle-secret-for-deploy"
# PromQL words that look like identifiers but name no metric.
PROMQL_WORDS = {"sum", "rate", "increase", "histogram_quantile", "by", "without", "max", "min", "avg", "count"}


# --- Grafana ------------------------------------------------------------------------------------------

def scrape(lb: LB) -> dict[str, set[str]]:
    """A real /metrics answer: every sample name with the label names it carries."""
    text = http(admin_url(lb) + "/metrics").text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every query, the templating's included."""
    found = [(panel["title"], target["expr"], target.get("legendFormat", ""))
             for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["definition"], ""))
    return found


def test_every_metric_the_grafana_dashboard_queries_is_in_a_real_metrics_answer(lb_factory):
    lb = wait_admin(lb_factory(
        servers=[0, 1], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN},
        integrations=[{"name": "moodle", "secret": MOODLE_SECRET, "max_meetings": 1, "max_participants": 5}]))
    wait_for(lambda: http(admin_url(lb) + "/health").status == 200, 15, what="the servers to be polled")
    # Traffic, so every labelled family has samples: a create, a join, a refusal by a limit, a FAILED call.
    assert create(lb, "grafana-room", secret=MOODLE_SECRET).field("returncode") == "SUCCESS"
    assert create(lb, "grafana-room-2", secret=MOODLE_SECRET).field("returncode") == "FAILED"  # max_meetings 1
    assert lb.call("join", {"meetingID": "grafana-room", "fullName": "Ann", "password": "ap"},
                   secret=MOODLE_SECRET).status == 302
    assert lb.call("getMeetingInfo", {"meetingID": "nowhere"}).field("returncode") == "FAILED"
    metrics = scrape(lb)
    dashboard = json.loads(DASHBOARD.read_text())

    checked = 0
    for title, expr, legend in queries(dashboard):
        used = set(re.findall(r"\b(bbb_lb_[a-z0-9_]+)\b", expr))
        assert used, f"{title}: {expr} queries no bbb-lb metric"
        selectors = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)) - PROMQL_WORDS
        assert selectors <= used, f"{title}: {expr} selects a metric bbb-lb does not have: {selectors - used}"
        for name in used:
            assert name in metrics, f"{title}: {name} is not in /metrics (has: {sorted(metrics)})"
            checked += 1
        labels = set().union(*(metrics[name] for name in used)) | {"instance", "job"}
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        assert grouped <= labels, f"{title}: {expr} groups by labels the metrics lack: {grouped - labels}"
        shown = set(re.findall(r"\{\{(\w+)\}\}", legend))
        assert shown <= (grouped or labels), f"{title}: the legend {legend} names labels the query drops"
        for label in re.findall(r'(\w+)\s*=~?\s*"', expr):
            assert label in labels, f"{title}: {expr} filters on a label the metrics lack: {label}"
    assert checked >= 20

    titles = " | ".join(panel["title"] for panel in dashboard["panels"])
    for wanted in ("Load", "Meetings per server", "Participants per server", "Status", "disableState",
                   "Requests per second", "FAILED", "Latency p50", "Latency p95", "Latency p99", "Store writes",
                   "Meeting events", "Limit hits per integration"):
        assert wanted in titles, f"the Grafana dashboard has no {wanted!r} panel"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


# --- systemd --------------------------------------------------------------------------------------------

def systemd_analyze() -> str:
    """Debian's systemd package has it; a CI without it fails (it must check the units), a developer's machine skips."""
    return required_tool(shutil.which("systemd-analyze"), "systemd-analyze", "systemd")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (a key may repeat), comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def installed_here(unit: Path, into: Path) -> Path:
    """The unit with the venv's bbb-lb where /opt/bbb-lb's would be (verify checks the binary exists)."""
    copy = into / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BINARY, str(REPO / ".venv" / "bin" / "bbb-lb")))
    return copy


def test_the_units_pass_systemd_analyze_verify_and_are_hardened(tmp_path):
    tool = systemd_analyze()
    copies = [installed_here(unit, tmp_path) for unit in UNITS]
    done = subprocess.run([tool, "verify", *map(str, copies)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    for unit in UNITS:
        settings = unit_settings(unit)
        assert settings["User"] == ["bbb-lb"] and settings["StateDirectory"] == ["bbb-lb"]
        assert settings["Restart"] == ["on-failure"] and settings["KillSignal"] == ["SIGTERM"]
        for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
            assert settings[key] == ["yes"], key
        assert settings["ProtectSystem"] == ["strict"]
        command = shlex.split(settings["ExecStart"][0])
        assert command[:4] == [INSTALLED_BINARY, "run", "--config", INSTALLED_CONFIG]
    workers = unit_settings(UNITS[1])
    assert shlex.split(workers["ExecStart"][0])[4:] == ["--workers", "%i"]
    assert workers["KillMode"] == ["mixed"]  # the supervisor alone gets SIGTERM and passes it on once
    # systemd's own score of the sandbox: 0 is locked down, 10 is none at all ("OK" is below 4).
    for copy in copies:
        scored = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(copy)], capture_output=True,
                                text=True, timeout=60)
        level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", scored.stdout).group(1))
        assert level <= 2.5, scored.stdout[-3000:]


def run_as_the_unit(unit: Path, root: Path, config: dict[str, Any], token: str) -> tuple[list[str], dict[str, str], Path]:
    """The unit's command, environment and state directory, laid out under ``root`` instead of /."""
    settings = unit_settings(unit)
    state = root / "var" / "lib" / settings["StateDirectory"][0]
    state.mkdir(parents=True, mode=0o700)
    etc = root / "etc" / "bbb-lb"
    etc.mkdir(parents=True)
    env_file = Path(settings["EnvironmentFile"][0].lstrip("-"))
    (etc / env_file.name).write_text(f"BBB_LB_ADMIN_TOKEN={token}\n")
    (etc / "config.yaml").write_text(yaml.safe_dump(config))
    moved = {"/var/lib/bbb-lb": str(state), "/etc/bbb-lb": str(etc)}

    def here(text: str) -> str:
        for installed, local in moved.items():
            text = text.replace(installed, local)
        return text.replace(INSTALLED_BINARY, str(REPO / ".venv" / "bin" / "bbb-lb"))

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for assignment in settings.get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = here(value)
    for line in (etc / env_file.name).read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    command = shlex.split(here(settings["ExecStart"][0]))
    return command, env, state


def test_sigterm_stops_the_service_within_its_timeout_with_no_lost_write(sim, tmp_path):
    unit = UNITS[0]
    settings = unit_settings(unit)
    assert settings["KillSignal"] == ["SIGTERM"]
    stop_timeout = float(settings["TimeoutStopSec"][0])
    sim.reset()
    root = tmp_path / "root"
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "secret": "lb-secret",
        "servers": [dict(s) for s in sim.servers[:2]],
        "store": {"path": "/var/lib/bbb-lb/lb.json"},  # in the unit's StateDirectory, as README.md says
        "admin": {"host": "127.0.0.1", "port": 0, "token": "${BBB_LB_ADMIN_TOKEN}"},
        "monitor": {"interval_s": 0.5, "timeout_s": 1.0, "down_after": 2, "up_after": 2},
    }
    command, env, state = run_as_the_unit(unit, root, config, TOKEN)
    config["store"]["path"] = str(state / "lb.json")
    (root / "etc" / "bbb-lb" / "config.yaml").write_text(yaml.safe_dump(config))
    ports_file = tmp_path / "ports.json"
    log_path = tmp_path / "journal.log"  # what the journal would get: stdout and stderr
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, "--ports-file", str(ports_file)], cwd=state, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        ports = wait_for(lambda: process.poll() is None and ports_file.exists()
                         and json.loads(ports_file.read_text()), 30, what="bbb-lb to listen")
        api = f"http://127.0.0.1:{ports['listen']}/bigbluebutton/api/"
        # The admin token came from the environment file through ${BBB_LB_ADMIN_TOKEN}.
        assert http(f"http://127.0.0.1:{ports['admin']}/api/status",
                    headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        wait_for(lambda: http(f"http://127.0.0.1:{ports['admin']}/health").status == 200, 15, what="a server up")

        answered: list[str] = []
        stop = threading.Event()

        def creates() -> None:
            """Creates one after another until the LB goes away; keeps those answered SUCCESS."""
            n = 0
            while not stop.is_set():
                meeting = f"sigterm-{n}"
                n += 1
                query = f"meetingID={meeting}&name={meeting}&moderatorPW=mp&attendeePW=ap"
                try:
                    reply = http(api + "create?" + checksum.sign("create", query, "lb-secret", "sha1"), timeout=5)
                except OSError:
                    return
                if b"<returncode>SUCCESS</returncode>" in reply.body:
                    answered.append(meeting)

        writer = threading.Thread(target=creates, daemon=True)
        writer.start()
        wait_for(lambda: len(answered) >= 20, 30, what="creates answered before the stop")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # creates are still being sent while it stops
        code = process.wait(stop_timeout + 5)
        took = time.monotonic() - started
        stop.set()
        writer.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    journal = log_path.read_text()
    assert code == 0, journal[-3000:]
    assert took < stop_timeout, f"SIGTERM took {took:.1f} s, the unit kills after {stop_timeout} s"
    assert "Traceback" not in journal and "bbb-lb stopped" in journal, journal[-3000:]
    assert "result=internalError" not in journal, journal[-3000:]  # calls in flight were answered, not cut
    assert (state / ".mitmproxy").is_dir()  # HOME in the state directory: mitmproxy's files land there

    async def stored() -> set[str]:
        store = TinyDbStore(str(state / "lb.json"))
        await store.open()
        try:
            return {doc["meeting_id"] for doc in (await store.all("meetings")).values()}
        finally:
            await store.close()

    kept = asyncio.run(stored())
    lost = [meeting for meeting in answered if meeting not in kept]
    assert not lost, f"{len(lost)} of {len(answered)} answered creates were lost: {lost[:5]}"
    assert {p.stat().st_mode & 0o777 for p in state.iterdir() if p.is_file()} <= {0o600}


def test_the_unit_runs_the_installed_entry_point():
    """ExecStart names the console script the venv install makes (pyproject.toml's [project.scripts])."""
    command = shlex.split(unit_settings(UNITS[0])["ExecStart"][0])
    assert Path(command[0]).name == "bbb-lb" and (REPO / ".venv" / "bin" / "bbb-lb").exists()
    assert 'bbb-lb = "addons.cli:main"' in (REPO / "pyproject.toml").read_text()
