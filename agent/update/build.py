"""``kiosk-agent update build``: the project's wheel, its dependencies' wheels for the target
platform, a hash lock, and the signed manifest.

pip fetches binary wheels for another platform (``--platform``); a dependency that ships only
source (wsq) is compiled here, which only works for the platform this runs on.
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


def requirements(wheel: Path) -> list[str]:
    """The wheel's own dependencies (Requires-Dist without extras or markers that exclude)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" not in req:
                reqs.append(req)
    return reqs


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _dependencies(reqs: list[str], dest: Path, request: BuildRequest) -> None:
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
    if not binary:
        return
    where = ["--no-index", "--find-links", str(request.wheelhouse)] if request.wheelhouse else []
    tags = [f"--platform=manylinux2014_{request.platform}", f"--platform=manylinux_2_28_{request.platform}",
            f"--platform=manylinux_2_17_{request.platform}", f"--platform=linux_{request.platform}"]
    _pip("download", "--quiet", "--only-binary=:all:", *tags, f"--python-version={python_tag()}",
         "--implementation=cp", "-d", str(dest), *where, *binary)


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
            _dependencies(requirements(own), wheels, request)
        lock = Path(tmp) / LOCK
        lock.write_text(lock_lines(list(wheels.glob("*.whl"))))
        sources = {f"wheels/{w.name}": w for w in wheels.glob("*.whl")}
        sources[LOCK] = lock
        manifest = Manifest(version, request.min_from, (request.platform,), python_tag(),
                            {name: sha256_file(path) for name, path in sources.items()},
                            request.system_dependencies, request.reversible_migration)
        write_bundle(request.out, manifest, sources, key)
    return manifest
