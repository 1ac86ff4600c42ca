"""The engine's set-up from inside GIMP (gimp/setup.py): its steps with fake Python and pip programs
(scripts that play the host's python3 and the private environment's python), pip's recorded output,
resume, the lock, cancelling, each failure's message; and once with a real venv and a real pip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from ffclip.gimp import settings as gimp_settings
from ffclip.gimp import setup
from ffclip.plugin import paths

PIP_DATA = Path(__file__).resolve().parent.parent / "data" / "pip"
ENGINE_VERSION = "0.1.0"

# --------------------------------------------------------------------------- fake programs

FAKE_ENV_PYTHON = r'''#!__PYTHON__
"""The private environment's python, played: its state (what is installed) in <env>/fake-state.json."""
import json, os, subprocess, sys, time
env = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
state_path = os.path.join(env, "fake-state.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {"installed": {}, "calls": []}
args = sys.argv[1:]
state["calls"].append(args)
def save():
    json.dump(state, open(state_path, "w"))
save()
def installed(name):
    return state["installed"].get(name)
if args[:1] == ["-c"]:
    code = args[1]
    for module, key in (("import torch", "torch"), ("import pip", "pip"), ("importlib.metadata", "engine")):
        if module in code:
            if not installed(key):
                print(f"ModuleNotFoundError: No module named {key!r}", file=sys.stderr)
                sys.exit(1)
            print(installed(key))
            sys.exit(0)
    sys.exit(0)
if args and args[0].endswith(".whl/pip"):  # pip bootstrapped from its wheel
    print("Processing " + args[-1])
    print("Installing collected packages: pip")
    state["installed"]["pip"] = os.environ.get("FAKE_PIP_VERSION", "26.3")
    print("Successfully installed pip-" + state["installed"]["pip"])
    save()
    sys.exit(0)
if args[:3] == ["-m", "pip", "install"]:
    target = "engine" if any(a.endswith(".whl") for a in args) else "torch"
    key = "FAKE_" + target.upper()
    output = os.environ.get(key + "_OUTPUT")
    if output:
        sys.stdout.write(open(output).read())
        sys.stdout.flush()
    if os.environ.get(key + "_SLEEP"):
        nap = "import time; time.sleep(%s)" % os.environ[key + "_SLEEP"]
        child = subprocess.Popen([sys.executable, "-c", nap])  # pip's own child processes
        with open(os.environ["FAKE_PIDFILE"], "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        child.wait()
    rc = int(os.environ.get(key + "_RC", "0"))
    if os.environ.get(key + "_INDEX_UNREACHABLE") and "--index-url" in args:
        print(open(os.environ[key + "_INDEX_UNREACHABLE"]).read())
        rc = 1
    if rc == 0:
        wheel = next((a for a in args if a.endswith(".whl")), "x-?-")
        state["installed"][target] = "2.14.1+cpu" if target == "torch" else os.path.basename(wheel).split("-")[1]
        save()
    sys.exit(rc)
if args[:3] == ["-m", "ffclip.app", "serve"]:  # an engine that only runs
    time.sleep(60)
    sys.exit(0)
if args[:4] == ["-m", "ffclip.app", "service", "install"]:
    print("wrote unit")
    sys.exit(int(os.environ.get("FAKE_SERVICE_RC", "0")))
print("fake env python: unexpected " + repr(args), file=sys.stderr)
sys.exit(3)
'''

FAKE_HOST_PYTHON = r'''#!__PYTHON__
"""A host python3, played: reports its version and makes a (fake) venv."""
import os, shutil, stat, sys
args = sys.argv[1:]
here = os.path.dirname(os.path.abspath(sys.argv[0]))
if args[:2] == ["-I", "-c"]:
    print(os.environ.get("FAKE_HOST_VERSION", "3 12") + " 0 " + os.path.abspath(sys.argv[0]))
    sys.exit(0)
if args[:2] == ["-m", "venv"]:
    with open(os.path.join(here, "venv-calls"), "a") as f:
        f.write(" ".join(args) + "\n")
    if os.environ.get("FAKE_VENV_OUTPUT"):
        sys.stdout.write(open(os.environ["FAKE_VENV_OUTPUT"]).read())
        sys.exit(1)
    env = args[-1]
    os.makedirs(os.path.join(env, "bin"), exist_ok=True)
    open(os.path.join(env, "pyvenv.cfg"), "w").write("home = " + here + "\n")
    py = os.path.join(env, "bin", "python")
    shutil.copyfile(os.path.join(here, "fake-env-python"), py)
    os.chmod(py, 0o755)
    sys.exit(0)
sys.exit(2)
'''


def _script(path: Path, text: str) -> Path:
    path.write_text(text.replace("__PYTHON__", sys.executable))
    path.chmod(0o755)
    return path


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    """A small real wheel: `files` (path -> text) and its dist-info."""
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    entries = {
        **files,
        f"{dist}.dist-info/METADATA": meta,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},,\n" for p in entries) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for p, text in {**entries, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(p, text)
    return wheel


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A plug-in folder with its wheels, fake host and env pythons, a private data and state folder, and
    an engine that answers once started (Setup._answer / _start_engine replaced)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "fake-env-python", FAKE_ENV_PYTHON)
    host = _script(bin_dir / "python3", FAKE_HOST_PYTHON)
    plugin = tmp_path / "plug-ins" / "ffclip-edit"
    (plugin / "wheels").mkdir(parents=True)
    make_wheel(plugin / "wheels", "ffclip-edit", ENGINE_VERSION, {"ffclip/x.py": ""}, ("torch>=2.1", "numpy>=1.24"))
    (plugin / "wheels" / "pip-26.3-py3-none-any.whl").write_bytes(b"not used by the fakes")
    environ = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path / "home"),
        "FFCLIP_DATA_DIR": str(tmp_path / "data"),
        "FFCLIP_STATE_DIR": str(tmp_path / "state"),
        "FFCLIP_GPU": "none",
        "FAKE_PIDFILE": str(tmp_path / "pip.pid"),
    }
    started: list[list[str]] = []
    monkeypatch.setattr(setup.Setup, "_start_engine", lambda self, command: started.append(command))
    monkeypatch.setattr(setup.Setup, "_answer", lambda self, url, settings: {"state": "ready"} if started else None)

    class World:
        pass

    w = World()
    w.tmp, w.plugin, w.environ, w.host, w.started = tmp_path, plugin, environ, host, started
    w.data = tmp_path / "data"
    w.env = w.data / "engine"
    w.events = []

    def make(profile="", **extra):
        w.events = []
        return setup.Setup(plugin, profile, {**environ, **extra}, w.events.append)

    def state():
        return json.loads((w.env / "fake-state.json").read_text())

    def venv_calls():
        path = bin_dir / "venv-calls"
        return path.read_text().splitlines() if path.exists() else []

    w.make, w.state, w.venv_calls = make, state, venv_calls
    return w


def texts(events, name=None):
    return [e.text for e in events if name is None or e.name == name]


# --------------------------------------------------------------------------- the steps


@pytest.mark.process
def test_steps_run_in_order_and_write_the_settings(world):
    gimp_settings.save_settings(world.plugin, {**gimp_settings.DEFAULTS, "url": "ws://127.0.0.1:9911/", "token": "t0k"})
    result = world.make("tiny").run()

    assert [e.name for e in world.events if e.fraction == 1.0][-1] == "start"
    order = list(dict.fromkeys(e.name for e in world.events))
    assert order == list(setup.STEPS)
    assert all(e.steps == len(setup.STEPS) and e.step == setup.STEPS.index(e.name) + 1 for e in world.events)
    assert result.python == world.env / "bin" / "python"
    assert result.url == "ws://127.0.0.1:9911/"
    assert result.start_command == [
        str(result.python),
        "-m",
        "ffclip.app",
        "serve",
        "--port",
        "9911",
        "--profile",
        "tiny",
    ]
    assert result.profile == "tiny"
    assert "not registered" in result.service and "systemctl" in result.service
    saved = gimp_settings.load_settings(world.plugin)
    assert saved["autostart"] is True and saved["start_command"] == result.start_command
    assert saved["url"] == "ws://127.0.0.1:9911/" and saved["token"] == "t0k"  # kept
    assert world.started == [result.start_command]
    # torch first, with the engine's own requirement and the CPU index; then the engine wheel
    installs = [c for c in world.state()["calls"] if c[:3] == ["-m", "pip", "install"]]
    assert installs[0][-3:] == ["torch>=2.1", "--index-url", setup.TORCH_CPU_INDEX]
    assert "--progress-bar" in installs[0] and installs[0][installs[0].index("--progress-bar") + 1] == "raw"
    assert installs[1][-1].endswith(f"ffclip_edit-{ENGINE_VERSION}-py3-none-any.whl")
    assert all("--disable-pip-version-check" in c for c in installs)
    assert world.venv_calls() == [f"-m venv --without-pip {world.env}"]
    record = setup.last_setup(world.environ)
    assert set(record["steps"]) == set(setup.STEPS) and record["failure"] is None and record["finished"]
    assert record["profile"] == "tiny" and record["running"] is None
    assert record["steps"]["torch"]["torch"] == "2.14.1+cpu"
    log = (world.tmp / "state" / setup.LOG_NAME).read_text()
    assert "Successfully installed pip-26.3" in log and "-m venv --without-pip" in log
    assert not (world.data / setup.LOCK_NAME).exists()


@pytest.mark.process
def test_a_remote_url_is_replaced_by_the_local_engine(world):
    gimp_settings.save_settings(world.plugin, {**gimp_settings.DEFAULTS, "url": "ws://gpu-box:8765/"})
    result = world.make().run()
    assert result.url == gimp_settings.DEFAULTS["url"]
    assert "--profile" not in result.start_command


@pytest.mark.process
def test_a_rerun_skips_what_is_done_and_works(world):
    world.make().run()
    calls = len(world.state()["calls"])
    world.make().run()
    again = world.state()["calls"][calls:]
    assert not [c for c in again if c[:3] == ["-m", "pip", "install"]]
    assert world.venv_calls() == [f"-m venv --without-pip {world.env}"]
    done = [e for e in world.events if e.text.endswith("(done before)")]
    assert [e.name for e in done] == ["python", "environment", "pip", "torch", "engine"]


@pytest.mark.process
def test_a_failed_step_resumes_there(world):
    nonet = str(PIP_DATA / "no-network.txt")
    with pytest.raises(setup.SetupError) as err:
        world.make(FAKE_TORCH_RC="1", FAKE_TORCH_OUTPUT=nonet).run()
    assert err.value.step == "torch"
    record = setup.last_setup(world.environ)
    assert set(record["steps"]) == {"python", "environment", "pip"}
    assert record["failure"]["step"] == "torch" and "No network" in record["failure"]["message"]
    world.make().run()
    assert [e.name for e in world.events if e.text.endswith("(done before)")] == ["python", "environment", "pip"]
    assert len(world.venv_calls()) == 1
    assert setup.last_setup(world.environ)["failure"] is None


@pytest.mark.process
def test_a_broken_half_made_environment_is_remade(world):
    world.make().run()
    (world.env / "bin" / "python").unlink()  # e.g. the disk filled while venv copied it
    (world.env / "leftover").write_text("of the broken one")
    world.make().run()
    assert not (world.env / "leftover").exists()
    assert len(world.venv_calls()) == 2
    assert any("Removing the unfinished environment" in t for t in texts(world.events, "environment"))
    installs = [c for c in world.state()["calls"] if c[:3] == ["-m", "pip", "install"]]
    assert len(installs) == 2  # torch and the engine again, into the new environment


@pytest.mark.process
def test_a_newer_bundled_engine_is_installed_over_the_old(world):
    world.make().run()
    (world.plugin / "wheels" / f"ffclip_edit-{ENGINE_VERSION}-py3-none-any.whl").unlink()
    make_wheel(world.plugin / "wheels", "ffclip-edit", "0.2.0", {"ffclip/x.py": ""}, ("torch>=2.1",))
    world.make().run()
    names = [e.name for e in world.events if e.text.endswith("(done before)")]
    assert names == ["python", "environment", "pip", "torch"]
    installs = [c for c in world.state()["calls"] if c[:3] == ["-m", "pip", "install"]]
    assert installs[-1][-1].endswith("ffclip_edit-0.2.0-py3-none-any.whl") and len(installs) == 3


@pytest.mark.process
def test_the_service_is_registered_where_systemd_answers(world):
    systemctl = world.tmp / "bin" / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    world.started.append(["(the service's engine)"])  # it answers: the set-up starts none itself
    result = world.make("tiny").run()
    assert result.service.startswith("registered")
    service = [c for c in world.state()["calls"] if c[:4] == ["-m", "ffclip.app", "service", "install"]]
    assert service == [["-m", "ffclip.app", "service", "install", "--port", "8765", "--profile", "tiny"]]
    assert world.started == [["(the service's engine)"]]


@pytest.mark.process
@pytest.mark.parametrize(
    "running, profile, why",
    [
        ({"version": "0.0.9", "profile": "tiny"}, "tiny", "version 0.0.9, not 0.1.0"),
        ({"version": ENGINE_VERSION, "profile": "tiny"}, "", "the tiny trial, not the real models"),
    ],
)
def test_an_outdated_engine_of_ours_is_restarted(world, monkeypatch, running, profile, why):
    """After an update (or a change of profile) the engine still running is the old one: the set-up
    ends it (this environment's, by the pid its record names) and starts the new one."""
    world.make(profile).run()
    old = subprocess.Popen([str(world.env / "bin" / "python"), "-m", "ffclip.app", "serve", "--port", "8765"])
    engines = world.tmp / "state" / paths.ENGINES_DIR
    engines.mkdir(parents=True)
    (engines / f"{old.pid}.json").write_text(json.dumps({"url": "ws://127.0.0.1:8765/", "pid": old.pid}))
    world.started.clear()

    def answer(self, url, settings):
        if old.poll() is None:
            return {"state": "ready", **running}
        return {"state": "loading", "version": ENGINE_VERSION} if world.started else None

    monkeypatch.setattr(setup.Setup, "_answer", answer)
    sent, kill = [], os.kill
    monkeypatch.setattr(setup.os, "kill", lambda pid, sig: (sent.append((pid, sig)), kill(pid, sig))[1])
    try:
        result = world.make(profile).run()
        assert old.wait(5) is not None  # ended...
        signals = [sig for pid, sig in sent if pid == old.pid and sig]
        assert signals == [signal.SIGTERM]  # ... asked to stop, not killed (SIGKILL) after the wait
        assert world.started == [result.start_command]
        assert f"The engine running at ws://127.0.0.1:8765/ is {why}: restarting it" in texts(world.events, "start")
    finally:
        old.kill()
        old.wait()


@pytest.mark.process
def test_an_outdated_service_is_restarted_and_awaited(world, monkeypatch):
    systemctl = world.tmp / "bin" / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {world.tmp / "systemctl-calls"}\nexit 0\n')
    systemctl.chmod(0o755)
    calls = []

    def answer(self, url, settings):
        calls.append(url)
        if len(calls) < 4:  # the old engine, until the service has restarted it
            return {"state": "ready", "version": "0.0.9"}
        return {"state": "loading", "version": ENGINE_VERSION}

    monkeypatch.setattr(setup.Setup, "_answer", answer)
    world.make().run()
    assert "--user restart ffclip-engine.service" in (world.tmp / "systemctl-calls").read_text()
    assert setup.last_setup(world.environ)["steps"]["start"]["state"] == "loading"  # the new one
    assert world.started == []  # the service starts it, not the set-up


@pytest.mark.process
def test_another_programs_engine_is_left_alone(world, monkeypatch):
    world.make().run()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    engines = world.tmp / "state" / paths.ENGINES_DIR
    engines.mkdir(parents=True)
    (engines / f"{other.pid}.json").write_text(json.dumps({"url": "ws://127.0.0.1:8765/", "pid": other.pid}))
    monkeypatch.setattr(setup.Setup, "_answer", lambda self, url, settings: {"version": "9.9", "state": "ready"})
    try:
        with pytest.raises(setup.SetupError) as err:
            world.make().run()
        assert err.value.step == "start" and f"process {other.pid}" in err.value.message
        assert "version 9.9, not 0.1.0" in err.value.message and other.poll() is None
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------- progress


@pytest.mark.process
@pytest.mark.parametrize("pip_version, bar", [("24.0", "off"), ("24.1", "raw"), ("26.3", "raw")])
def test_raw_progress_only_from_a_pip_that_has_it(world, pip_version, bar):
    world.make(FAKE_PIP_VERSION=pip_version).run()
    installs = [c for c in world.state()["calls"] if c[:3] == ["-m", "pip", "install"]]
    assert all(c[c.index("--progress-bar") + 1] == bar for c in installs) and len(installs) == 2


def test_the_start_command(tmp_path):
    python = tmp_path / "Scripts" / "python.exe"
    python.parent.mkdir()
    (python.parent / "pythonw.exe").write_bytes(b"")
    pythonw = str(python.parent / "pythonw.exe")
    assert setup.start_command(python, 8765, "", "win32") == [pythonw, "-m", "ffclip.app", "serve", "--port", "8765"]
    assert setup.start_command(python, 1, "tiny", "linux")[0] == str(python)  # no console window to hide
    assert setup.start_command(python, 1, "tiny", "linux")[-2:] == ["--profile", "tiny"]


def test_pip_progress_lines_become_events():
    progress = setup.PipProgress()
    said = [s for line in (PIP_DATA / "raw-install.txt").read_text().splitlines() if (s := progress.feed(line))]
    assert said[0] == ("Collecting numpy", None, None, None)
    assert said[1] == ("Downloading numpy-2.5.5 (16 MB)", 0.0, 0, 15_700_000)
    assert said[2][0] == "Downloading numpy-2.5.5 (262 kB of 16 MB)"  # not "Progress 0 of ...": nothing new
    assert said[2][1] == pytest.approx(262144 / 15713899)
    assert said[3][1:] == (1.0, 15713899, 15713899)
    assert said[4:6] == [
        ("Collecting websockets", None, None, None),
        ("Downloading websockets-17.4 (226 kB)", 0.0, 0, 226_000),
    ]
    assert said[6][0] == "Installing 2 packages: websockets, numpy"
    assert said[7] == ("Installed", 1.0, None, None)


def test_sizes():
    assert setup.parse_size("(812.3 MB)") == 812_300_000
    assert setup.parse_size("1.2 GB") == 1_200_000_000
    assert setup.parse_size("69 kB") == 69_000
    assert setup.short_size(812_300_000) == "812 MB"
    assert setup.short_size(1_500_000_000) == "1.5 GB"


@pytest.mark.process
def test_the_torch_step_reports_bytes(world):
    world.make(FAKE_TORCH_OUTPUT=str(PIP_DATA / "raw-install.txt")).run()
    torch = [e for e in world.events if e.name == "torch"]
    assert any(e.text == "Downloading numpy-2.5.5 (16 MB)" and e.total_bytes == 15_700_000 for e in torch)
    assert any(e.done_bytes == 15713899 and e.fraction == 1.0 for e in torch)
    assert all(e.step == 4 and e.steps == 7 for e in torch)


# --------------------------------------------------------------------------- failures


@pytest.mark.process
def test_no_python(world):
    with pytest.raises(setup.SetupError) as err:
        world.make(PATH=str(world.tmp / "empty"), FAKE_HOST_VERSION="3 9").run()
    assert err.value.step == "python"
    assert "No Python 3.10 or newer" in err.value.message and "python3.13" in err.value.message
    assert "apt install python3" in err.value.message and "FFCLIP_PYTHON" in err.value.message
    assert setup.last_setup(world.environ)["failure"]["step"] == "python"


@pytest.mark.process
def test_too_old_a_python_is_passed_over(world):
    assert setup.find_python({**world.environ, "FAKE_HOST_VERSION": "3 9"}) is None
    found = setup.find_python({**world.environ, "FAKE_HOST_VERSION": "3 13"})
    assert found == (world.host, (3, 13))


@pytest.mark.process
@pytest.mark.parametrize(
    "sample, step, says, hint",
    [
        ("disk-full.txt", "torch", "The disk is full", "Free some disk space"),
        ("no-network.txt", "torch", "No network", "internet connection"),
        ("resolution.txt", "engine", "found no version", "FFCLIP_PYTHON"),
    ],
)
def test_failure_messages(world, sample, step, says, hint):
    out = str(PIP_DATA / sample)
    with pytest.raises(setup.SetupError) as err:
        world.make(**{f"FAKE_{step.upper()}_RC": "1", f"FAKE_{step.upper()}_OUTPUT": out}).run()
    exc = err.value
    assert exc.step == step and says in exc.message and hint in exc.retry
    lines = [ln for ln in (PIP_DATA / sample).read_text().splitlines() if ln.strip()]
    assert exc.log_tail == lines[-setup.TAIL_LINES :]
    assert exc.log_path == world.tmp / "state" / setup.LOG_NAME
    assert not (world.data / setup.LOCK_NAME).exists()


@pytest.mark.process
@pytest.mark.parametrize("free, says", [(300 << 20, "The disk is full"), (50 << 30, "No network")])
def test_a_download_cut_short_by_a_full_disk(world, monkeypatch, free, says):
    """pip 26 reports a download that hit ENOSPC as an incomplete download, "an issue with network
    connectivity", and deletes the partial file: the set-up compares the free space with the download."""
    real = shutil.disk_usage
    monkeypatch.setattr(setup.shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    out = str(PIP_DATA / "disk-full-download.txt")
    with pytest.raises(setup.SetupError) as err:
        world.make(FAKE_TORCH_RC="1", FAKE_TORCH_OUTPUT=out).run()
    assert err.value.step == "torch" and err.value.message.startswith(says)
    if free < 1 << 30:
        assert "315 MB free, too little for a 555 MB download" in err.value.message
        assert "Free some space" in err.value.retry


@pytest.mark.process
def test_pytorchs_index_out_of_reach_falls_back_to_the_package_index(world):
    nonet = str(PIP_DATA / "no-network.txt")
    world.make(FAKE_TORCH_INDEX_UNREACHABLE=nonet).run()
    installs = [c for c in world.state()["calls"] if c[:3] == ["-m", "pip", "install"]]
    assert installs[0][-2:] == ["--index-url", setup.TORCH_CPU_INDEX] and installs[1][-1] == "torch>=2.1"
    assert any("not reachable" in t for t in texts(world.events, "torch"))
    assert setup.last_setup(world.environ)["steps"]["torch"]["torch_index"] is None
    shutil.rmtree(world.data)
    with pytest.raises(setup.SetupError) as err:  # an index the user chose is not second-guessed
        world.make(FAKE_TORCH_INDEX_UNREACHABLE=nonet, FFCLIP_TORCH_INDEX="https://mirror/simple").run()
    assert "No network" in err.value.message


def test_an_unreachable_index_without_retries():
    message, retry = setup.classify(
        "torch", ["ERROR: Could not find a version that satisfies the requirement torch>=2.1 (from versions: none)"], 1
    )
    assert "found no release of torch>=2.1 at all" in message and "internet connection" in retry


@pytest.mark.process
def test_no_engine_wheel(world):
    shutil.rmtree(world.plugin / "wheels")
    with pytest.raises(setup.SetupError) as err:
        world.make().run()
    assert err.value.step == "engine" and "no engine wheel" in err.value.message


def test_in_a_flatpak_the_host_commands_are_given(tmp_path):
    plugin = tmp_path / "ffclip-edit"
    (plugin / "wheels").mkdir(parents=True)
    make_wheel(plugin / "wheels", "ffclip-edit", ENGINE_VERSION, {}, ("torch>=2.1",))
    (plugin / "wheels" / "pip-26.3-py3-none-any.whl").write_bytes(b"")
    environ = {"FLATPAK_ID": "org.gimp.GIMP", "HOME": str(tmp_path), "FFCLIP_GPU": "none"}
    assert setup.in_flatpak(environ)
    with pytest.raises(setup.SetupError) as err:
        setup.Setup(plugin, "tiny", environ).run()
    commands = setup.host_commands(plugin, "tiny", environ)
    assert err.value.step == "python" and "Flatpak" in err.value.message
    assert all(c in err.value.message for c in commands)
    env = "~/.local/share/ffclip-edit/engine"
    assert commands[0] == f"python3 -m venv --without-pip {env}"
    pip = plugin / "wheels" / "pip-26.3-py3-none-any.whl"
    assert commands[1] == f"{env}/bin/python {pip}/pip install --no-index {pip}"
    assert commands[2] == f"{env}/bin/python -m pip install 'torch>=2.1' --index-url {setup.TORCH_CPU_INDEX}"
    assert commands[3].endswith(f"ffclip_edit-{ENGINE_VERSION}-py3-none-any.whl")
    assert commands[4] == f"{env}/bin/ffclip-engine service install --profile tiny"


def test_where_torch_comes_from():
    assert setup.torch_index({"FFCLIP_TORCH_INDEX": ""}) == (None, "as FFCLIP_TORCH_INDEX says")
    assert setup.torch_index({"FFCLIP_TORCH_INDEX": "https://x/simple"})[0] == "https://x/simple"
    assert setup.torch_index({"FFCLIP_GPU": "none"}, "linux") == (setup.TORCH_CPU_INDEX, "CPU")
    assert setup.torch_index({"FFCLIP_GPU": "none"}, "win32") == (setup.TORCH_CPU_INDEX, "CPU")
    assert setup.torch_index({"FFCLIP_GPU": "nvidia"}, "linux") == (None, "CUDA")
    assert setup.torch_index({"FFCLIP_GPU": "nvidia"}, "win32") == (setup.TORCH_CUDA_INDEX_WINDOWS, "CUDA")
    assert setup.torch_index({"FFCLIP_GPU": "nvidia"}, "darwin") == (None, "CPU/MPS")


def test_data_dir():
    assert paths.data_dir({"FFCLIP_DATA_DIR": "/d", "XDG_DATA_HOME": "/x"}) == Path("/d")
    assert paths.data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}, "linux") == Path("/x/ffclip-edit")
    assert paths.data_dir({"HOME": "/h"}, "linux") == Path("/h/.local/share/ffclip-edit")
    assert paths.data_dir({"HOME": "/h"}, "darwin") == Path("/h/Library/Application Support/ffclip-edit")
    assert paths.data_dir({"HOME": "/h", "LOCALAPPDATA": "/l"}, "win32") == Path("/l/ffclip-edit")
    assert setup.data_dir is paths.data_dir


def test_child_processes_get_no_python_settings_of_gimps():
    env = setup.child_environment({"PYTHONHOME": "/gimp", "PYTHONPATH": "/gimp/lib", "VIRTUAL_ENV": "/v", "A": "b"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["A"] == "b" and env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"


# --------------------------------------------------------------------------- lock and cancel


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.process
def test_cancel_midway_kills_the_step_and_resumes_next_time(world):
    first = world.make(FAKE_TORCH_SLEEP="60")
    outcome = []

    def run():
        try:
            first.run()
        except setup.SetupError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    pip_pid, child_pid = map(int, _wait_for(world.tmp / "pip.pid").split())
    first.cancel()
    thread.join(20)
    assert not thread.is_alive()  # the fake torch step sleeps 60 s: only its kill ends the run this soon
    assert isinstance(outcome[0], setup.SetupCancelled) and outcome[0].step == "torch"
    deadline = time.monotonic() + 5
    while (_alive(pip_pid) or _alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pip_pid) and not _alive(child_pid)  # the whole process tree
    record = setup.last_setup(world.environ)
    assert set(record["steps"]) == {"python", "environment", "pip"} and record["failure"]["message"] == "cancelled"
    assert not (world.data / setup.LOCK_NAME).exists()
    world.make().run()
    assert [e.name for e in world.events if e.text.endswith("(done before)")] == ["python", "environment", "pip"]


@pytest.mark.process
def test_cancel_before_run(world):
    s = world.make()
    s.cancel()
    with pytest.raises(setup.SetupCancelled):
        s.run()


@pytest.mark.process
def test_a_second_setup_while_one_runs_is_busy(world):
    first = world.make(FAKE_TORCH_SLEEP="60")
    thread = threading.Thread(target=lambda: pytest.raises(setup.SetupCancelled, first.run))
    thread.start()
    _wait_for(world.tmp / "pip.pid")
    try:
        with pytest.raises(setup.SetupBusy) as err:
            setup.Setup(world.plugin, "", world.environ).run()
        assert err.value.pid == os.getpid() and str(os.getpid()) in err.value.message
        assert setup.last_setup(world.environ)["running"] == os.getpid()
    finally:
        first.cancel()
        thread.join(20)


@pytest.mark.process
def test_a_lock_of_another_live_process_is_busy(world):
    other = subprocess.Popen(["sleep", "30"])
    try:
        world.data.mkdir(parents=True)
        (world.data / setup.LOCK_NAME).write_text(f"{other.pid}\n")
        with pytest.raises(setup.SetupBusy) as err:
            world.make().run()
        assert err.value.pid == other.pid and f"process {other.pid}" in err.value.message
        assert (world.data / setup.LOCK_NAME).read_text().strip() == str(other.pid)  # left alone
    finally:
        other.kill()
        other.wait()


@pytest.mark.process
def test_a_stale_lock_is_taken_over(world):
    gone = subprocess.Popen(["true"])
    gone.wait()
    world.data.mkdir(parents=True)
    (world.data / setup.LOCK_NAME).write_text(f"{gone.pid}\n")
    world.make().run()
    assert not (world.data / setup.LOCK_NAME).exists()


# --------------------------------------------------------------------------- for real: venv and pip


def _bundled_pip_wheel() -> Path | None:
    import ensurepip

    found = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*-py3-none-any.whl"))
    return found[-1] if found else None


@pytest.mark.slow
@pytest.mark.process
def test_a_real_environment_with_pip_from_its_wheel(tmp_path, monkeypatch):
    """A real `venv --without-pip`, pip bootstrapped from a real pip wheel, and a stand-in torch and
    engine installed by that pip from a local folder (no index, no torch)."""
    pip_wheel = _bundled_pip_wheel()
    if pip_wheel is None:
        pytest.skip("this Python has no bundled pip wheel")
    plugin = tmp_path / "ffclip-edit"
    (plugin / "wheels").mkdir(parents=True)
    shutil.copyfile(pip_wheel, plugin / "wheels" / pip_wheel.name)
    stub = "def main():\n    pass\n"
    make_wheel(
        plugin / "wheels",
        "ffclip-edit",
        ENGINE_VERSION,
        {"ffclip/app/__init__.py": stub, "ffclip/engine/__init__.py": "", "ffclip/bridge/__init__.py": ""},
        ("torch>=2.1",),
    )
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "torch", "2.99.0", {"torch/__init__.py": "__version__ = '2.99.0'\n"})
    environ = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path / "home"),
        "FFCLIP_PYTHON": sys.executable,
        "FFCLIP_DATA_DIR": str(tmp_path / "data"),
        "FFCLIP_STATE_DIR": str(tmp_path / "state"),
        "FFCLIP_TORCH_INDEX": "",
        "FFCLIP_NO_SERVICE": "1",
        "PIP_CONFIG_FILE": os.devnull,  # this machine's pip settings (its indexes) stay out
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(index),
        "PIP_NO_CACHE_DIR": "1",
    }
    monkeypatch.setattr(setup.Setup, "_start_engine", lambda self, command: None)
    monkeypatch.setattr(setup.Setup, "_answer", lambda self, url, settings: {"state": "ready"})
    events: list[setup.SetupEvent] = []
    result = setup.Setup(plugin, "tiny", environ, events.append).run()
    python = tmp_path / "data" / "engine" / "bin" / "python"
    assert result.python == python
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import pip, torch, importlib.metadata as m; "
            "print(pip.__version__, torch.__version__, m.version('ffclip-edit'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [setup.wheel_version(pip_wheel), "2.99.0", ENGINE_VERSION]
    record = setup.last_setup(environ)
    assert record["steps"]["torch"]["torch"] == "2.99.0" and record["steps"]["pip"]["pip"][0] >= 20
    assert any(e.name == "engine" and e.text.startswith("Installing") for e in events)
    # a second run checks each step for real and skips them all
    events.clear()
    setup.Setup(plugin, "tiny", environ, events.append).run()
    skipped = [e.name for e in events if e.text.endswith("(done before)")]
    assert skipped == ["python", "environment", "pip", "torch", "engine"]


# --------------------------------------------------------------------------- in GIMP


def test_the_entry_registers_the_procedure():
    entry = (Path(setup.__file__).parent / "ffclip-edit" / "ffclip-edit.py").read_text()
    assert "gimp_setup.PROCEDURE" in entry and setup.PROCEDURE == "python-fu-ffclip-setup"


SETUP_IN_GIMP = r"""
import json
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp
proc = Gimp.get_pdb().lookup_procedure("python-fu-ffclip-setup")
out = {"registered": proc is not None}
if proc is not None:
    out.update(args=[a.name for a in proc.get_arguments()], returns=[a.name for a in proc.get_return_values()],
               label=proc.get_menu_label(), paths=list(proc.get_menu_paths()))
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("profile", __PROFILE__)
    r = proc.run(cfg)
    out.update(status=r.index(0).value_nick, error=str(r.index(1)) if r.length() > 1 else "")
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.gimp
@pytest.mark.process
@pytest.mark.parametrize(
    "profile, status, says",
    [("tiny", "execution-error", "no engine wheel"), ("big", "calling-error", "profile must be")],
)
def test_the_procedure_in_gimp(console, profile, status, says):
    """The PDB procedure as a batch script calls it: registered with its arguments; a plug-in installed
    from a checkout (no wheels) fails at once with the set-up's message, a wrong profile is refused."""
    from tests.support.gimp import result_lines

    dest = console.plugin_dir()
    done = subprocess.run(
        [sys.executable, "-m", "ffclip.app", "install-gimp-plugin", "--dest", str(dest)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    proc = console.run_python(SETUP_IN_GIMP.replace("__PROFILE__", repr(profile)), timeout=300)
    (out,) = result_lines(proc)
    assert out["registered"], proc.stderr[-2000:]
    assert out["args"] == ["run-mode", "profile"] and out["returns"] == ["url", "python"]
    assert out["label"] == setup.MENU_LABEL and out["paths"] == ["<Image>/Filters"]
    assert out["status"] == status and says in out["error"], out
