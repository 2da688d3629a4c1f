"""``bbb-lb recordings import`` of an archive that takes longer than the admin API's request timeout: the
import is a job on the LB, answered at once, which the command asks after until it is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from tests.conftest import LB, REPO, Simulator, http, wait_for
from tests.e2e.test_recordings import TOKEN, publishing_sim, rec_lb  # noqa: F401 - fixtures

LOWERED_TIMEOUT_S = "0.2"  # far below what importing the archive below takes


def big_archive(tmp_path: Path, sim: Simulator, record_id: str, megabytes: int = 40) -> Path:
    """A real recording (as the simulator publishes it) with a large incompressible video added."""
    sim.control("/servers/bbb1/recordings", {"meetingID": "big", "recordID": record_id})
    folder = tmp_path / "published" / "bbb1" / "presentation" / record_id
    (folder / "video" / "big.webm").write_bytes(os.urandom(megabytes * 1_000_000))
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    path = spool / f"{record_id}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=f"presentation/{record_id}")
    return path


def admin(lb: LB, path: str, body: dict[str, str] | None = None) -> tuple[int, dict]:
    reply = http(f"http://127.0.0.1:{lb.bound['admin']}{path}", method="POST" if body is not None else "GET",
                 data=json.dumps(body).encode() if body is not None else None,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    return reply.status, json.loads(reply.body)


def test_an_import_longer_than_the_request_timeout_is_waited_for_and_reported(rec_lb: LB, publishing_sim: Simulator,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    lb = rec_lb
    archive = big_archive(tmp_path, publishing_sim, "rec-big")
    env = {**os.environ, "BBB_LB_ADMIN_TIMEOUT_S": LOWERED_TIMEOUT_S}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "addons.cli", "recordings", "import", str(archive.parent),
                           "--config", str(lb.config_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    took = time.monotonic() - started
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"{archive}: imported recording rec-big" in done.stdout
    assert took > float(LOWERED_TIMEOUT_S) * 2, took  # it did outlast the request timeout
    assert not archive.exists()
    shown = json.loads(subprocess.run([sys.executable, "-m", "addons.cli", "recordings", "show", "rec-big",
                                       "--config", str(lb.config_path)], cwd=REPO, capture_output=True,
                                      text=True, timeout=60, env=env).stdout)
    assert shown["stored_formats"] == ["presentation"] and shown["size"] > 40_000_000
    # Imported again: the operator is told it was there already.
    again = big_archive(tmp_path, publishing_sim, "rec-big", megabytes=1)
    done = subprocess.run([sys.executable, "-m", "addons.cli", "recordings", "import", str(again),
                           "--config", str(lb.config_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0 and "replaced recording rec-big (it was there already" in done.stdout, done.stdout


def test_the_admin_api_answers_an_import_job_at_once_and_tells_its_outcome(rec_lb: LB, publishing_sim: Simulator,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    lb = rec_lb
    archive = big_archive(tmp_path, publishing_sim, "rec-job", megabytes=20)
    started = time.monotonic()
    status, job = admin(lb, "/api/recordings/imports", {"path": str(archive)})
    assert status == 202 and job["state"] == "running" and job["file"] == "rec-job.tar.gz", job
    assert time.monotonic() - started < 1.0
    # Asked again for the same file while it runs: the same job, not a second import.
    status, same = admin(lb, "/api/recordings/imports", {"path": str(archive)})
    assert status == 202
    assert same["job"] == job["job"] or admin(lb, f"/api/recordings/imports/{job['job']}")[1]["state"] == "done"
    finished = wait_for(lambda: (s := admin(lb, f"/api/recordings/imports/{job['job']}")[1])["state"] == "done" and s,
                        timeout=60, what="the import job")
    assert finished["result"]["result"] == "imported" and finished["result"]["record_id"] == "rec-job"
    # A refused archive: the job says why.
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    _, job = admin(lb, "/api/recordings/imports", {"path": str(bad)})
    finished = wait_for(lambda: (s := admin(lb, f"/api/recordings/imports/{job['job']}")[1])["state"] == "done" and s,
                        timeout=60, what="the refused import job")
    assert finished["result"]["result"] == "refused" and "tar" in finished["result"]["reason"]
    status, _ = admin(lb, "/api/recordings/imports/0123456789abcdef")
    assert status == 404
