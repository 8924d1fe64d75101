"""A Docker engine and FishEye's images, for the container tests.

`require_docker()` makes the engine available (dockerfiles/docker-engine.sh installs and
starts it where the tests run as root) or skips the test with the reason. Images build on
the local Debian base (dockerfiles/debian-base.sh, cached by its tag), with host networking
so that every connection stays on this machine's interfaces.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.paths import REPO_ROOT

DOCKERFILES = REPO_ROOT / "dockerfiles"
BASE_IMAGE = "fisheye-base:bookworm"
BUILD_TIMEOUT_S = 1800


@functools.cache
def _engine_problem() -> str | None:
    """Why no Docker engine can be had, or None once one answers."""
    if os.environ.get("FISHEYE_SKIP_DOCKER") == "1":
        return "FISHEYE_SKIP_DOCKER=1"
    script = DOCKERFILES / "docker-engine.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return f"no Docker engine: {out.stderr.strip() or out.stdout.strip()}"
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    return None


def require_docker() -> None:
    """Skip the test with the reason unless a Docker engine answers."""
    problem = _engine_problem()
    if problem:
        pytest.skip(problem)


def require_compose() -> None:
    """Skip the test unless `docker compose` (Compose v2) is installed."""
    require_docker()
    if docker("compose", "version", check=False).returncode != 0:
        pytest.skip("the Docker Compose v2 plugin is not installed (docker compose)")


def docker(
    *args: str, check: bool = True, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """Run `docker ARGS`, text output captured; raise with its output when `check` fails."""
    out = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and out.returncode != 0:
        said = f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        raise AssertionError(f"docker {' '.join(args)} exited {out.returncode}:\n{said}")
    return out


@functools.cache
def base_image() -> str:
    """The local Debian base image's tag, made once and then kept by the engine."""
    out = subprocess.run(
        ["bash", str(DOCKERFILES / "debian-base.sh"), BASE_IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if out.returncode != 0:
        raise AssertionError(f"debian-base.sh failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return BASE_IMAGE


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_s: float
    size_bytes: int

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def image_id(tag: str) -> str | None:
    """The image ID a tag points at, or None when there is no such image."""
    out = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


@contextlib.contextmanager
def replacing(tag: str) -> Iterator[None]:
    """Around a build of `tag`: remove the image it replaced, so reruns do not fill the disk.

    Each rebuild of a changed tree leaves the previous image untagged (about 0.5 GB here);
    `docker image rm` refuses one still in use, which is then left alone.
    """
    old = image_id(tag)
    yield
    if old is not None and image_id(tag) != old:
        docker("image", "rm", old, check=False)
    # The build stage of a multi-stage Dockerfile stays behind as an untagged cache image
    # (org.fisheye.stage); keep the newest of each kind, which the next build reuses.
    for stage in ("serve-build", "train-build"):
        listed = docker(
            "images", "-q", "--no-trunc", "--filter", "dangling=true",
            "--filter", f"label=org.fisheye.stage={stage}",
            check=False,
        )  # fmt: skip
        for stale in listed.stdout.split()[1:]:  # newest first
            docker("image", "rm", stale, check=False)


def build_image(dockerfile: str, tag: str, **build_args: str) -> BuiltImage:
    """Build dockerfiles/`dockerfile` from the repository root on the local base image."""
    args = {"BASE_IMAGE": base_image(), "GIT_COMMIT": git_commit(), "VERSION": "test", **build_args}
    cmd = ["build", "--network", "host", "-f", str(DOCKERFILES / dockerfile), "-t", tag]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    start = time.monotonic()
    with replacing(tag):
        docker(*cmd, str(REPO_ROOT), timeout=BUILD_TIMEOUT_S)
    build_s = time.monotonic() - start
    return BuiltImage(tag, build_s, prebuilt_image(tag).size_bytes)


def prebuilt_image(tag: str) -> BuiltImage:
    """An image built elsewhere (a pipeline's), as a BuiltImage with no build time."""
    size = docker("image", "inspect", "--format", "{{.Size}}", tag, check=False)
    if size.returncode != 0:
        raise AssertionError(f"no image {tag} in the engine: {size.stderr.strip()}")
    return BuiltImage(tag, 0.0, int(size.stdout))


@contextlib.contextmanager
def volume() -> Iterator[str]:
    """A new named volume, removed afterwards."""
    name = f"fisheye-test-{uuid.uuid4().hex[:10]}"
    docker("volume", "create", name)
    try:
        yield name
    finally:
        docker("volume", "rm", "-f", name, check=False)


@contextlib.contextmanager
def container(image: str, *run_args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    """A detached container of `image`, force-removed afterwards; yields its name."""
    name = f"fisheye-test-{uuid.uuid4().hex[:10]}"
    docker("run", "-d", "--name", name, *run_args, image, *command)
    try:
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def inspect(name: str, template: str) -> str:
    """`docker inspect --format TEMPLATE NAME`, stripped."""
    return docker("inspect", "--format", template, name).stdout.strip()


def report(config: pytest.Config, message: str) -> None:
    """Print `message` on the terminal past pytest's output capture (image sizes, times)."""
    with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(message)
