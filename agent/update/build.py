"""``kiosk-agent update build``: the project's wheel, its dependencies' wheels for the target
platform, a hash lock, and the signed manifest.

pip fetches binary wheels for another platform (``--platform``); a dependency that ships only
source (wsq) is compiled here, which only works for the platform this runs on. The kiosk's
extras (``EXTRAS``) come with the core dependencies; the project's requirements-nodeps.txt
(mediapipe) is downloaded without its own declared dependencies, as pip installs it elsewhere.
The lock lists every wheel in the bundle: the updater installs exactly those, with --no-deps.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agent.security import keys
from agent.update.bundle import (
    LOCK,
    PLATFORMS,
    BundleError,
    Manifest,
    check_version,
    machine,
    python_tag,
    sha256_file,
    write_bundle,
)

#: Dependencies published as source only: they must be compiled on the target platform.
SOURCE_ONLY = {"wsq"}
WHEEL_FILE = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl")
#: The project's extras a kiosk installs (systemd/install.sh): the face checks' landmarks.
EXTRAS = ("landmarks",)
#: Requirements installed with --no-deps (the file says why), read from the project's root.
NODEPS_FILE = "requirements-nodeps.txt"
#: The trailing ``extra == "..."`` clause setuptools adds to an extra's Requires-Dist marker.
_EXTRA_CLAUSE = re.compile(r'(?:^|\s+and\s+)extra\s*==\s*"(?P<extra>[^"]+)"\s*$')


@dataclass
class BuildRequest:
    project: Path
    key_path: Path
    out: Path
    platform: str
    min_from: str
    system_dependencies: bool = False
    reversible_migration: bool = False
    wheelhouse: Path | None = None  # dependency wheels from here, not from the index


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise BundleError(f"pip {args[0]} failed:\n{tail}")


def requirements(wheel: Path, extras: tuple[str, ...] = ()) -> list[str]:
    """The wheel's own dependencies (Requires-Dist), with those of ``extras``: their
    ``extra == "..."`` clause dropped, any other marker kept for pip to evaluate."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if "extra ==" not in req:
            reqs.append(req)
            continue
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        clause = _EXTRA_CLAUSE.search(marker)
        if clause is None or "extra ==" in marker[:clause.start()]:
            if any(f'"{extra}"' in marker for extra in extras):
                raise BundleError(f"cannot read the extra's requirement {req!r}")
            continue
        if clause["extra"] in extras:
            rest = marker[:clause.start()].strip()
            reqs.append(f"{spec.strip()}; {rest}" if rest else spec.strip())
    return reqs


def nodeps_requirements(project: Path) -> list[str]:
    """The project's requirements-nodeps.txt entries (none if it has no such file)."""
    path = project / NODEPS_FILE
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _dependencies(reqs: list[str], nodeps: list[str], dest: Path, request: BuildRequest) -> None:
    binary = [r for r in reqs if _name(r) not in SOURCE_ONLY]
    for req in (r for r in reqs if _name(r) in SOURCE_ONLY):
        if request.platform != machine():
            raise BundleError(f"{_name(req)} ships only source: it must be compiled on {request.platform}; "
                              f"run `kiosk-agent update build --platform {request.platform}` on an "
                              f"{request.platform} machine (this one is {machine()})")
        src = ["--no-index", "--find-links", str(request.wheelhouse)] if request.wheelhouse else []
        _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), *src, req)
        built = next(dest.glob(f"{_name(req).replace('-', '_')}-*.whl"))
        binary += requirements(built)
    where = ["--no-index", "--find-links", str(request.wheelhouse)] if request.wheelhouse else []
    tags = [f"--platform=manylinux2014_{request.platform}", f"--platform=manylinux_2_28_{request.platform}",
            f"--platform=manylinux_2_17_{request.platform}", f"--platform=linux_{request.platform}"]
    target = ["--only-binary=:all:", *tags, f"--python-version={python_tag()}", "--implementation=cp"]
    if binary:
        _pip("download", "--quiet", *target, "-d", str(dest), *where, *binary)
    if nodeps:
        # Not their declared dependencies: what they need is among the project's (requirements-nodeps.txt).
        _pip("download", "--quiet", "--no-deps", *target, "-d", str(dest), *where, *nodeps)


def lock_lines(wheels: list[Path]) -> str:
    lines = []
    for wheel in sorted(wheels):
        m = WHEEL_FILE.fullmatch(wheel.name)
        if m is None:
            raise BundleError(f"not a wheel file name: {wheel.name}")
        lines.append(f"{m['name']}=={m['version']} --hash=sha256:{sha256_file(wheel)}")
    return "\n".join(lines) + "\n"


def build(request: BuildRequest) -> Manifest:
    if request.platform not in PLATFORMS:
        raise BundleError(f"platform must be one of {', '.join(PLATFORMS)}")
    check_version(request.min_from)
    key = keys.load_signing_key(request.key_path, "--key")
    with tempfile.TemporaryDirectory(prefix="kiosk-bundle-") as tmp:
        wheels = Path(tmp) / "wheels"
        _pip("wheel", "--no-deps", "--quiet", "-w", str(wheels), str(request.project))
        own = next(wheels.glob("kiosk_agent-*.whl"))
        version = check_version(WHEEL_FILE.fullmatch(own.name)["version"])  # type: ignore[index]
        if not request.system_dependencies:
            _dependencies(requirements(own, EXTRAS), nodeps_requirements(request.project), wheels, request)
        lock = Path(tmp) / LOCK
        lock.write_text(lock_lines(list(wheels.glob("*.whl"))))
        sources = {f"wheels/{w.name}": w for w in wheels.glob("*.whl")}
        sources[LOCK] = lock
        manifest = Manifest(version, request.min_from, (request.platform,), python_tag(),
                            {name: sha256_file(path) for name, path in sources.items()},
                            request.system_dependencies, request.reversible_migration)
        write_bundle(request.out, manifest, sources, key)
    return manifest
