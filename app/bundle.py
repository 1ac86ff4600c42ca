"""The GIMP bundle: one zip a user unzips into a GIMP 3 plug-ins folder (`ffclip-engine gimp-bundle`).

    ffclip-edit/ffclip-edit.py            the GIMP entry: executable (0755), LF endings, a #! line
    ffclip-edit/ffclip/plugin/...         ffclip.plugin (protocol, client), standard library only
    ffclip-edit/ffclip/gimp/...           ffclip.gimp (the plug-in's logic, dialog, set-up)
    ffclip-edit/ffclip/gimp/prompts.txt   the training prompts (the dialog's completion)
    ffclip-edit/VERSION                   the ffclip-edit version
    ffclip-edit/wheels/ffclip_edit-<version>-py3-none-any.whl   the engine, for the set-up to install
    ffclip-edit/wheels/pip-<version>-py3-none-any.whl           pip (24.1+ where one can be had), where the
                                                                host Python has no ensurepip

Everything but `wheels/` is exactly what `install-gimp-plugin` writes (app/install.py: the same
entry_text, shipped_files and package_sources), less the settings file: a bundle is shared, so it
carries no engine URL, token or start command; the set-up writes them on the user's computer.

The set-up (gimp/setup.py) finds its wheels by globbing `<plug-in folder>/wheels/ffclip_edit-*.whl`
and `<plug-in folder>/wheels/pip-*.whl`.

The zip is deterministic: entries sorted, one timestamp for all (SOURCE_DATE_EPOCH when set, else the
newest of the shipped sources' modification times), fixed modes; two bundles of the same tree are
byte-identical (the wheel built here is, too: it is built with the same SOURCE_DATE_EPOCH), as long as
the pip wheel is the same (one downloaded is whatever pip the index has then). The stamp
follows the sources rather than being a constant because GIMP re-queries a plug-in only when the
entry's modification time differs from the one it cached (pluginrc): a newer bundle unzipped over an
older one must not look unchanged.

`write_gex` writes the same plug-in as a GIMP extension (.gex, docs/install.md): a zip whose top
folder is the AppStream id, holding `<id>.metainfo.xml` and the plug-in folder; GIMP 3 installs it
through File → Open into its extensions folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from ffclip.app import install
from ffclip.gimp import settings as gimp_settings

WHEELS = "wheels"  # <plug-in folder>/wheels/: what the set-up installs from
PROJECT_WHEEL = re.compile(r"ffclip_edit-(?P<version>[^-]+)-py3-none-any\.whl")
PIP_WHEEL = re.compile(r"pip-[^-]+-py3-none-any\.whl")
PIP_PROGRESS = (24, 1)  # `pip install --progress-bar raw` from this pip on: the set-up shows its bytes
BUILD_FILES = ("pyproject.toml", "README.md")  # what the wheel build reads besides the packages
PACKAGE_FOLDERS = ("plugin", "engine", "bridge", "app", "gimp")  # pyproject.toml's package-dir
MIN_PYTHON = "3.10"  # the oldest host Python the set-up accepts (pyproject's requires-python)
EXTENSION_ID = "io.github.ffclip_edit.ffclip_edit"  # the .gex's AppStream id and top folder
# The project's home, as the id names it (AppStream 1.0's validator requires a homepage): confirm both
# before the first published .gex — GIMP keys installed extensions by the id.
HOMEPAGE = "https://github.com/ffclip-edit/ffclip-edit"
EXTENSION_PLUGIN_PATH = f"{install.NAME}/{install.ENTRY}"  # relative to the extension folder
_EPOCH_1980 = 315532800  # the oldest time a zip entry can hold
_FILE_MODE = 0o644
_EXEC_MODE = 0o755


class BundleError(Exception):
    """What the user gave cannot be bundled (a bad output path, a missing or foreign wheel)."""


@dataclass(frozen=True)
class Member:
    """One file of the bundle: its path inside the zip, its bytes, its mode."""

    name: str
    data: bytes
    mode: int = _FILE_MODE


# --------------------------------------------------------------------------- what goes in


def plugin_members(prefix: str = install.NAME) -> list[Member]:
    """The plug-in folder as install-gimp-plugin lays it out, less the settings file, under `prefix`."""
    members = [
        Member(f"{prefix}/{install.ENTRY}", install.entry_text(install.entry_source()).encode("utf-8"), _EXEC_MODE)
    ]
    for name, source in install.package_sources().items():
        for rel in install.shipped_files(source):
            if rel.name == gimp_settings.SETTINGS_NAME:  # a bundle carries no one's URL or token
                continue
            members.append(Member(f"{prefix}/{install.PACKAGE}/{name}/{rel.as_posix()}", (source / rel).read_bytes()))
    prompts = install.training_prompts_source()
    if prompts is not None:
        members.append(Member(f"{prefix}/{install.PACKAGE}/gimp/prompts.txt", prompts.read_bytes()))
    members.append(Member(f"{prefix}/{install.VERSION_NAME}", (install.source_version() + "\n").encode("utf-8")))
    return members


def source_stamp(environ: dict | None = None) -> int:
    """The one timestamp of every entry: SOURCE_DATE_EPOCH, else the newest shipped source's mtime."""
    environ = os.environ if environ is None else environ
    if environ.get("SOURCE_DATE_EPOCH", "").strip():
        try:
            return max(_EPOCH_1980, int(environ["SOURCE_DATE_EPOCH"]))
        except ValueError:
            given = environ["SOURCE_DATE_EPOCH"]
            raise BundleError(f"SOURCE_DATE_EPOCH is not a number of seconds: {given!r}") from None
    paths = [install.entry_source()]
    paths += [source / rel for source in install.package_sources().values() for rel in install.shipped_files(source)]
    prompts = install.training_prompts_source()
    paths += [prompts] if prompts is not None else []
    return max([_EPOCH_1980] + [int(p.stat().st_mtime) for p in paths])


# --------------------------------------------------------------------------- the wheels


def project_root() -> Path | None:
    """The source checkout this package runs from (pyproject.toml of ffclip-edit), None for a wheel install."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if re.search(r'^name\s*=\s*"ffclip-edit"', text, re.MULTILINE) else None


def check_project_wheel(path: Path) -> Path:
    """`path` if it is this version's ffclip-edit wheel; BundleError saying what is wrong otherwise."""
    path = Path(path)
    match = PROJECT_WHEEL.fullmatch(path.name)
    if not match:
        raise BundleError(f"{path.name} is not an ffclip-edit wheel (ffclip_edit-VERSION-py3-none-any.whl)")
    if match["version"] != install.source_version():
        raise BundleError(
            f"{path.name} is version {match['version']}, the plug-in is {install.source_version()}: "
            "the set-up would install an engine of another version"
        )
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a readable wheel (zip) file")
    return path


def clean_source(root: Path, dest: Path) -> Path:
    """What the wheel is built from: pyproject.toml, README.md and the package folders of `root`, without
    caches. Building in the checkout would write build/ and egg-info there (two bundles at once would
    share them) and read a leftover egg-info's SOURCES.txt."""
    dest.mkdir(parents=True)
    for name in BUILD_FILES:
        shutil.copy2(root / name, dest / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(root / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    return dest


def build_project_wheel(outdir: Path, stamp: int, python: str = sys.executable) -> Path:
    """Build this checkout's wheel into `outdir` (`python -m build --wheel`, else `pip wheel`)."""
    root = project_root()
    if root is None:
        raise BundleError(
            "this ffclip-edit is installed, not a source checkout: give its wheel with --wheel PATH "
            "(ffclip_edit-VERSION-py3-none-any.whl)"
        )
    source = clean_source(root, outdir / "source")
    wheels_dir = outdir / "wheel"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(stamp)}  # the wheel's entries get the bundle's stamp
    has_build = subprocess.run([python, "-c", "import build"], capture_output=True).returncode == 0
    if has_build:
        argv = [python, "-m", "build", "--wheel", "--outdir", str(wheels_dir), str(source)]
    else:
        argv = [python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels_dir), str(source)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=source)
    wheels = sorted(wheels_dir.glob("ffclip_edit-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BundleError(f"building the wheel failed ({' '.join(argv[1:4])}):\n{tail}")
    return check_project_wheel(wheels[0])


def bundled_pip_wheel() -> Path | None:
    """The pip wheel that ships with this Python (ensurepip/_bundled), None where it was left out."""
    try:
        import ensurepip
    except ImportError:
        return None
    bundled = Path(ensurepip.__file__).resolve().parent / "_bundled"
    found = sorted(p for p in bundled.glob("pip-*.whl") if PIP_WHEEL.fullmatch(p.name))
    return found[-1] if found else None


def pip_version(wheel: Path) -> tuple[int, ...]:
    """(24, 1, 2) of pip-24.1.2-py3-none-any.whl; () when the name says no version."""
    match = re.fullmatch(r"pip-(\d+(?:\.\d+)*)[^-]*-.*", Path(wheel).name)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def download_pip_wheel(outdir: Path, python: str = sys.executable) -> Path:
    """pip's wheel from the package index (`pip download`): one that reports progress and runs on
    every Python the set-up accepts (3.10+)."""
    wanted = "pip>=" + ".".join(map(str, PIP_PROGRESS))
    argv = [python, "-m", "pip", "download", wanted, "--no-deps", "--only-binary", ":all:"]
    argv += ["--python-version", MIN_PYTHON, "--dest", str(outdir)]
    done = subprocess.run(argv, capture_output=True, text=True)
    found = sorted(p for p in outdir.glob("pip-*.whl") if PIP_WHEEL.fullmatch(p.name))
    if done.returncode != 0 or not found:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise BundleError(f"downloading a pip wheel failed:\n{tail}")
    return found[-1]


def pip_wheel_for_bundle(outdir: Path) -> tuple[Path, str | None]:
    """(the pip wheel to bundle, a note for the user or None): this Python's ensurepip copy when it is
    a pip that reports progress (24.1+: `--progress-bar raw`, which the set-up's dialog shows), else
    one from the index, else the older ensurepip copy (the set-up then shows no per-package bytes)."""
    bundled = bundled_pip_wheel()
    if bundled is not None and pip_version(bundled) >= PIP_PROGRESS:
        return bundled, None
    try:
        return download_pip_wheel(outdir), None
    except BundleError as exc:
        if bundled is None:
            raise BundleError(f"this Python has no bundled pip wheel, and {exc}") from None
        note = (
            f"bundling this Python's {bundled.name}: a pip older than {'.'.join(map(str, PIP_PROGRESS))} "
            f"shows no download progress in the set-up (give a newer one with --pip-wheel); {exc}"
        )
        return bundled, note


def check_pip_wheel(path: Path) -> Path:
    path = Path(path)
    if not PIP_WHEEL.fullmatch(path.name):
        raise BundleError(f"{path.name} is not a pip wheel (pip-VERSION-py3-none-any.whl)")
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a readable wheel (zip) file")
    return path


# --------------------------------------------------------------------------- writing


def check_output(path: Path, suffix: str) -> Path:
    """The output file `path`, or BundleError saying why it cannot be written there."""
    path = Path(path).expanduser()
    if path.is_dir():
        example = path / f"ffclip-edit{suffix}"
        raise BundleError(f"{path} is a folder: give the {suffix} file to write (e.g. {example})")
    if path.suffix.lower() != suffix:
        raise BundleError(f"{path}: the output must be a {suffix} file (e.g. ffclip-edit{suffix})")
    parent = path.parent
    if not parent.is_dir():
        raise BundleError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BundleError(f"{path}: the folder {parent} is not writable")
    return path


def write_zip(path: Path, members: Iterable[Member], stamp: int) -> Path:
    """Write `members` (plus their folders) into the zip `path`, deterministically, atomically."""
    date_time = time.gmtime(max(_EPOCH_1980, stamp))[:6]
    files = {m.name: m for m in members}
    folders = {str(Path(name).parent.as_posix()) for name in files}
    for folder in list(folders):
        parts = folder.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    folders.discard(".")
    entries: list[tuple[str, Member | None]] = [(f + "/", None) for f in folders] + list(files.items())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w") as zf:
            for name, member in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=date_time)
                info.create_system = 3  # Unix: unzip and GIMP's libarchive apply the mode bits below
                if member is None:
                    info.external_attr = ((stat.S_IFDIR | _EXEC_MODE) << 16) | 0x10  # 0x10: MS-DOS folder
                else:
                    info.external_attr = (stat.S_IFREG | member.mode) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                info.extra = _local_attributes(info)
                zf.writestr(info, b"" if member is None else member.data, compresslevel=9)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _local_attributes(info: zipfile.ZipInfo) -> bytes:
    """The mode bits again in the local header (the "xl" extra field, 0x6c78): readers that stream a zip
    see only local headers, and GIMP installs a .gex that way (libarchive, streamed): without it the
    entry loses its executable bit and GIMP skips the plug-in. unzip and zipfile ignore the field."""
    made_by = (info.create_system << 8) | info.create_version
    data = struct.pack("<BHI", 0x01 | 0x04, made_by, info.external_attr)  # bitmap: version made by, attributes
    return struct.pack("<HH", 0x6C78, len(data)) + data


def wheel_members(prefix: str, project_wheel: Path, pip_wheel: Path) -> list[Member]:
    return [Member(f"{prefix}/{WHEELS}/{w.name}", w.read_bytes()) for w in (project_wheel, pip_wheel)]


def write_bundle(path: Path, project_wheel: Path, pip_wheel: Path, stamp: int | None = None) -> Path:
    """The GIMP bundle (module docstring) at `path`."""
    stamp = source_stamp() if stamp is None else stamp
    members = plugin_members() + wheel_members(install.NAME, project_wheel, pip_wheel)
    return write_zip(path, members, stamp)


# --------------------------------------------------------------------------- the GIMP extension (.gex)


def metainfo_xml(version: str, release_date: str) -> str:
    """AppStream metainfo of the extension: an addon of org.gimp.GIMP (what GIMP 3 requires of a .gex)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<component type="addon">
  <id>{EXTENSION_ID}</id>
  <extends>org.gimp.GIMP</extends>
  <name>FFCLIP Edit</name>
  <summary>Edit faces in photos by describing the change in words</summary>
  <description>
    <p>
      FFCLIP Edit adds Filters → FFCLIP Edit… to GIMP: select a photo layer, type what should change
      ("smiling, blond hair") and get a new layer in which the face has changed and nothing else.
    </p>
    <p>
      The editing runs in the FFCLIP engine, a separate program on this computer or another one. The
      first time, the plug-in offers to set the engine up on this computer.
    </p>
  </description>
  <developer id="io.github.ffclip_edit">
    <name>The FFCLIP Edit authors</name>
  </developer>
  <url type="homepage">{HOMEPAGE}</url>
  <metadata_license>CC0-1.0</metadata_license>
  <project_license>MIT</project_license>
  <releases>
    <release version="{escape(version)}" date="{release_date}"/>
  </releases>
  <requires>
    <id version="3.0.0" compare="ge">org.gimp.GIMP</id>
  </requires>
  <metadata>
    <value key="GIMP::plug-in-path">{EXTENSION_PLUGIN_PATH}</value>
  </metadata>
</component>
"""


def write_gex(path: Path, project_wheel: Path, pip_wheel: Path, stamp: int | None = None) -> Path:
    """The GIMP extension at `path`: `<id>/<id>.metainfo.xml` and `<id>/ffclip-edit/` (the bundle's folder)."""
    stamp = source_stamp() if stamp is None else stamp
    prefix = f"{EXTENSION_ID}/{install.NAME}"
    release_date = time.strftime("%Y-%m-%d", time.gmtime(stamp))
    metainfo = metainfo_xml(install.source_version(), release_date).encode("utf-8")
    members = [Member(f"{EXTENSION_ID}/{EXTENSION_ID}.metainfo.xml", metainfo)]
    members += plugin_members(prefix) + wheel_members(prefix, project_wheel, pip_wheel)
    return write_zip(path, members, stamp)
