"""The doctor reads the set-up made from inside GIMP (app/doctor/setup.py over gimp/setup.py's record)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffclip.app.doctor import gimp as gd
from ffclip.app.doctor.setup import setup_checks
from ffclip.gimp import setup as gimp_setup
from tests.support.doctor import context, environment


def record(env: dict, **fields) -> dict:
    """Write the set-up record as gimp/setup.py does; returns it."""
    data = {
        "steps": {"python": {"done": 1.0}, "environment": {"done": 2.0}},
        "env": str(gimp_setup.env_dir(env)),
        "profile": "tiny",
        "started": time.time() - 60,
        "finished": None,
        "failure": None,
        "log": str(gimp_setup.log_path(env)),
    }
    data.update(fields)
    path = gimp_setup.record_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


def env_python(env: dict) -> Path:
    python = gimp_setup.env_python(gimp_setup.env_dir(env))
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("")
    return python


def only(checks: list[gd.Check]) -> gd.Check:
    assert len(checks) == 1, checks
    return checks[0]


def test_nothing_is_said_when_no_set_up_was_made_from_gimp(tmp_path):
    assert setup_checks(context(environment(tmp_path))) == []


def test_a_failed_set_up_names_its_step_its_words_and_how_to_resume(tmp_path):
    env = environment(tmp_path)
    record(env, failure={"step": "torch", "message": "No space left on device\nmore", "when": time.time()})
    check = only(setup_checks(context(env)))
    assert check.status == gd.FAIL and check.id == "setup"
    assert "failed: No space left on device (step torch" in check.text and "more" not in check.text
    assert "again" in check.fix and str(gimp_setup.log_path(env)) in check.fix


def test_a_cancelled_or_unfinished_set_up_is_to_be_resumed(tmp_path):
    env = environment(tmp_path)
    record(env, failure={"step": "engine", "message": "cancelled", "when": time.time()})
    assert "was stopped (step engine" in only(setup_checks(context(env))).text
    record(env)
    check = only(setup_checks(context(env)))
    assert check.status == gd.FAIL and check.text == "the set-up from GIMP did not finish"


def test_a_finished_set_up_whose_environment_is_gone(tmp_path):
    env = environment(tmp_path)
    record(env, finished=time.time())
    check = only(setup_checks(context(env)))
    assert check.status == gd.FAIL and "is gone" in check.text
    python = env_python(env)
    check = only(setup_checks(context(env), [[str(python), "-m", "ffclip.app", "serve"]]))
    assert check.status == gd.OK and "(tiny)" in check.text


def test_a_start_command_that_does_not_use_the_set_up_is_said(tmp_path):
    env = environment(tmp_path)
    record(env, finished=time.time())
    env_python(env)
    checks = setup_checks(context(env), [["/usr/bin/ffclip-engine", "serve"]])
    assert [c.status for c in checks] == [gd.OK, gd.INFO] and "/usr/bin/ffclip-engine" in checks[1].text


@pytest.mark.process
def test_a_set_up_running_now_is_no_failure(tmp_path):
    env = environment(tmp_path)
    record(env)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (gimp_setup.data_dir(env) / gimp_setup.LOCK_NAME).write_text(f"{sleeper.pid}\n")
        check = only(setup_checks(context(env)))
        assert check.status == gd.INFO and str(sleeper.pid) in check.text
    finally:
        sleeper.kill()
        sleeper.wait()
    assert only(setup_checks(context(env))).status == gd.FAIL  # its process is gone: it did not finish


def test_the_doctor_reports_it_with_the_rest(tmp_path):
    env = environment(tmp_path)
    record(env, failure={"step": "python", "message": "No Python 3.10 or newer was found", "when": time.time()})
    from ffclip.app.doctor import engine as ed

    checks = ed.diagnose(context(env, run_gimp=False))
    assert "setup" in {c.id for c in checks if c.status == gd.FAIL}
    assert os.path.basename(gimp_setup.LOG_NAME) in gd.render_text(checks, "x")
