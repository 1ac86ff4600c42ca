"""The set-up from inside GIMP, end to end, on a machine that has GIMP 3 and nothing of ours.

    sudo python tools/setup_e2e.py [--base /opt/gimp3-root] [--out docs/setup-e2e.txt] [--keep]

1. A throwaway root: an overlay on a Debian trixie root with GIMP 3 (.ci/setup-gimp.sh builds one at
   /opt/gimp3-root; the base is never written). Checked to hold nothing of ours (no `ffclip` file, no
   earlier test homes) and no `ensurepip` (python3-venv removed where present).
2. The bundle: `ffclip-engine gimp-bundle -o ffclip-edit.zip` of this checkout, unzipped into the GIMP
   profile's plug-ins folder of a fresh user inside the root.
3. Network for pip: the host's resolv.conf, CA certificates and pip configuration (/etc/pip.conf,
   /etc/xdg/pip) copied in; /proc and /dev mounted while it runs.
4. `python-fu-ffclip-setup` with profile `tiny` in a batch GIMP (gimp-console-3.0), timed per step (the
   procedure prints each step with the seconds since it began); then the same again (a re-run resumes:
   every step is found done); then `python-fu-ffclip-edit` on a photo in a second batch GIMP, which
   reaches the engine the set-up started: a new `FFCLIP:` layer with a layer mask.
5. The engine processes started inside the root are ended by pid, the mounts undone, the root removed
   (unless --keep); the report goes to --out.

FFCLIP_TORCH_INDEX passes through to the set-up ("" = PyPI's default; this machine reaches only PyPI).
Needs root (chroot, mount).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ffclip.app.gimp_console import GimpConsole, clean_log  # noqa: E402

HOME = "/home/gimp-user"
PHOTO = REPO / "tests" / "data" / "photos" / "astronaut.png"

SETUP = r"""
import json, time
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp
pdb = Gimp.get_pdb()
proc = pdb.lookup_procedure("python-fu-ffclip-setup")
out = {"registered": proc is not None}
if proc is not None:
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("profile", "tiny")
    began = time.monotonic()
    r = proc.run(cfg)
    status = r.index(0)
    out.update(status=status.value_nick, seconds=round(time.monotonic() - began, 1))
    if status == Gimp.PDBStatusType.SUCCESS:
        out.update(url=r.index(1), python=r.index(2))
    else:
        out["error"] = str(r.index(1)) if r.length() > 1 else ""
print("RESULT " + json.dumps(out), flush=True)
"""

EDIT = r"""
import json, time
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl
pdb = Gimp.get_pdb()
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(__PHOTO__))
src = image.get_layers()[0]
proc = pdb.lookup_procedure("python-fu-ffclip-edit")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [src])
cfg.set_property("prompt", "smiling")
cfg.set_property("strength", 1.0)
cfg.set_property("output", "layer-mask")
began = time.monotonic()
r = proc.run(cfg)
status = r.index(0)
out = {"status": status.value_nick, "seconds": round(time.monotonic() - began, 1)}
if status == Gimp.PDBStatusType.SUCCESS:
    layer = r.index(1)
    mask = layer.get_mask()
    out.update(name=layer.get_name(), size=[layer.get_width(), layer.get_height()], has_mask=mask is not None,
               layers=[l.get_name() for l in image.get_layers()])
    if mask is not None:
        w, h = layer.get_width(), layer.get_height()
        m = bytes(mask.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
        out["mask"] = {"min": min(m), "max": max(m), "mean": round(sum(m) / len(m), 1)}
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(__SAVED__), None)
else:
    out["error"] = str(r.index(1)) if r.length() > 1 else ""
print("RESULT " + json.dumps(out), flush=True)
"""


class Report:
    def __init__(self, path: Path | None):
        self.path, self.lines, self.began = path, [], time.monotonic()

    def __call__(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(line, flush=True)
            self.lines.append(line)

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def sh(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, **kwargs)


def timed(report: Report, label: str, fn):
    began = time.monotonic()
    value = fn()
    report(f"[{time.monotonic() - began:7.1f} s] {label}")
    return value


def make_root(base: Path, work: Path) -> Path:
    root, upper, scratch = work / "root", work / "upper", work / "overlay-work"
    for d in (root, upper, scratch):
        d.mkdir(parents=True)
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={scratch}", str(root))
    return root


def clean_root(root: Path, report: Report) -> None:
    """Nothing of ours in the root: earlier test homes and batch folders in /tmp go; no `ffclip` file may
    be left anywhere else; no ensurepip (python3-venv removed where present)."""
    for entry in (root / "tmp").iterdir():
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
    skip = {root / "proc", root / "sys", root / "dev"}
    ours = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        ours += [str(Path(dirpath, n)) for n in dirnames + filenames if "ffclip" in n.lower()]
    if ours:
        raise SystemExit(f"the root holds files of ours: {ours[:5]}")
    venv_pkgs = sh("chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ", "python3*-venv", check=False).stdout
    if venv_pkgs.strip():
        report(f"removing {venv_pkgs.strip()} from the copy")
        sh("chroot", str(root), "dpkg", "--purge", *venv_pkgs.split())
    probe = sh("chroot", str(root), "/usr/bin/python3", "-c", "import ensurepip", check=False)
    if probe.returncode == 0:
        raise SystemExit("the root's python3 has ensurepip: python3-venv is still there")
    version = sh("chroot", str(root), "/usr/bin/python3", "--version").stdout.strip()
    debian = (root / "etc" / "debian_version").read_text().strip()
    gimp = sh("chroot", str(root), "dpkg-query", "-W", "-f", "${Version}", "gimp", check=False).stdout.strip()
    report(f"root: Debian {debian}, GIMP {gimp}, {version}, no ensurepip, no python3-venv, nothing of ours")


def network(root: Path) -> None:
    for source in ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(source).is_file():
            target = root / source.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            shutil.copyfile(source, target)
    if Path("/etc/xdg/pip").is_dir():
        shutil.rmtree(root / "etc/xdg/pip", ignore_errors=True)
        shutil.copytree("/etc/xdg/pip", root / "etc/xdg/pip")


def mount_runtime(root: Path) -> list[Path]:
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    sh("mount", "--bind", "/dev", str(root / "dev"))
    sh("mount", "--make-private", str(root / "dev"))
    sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(root / "dev" / "shm"))
    return [root / "dev" / "shm", root / "dev", root / "proc"]


def mounted_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(prefix)]


def unmount(point: Path, report: Report) -> None:
    """Unmount `point`, retrying while the last processes let go; lazily as a last resort."""
    for _ in range(20):
        if sh("umount", str(point), check=False).returncode == 0 or str(point) not in mounted_under(point.parent):
            return
        time.sleep(0.5)
    done = sh("umount", "-l", str(point), check=False)
    report(f"{point} was busy: detached lazily ({'ok' if done.returncode == 0 else done.stderr.strip()})")


def processes_in(root: Path) -> list[int]:
    out = []
    real = str(root.resolve())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == real:
                    out.append(int(entry.name))
    return out


def end_processes(root: Path, report: Report) -> None:
    pids = processes_in(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while processes_in(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        report(f"ended {len(pids)} process(es) started in the root (the engine): {pids}")


def make_bundle(work: Path, report: Report) -> Path:
    out = work / "ffclip-edit.zip"
    argv = [sys.executable, "-m", "ffclip.app", "gimp-bundle", "-o", str(out)]
    if os.environ.get("FFCLIP_E2E_PIP_WHEEL"):
        argv += ["--pip-wheel", os.environ["FFCLIP_E2E_PIP_WHEEL"]]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:  # its own wheel build failed: build the wheel here, bundle that
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        report(f"gimp-bundle could not build the wheel itself ({' / '.join(tail)}); building it with pip wheel")
        wheels = work / "wheel"
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
        sh(*build, str(REPO))
        (wheel,) = wheels.glob("ffclip_edit-*.whl")
        done = subprocess.run([*argv, "--wheel", str(wheel)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gimp-bundle failed:\n{done.stdout}{done.stderr}")
    with zipfile.ZipFile(out) as z:
        wheels = [n.split("/")[-1] for n in z.namelist() if "/wheels/" in n and not n.endswith("/")]
    report(f"bundle: {out.name}, {out.stat().st_size / 1e6:.1f} MB, wheels {', '.join(sorted(wheels))}")
    return out


def unzip(bundle: Path, plugins: Path) -> None:
    plugins.mkdir(parents=True, exist_ok=True)
    sh("unzip", "-q", "-o", str(bundle), "-d", str(plugins))
    entry = plugins / "ffclip-edit" / "ffclip-edit.py"
    if not os.access(entry, os.X_OK):
        raise SystemExit(f"{entry} is not executable after unzip")


def run_gimp(gimp: GimpConsole, code: str, report: Report, timeout: float) -> dict:
    done = gimp.run_python(code, timeout=timeout)
    noise = clean_log(done.stdout + "\n" + done.stderr)
    for line in noise.splitlines():
        if line.startswith("RESULT ") or "scriptfu-WARNING" in line or "stale context" in line:
            continue
        if re.search(r"ffclip-setup: .*(: Collecting |: Downloading .* of )", line):
            continue  # the report keeps one line per download, its size
        report("    " + line)
    results = [json.loads(ln[7:]) for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not results:
        raise SystemExit(f"GIMP printed no result (exit status {done.returncode})")
    return results[-1]


def bad_cases(gimp: GimpConsole, root: Path, mounts: list[Path], report: Report) -> bool:
    """No network (an index nobody answers) and a full disk (a 300 MB tmpfs as the data folder), each a
    fresh set-up: the procedure fails at the right step with a clear message, the lock is let go."""
    small = root / "tmp" / "small"
    small.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(small))
    mounts.insert(0, small)
    (small / "tmp").mkdir()
    cases = [
        (
            "no network",
            {"FFCLIP_DATA_DIR": "/tmp/no-net", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "1"},
            "torch",
            "No network",
        ),
        ("disk full", {"FFCLIP_DATA_DIR": "/tmp/small/data", "TMPDIR": "/tmp/small/tmp"}, "torch", "disk is full"),
    ]
    all_ok = True
    for label, env, step, says in cases:
        bad = GimpConsole(gimp.command, gimp.root, gimp.home, {**gimp.extra_env, **env, "PIP_TIMEOUT": "5"})
        report(f"bad case, {label} ({' '.join(f'{k}={v}' for k, v in env.items())}):")
        out = timed(report, label, lambda bad=bad: run_gimp(bad, SETUP, report, 900))
        error = out.get("error", "")
        record = json.loads(gimp.host(env["FFCLIP_DATA_DIR"] + "/setup.json").read_text())
        lock = gimp.host(env["FFCLIP_DATA_DIR"] + "/setup.lock").exists()
        good = out.get("status") == "execution-error" and f"at its {step} step" in error and says in error and not lock
        all_ok &= good
        report("  the procedure said: " + "\n  | ".join(error.splitlines()[:4]))
        report(
            f"  record: steps done {list(record['steps'])}, failure at {record['failure']['step']}; lock left: {lock}"
        )
        report(f"  {'PASS' if good else 'FAIL'}: {label}")
    return all_ok


def downloads(log: Path) -> tuple[int, int]:
    """(files, bytes) pip said it downloaded, from the set-up log."""
    from ffclip.gimp.setup import parse_size

    files = total = 0
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            m = re.match(r"\s*Downloading \S+ \((.+)\)", line)
            if m:
                files += 1
                total += parse_size(m.group(1)) or 0
    return files, total


def du(path: Path) -> str:
    done = sh("du", "-sh", str(path), check=False)
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout else "?"


@dataclass
class Throwaway:
    """A prepared throwaway root: the bundle unzipped for a fresh user, pip's network, /proc and /dev."""

    root: Path
    gimp: GimpConsole
    mounts: list[Path]


@contextlib.contextmanager
def throwaway_root(base: Path, work_dir: str, report: Report, keep: bool = False) -> Iterator[Throwaway]:
    """Steps 1-3 of this script's docstring; afterwards the engine processes are ended, the mounts
    undone and the root removed (unless `keep`), whatever happened meanwhile."""
    work = Path(tempfile.mkdtemp(prefix="ffclip-e2e-", dir=work_dir))
    mounts: list[Path] = []
    root = None
    try:
        root = timed(report, f"overlay root on {base}", lambda: make_root(base, work))
        mounts.append(root)
        timed(report, "checked: nothing of ours, no ensurepip", lambda: clean_root(root, report))
        bundle = timed(report, "ffclip-engine gimp-bundle", lambda: make_bundle(work, report))
        gimp = GimpConsole.chroot(root, HOME)
        if "FFCLIP_TORCH_INDEX" in os.environ:
            gimp.extra_env["FFCLIP_TORCH_INDEX"] = os.environ["FFCLIP_TORCH_INDEX"]
        timed(report, "unzipped into the profile's plug-ins folder", lambda: unzip(bundle, gimp.plugin_dir()))
        network(root)
        mounts[:0] = mount_runtime(root)
        yield Throwaway(root, gimp, mounts)
    finally:
        if root is not None:
            end_processes(root, report)
        for m in mounts:
            unmount(m, report)
        left = mounted_under(work)
        if left:  # never delete through a mount: /dev is the host's
            report(f"NOT removed: {work} still has mounts {left}")
        elif keep:
            report(f"kept: {work} (upper: {work / 'upper'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
        report(f"total {time.monotonic() - report.began:.0f} s")
        report.save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="/opt/gimp3-root", help="a Debian trixie root with GIMP 3 (never written)")
    parser.add_argument("--out", default=str(REPO / "docs" / "setup-e2e.txt"), help="the report ('' = none)")
    parser.add_argument("--work", default="/var/tmp", help="where the throwaway root goes (torch: several GB)")
    parser.add_argument("--keep", action="store_true", help="keep the root (unmounted) for a look")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the set-up's GIMP run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (chroot, mount)")
    report = Report(Path(args.out) if args.out else None)
    report(f"# python-fu-ffclip-setup end to end, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    report(f"# tools/setup_e2e.py at {sh('git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD').stdout.strip()}")
    index = os.environ.get("FFCLIP_TORCH_INDEX")
    report(f"# FFCLIP_TORCH_INDEX={index!r}" if index is not None else "# FFCLIP_TORCH_INDEX unset (product default)")
    pip_wheel = os.environ.get("FFCLIP_E2E_PIP_WHEEL")
    report(f"# bundled pip: {Path(pip_wheel).name if pip_wheel else 'gimp-bundle default'} (FFCLIP_E2E_PIP_WHEEL)")
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        pytorch = "resolves"
    except OSError as exc:
        pytorch = f"does not resolve ({exc})"
    report(f"# host: {os.cpu_count()} CPUs, {sh('uname', '-sr').stdout.strip()}; download.pytorch.org {pytorch}")
    ok = False
    with throwaway_root(Path(args.base), args.work, report, args.keep) as made:
        gimp, root, mounts = made.gimp, made.root, made.mounts
        report("set-up (python-fu-ffclip-setup, profile tiny, batch):")
        first = timed(report, "set-up", lambda: run_gimp(gimp, SETUP, report, args.timeout))
        report(f"  result: {json.dumps(first)}")
        state = gimp.host(HOME) / ".local" / "state" / "ffclip-edit"
        env = gimp.host(HOME) / ".local" / "share" / "ffclip-edit" / "engine"
        files, total = downloads(state / "setup.log")
        report(f"  pip downloaded {files} files, {total / 1e9:.2f} GB; the environment takes {du(env)}")
        if first.get("status") != "success":
            raise SystemExit("the set-up failed")
        record = json.loads((gimp.host(HOME) / ".local/share/ffclip-edit/setup.json").read_text())
        for name, step in record["steps"].items():
            report(f"  {name:12s} {step.get('summary', '')}")
        report("re-run (resumes: every step found done):")
        again = timed(report, "set-up again", lambda: run_gimp(gimp, SETUP, report, 600))
        report(f"  result: {json.dumps(again)}")
        photo = Path(gimp.scratch()) / PHOTO.name
        shutil.copyfile(PHOTO, photo)
        saved = photo.with_name("edited.xcf")
        code = EDIT.replace("__PHOTO__", repr(gimp.inside(photo))).replace(
            "__SAVED__", repr(gimp.inside(saved.parent) + "/edited.xcf")
        )
        report("edit (python-fu-ffclip-edit on astronaut.png, 'smiling', layer-mask, batch):")
        edit = timed(report, "edit", lambda: run_gimp(gimp, code, report, 900))
        report(f"  result: {json.dumps(edit)}")
        ok = (
            edit.get("status") == "success"
            and str(edit.get("name", "")).startswith("FFCLIP:")
            and edit.get("has_mask") is True
            and again.get("status") == "success"
        )
        report(f"PASS: a masked {edit.get('name')!r} layer" if ok else "FAIL")
        ok = bad_cases(gimp, root, mounts, report) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
