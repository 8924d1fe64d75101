"""Throwaway DVC projects for the tests: real `git` and `dvc` processes in a temp folder.

`make_pipeline_project` copies FishEye's pipeline (dvc.yaml, params.yaml, the DVC config and
the code its stages depend on) into a fresh git repository; `DvcProject.dvc` runs the real
`dvc` command there with an offline environment (no analytics, no update check, no cloud
metadata lookups, emulators reached without a proxy).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.paths import REPO_ROOT

# What a copy of the pipeline needs: its definition, parameters, DVC config and ignore
# files, and the code folder its stages list as dependencies.
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config")
CODE_DIR = "src/fisheye"
STAGES = ("import", "train", "evaluate", "export", "drift-fit")
GIT_USER = {"user.name": "FishEye tests", "user.email": "tests@fisheye.invalid"}


def require_git() -> str:
    """The git executable, or skip: DVC projects are git repositories."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed: DVC projects need it (apt-get install git)")
    return git


def offline_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `dvc` runs: offline, the venv's commands first on PATH.

    DVC sends no analytics and asks no update server or Studio; the AWS and Google SDKs get
    dummy credentials and no instance-metadata service, so nothing but the emulators on
    127.0.0.1 can answer; proxies are bypassed for 127.0.0.1. HOME is `home` (created empty):
    no user's ~/.aws, ~/.config/gcloud, ~/.gitconfig or global DVC config is read, and
    DVC's site cache goes there too.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "GCE_", "DVC_"))
        and k not in {"STORAGE_EMULATOR_HOST", "GIT_DIR", "GIT_WORK_TREE"}
    }
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": os.pathsep.join([bin_dir, env.get("PATH", "")]),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            # Caches (matplotlib's font list, ...) stay where they were: they hold no settings.
            "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
            "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "1",
            # DVC's per-repository index and lock files: in the temp folder, not /var/tmp/dvc.
            "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
            # AWS: fake keys, no ~/.aws files, no EC2 metadata endpoint.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # Google: no application-default credentials, GCE metadata pointed at a dead port.
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            # gcsfs's default (experimental) file system first asks the gRPC Storage Control
            # API what kind of bucket it is: an emulator cannot answer that, so use plain gcsfs.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "GIT_TERMINAL_PROMPT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class DvcProject:
    """A git + DVC repository in a temp folder, with `git`/`dvc` run as real processes."""

    root: Path
    env: dict[str, str]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the project; on failure (check) raise with its whole output."""
        res = subprocess.run(
            list(cmd),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"`{' '.join(cmd)}` exited {res.returncode} in {self.root}\n"
                f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
            )
        return res

    def dvc(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """Run `dvc ARGS` (this interpreter's DVC); return stdout + stderr."""
        res = self.run(sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)
        return res.stdout + res.stderr

    def git(self, *args: str) -> str:
        """Run `git ARGS`; return stdout."""
        return self.run("git", *args).stdout

    def commit(self, message: str) -> None:
        """Stage everything git does not ignore and commit it."""
        self.git("add", "-A")
        self.git("commit", "-q", "--no-verify", "-m", message)

    def params(self) -> dict[str, Any]:
        """params.yaml as a dict."""
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, changes: Mapping[str, Any]) -> None:
        """Set dotted keys of params.yaml (`{"train.max_epochs": 1}`)."""
        params = self.params()
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            node = params
            for key in parents:
                node = node[key]
            node[last] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def remote(self, name: str, url: str, options: Mapping[str, str] | None = None) -> None:
        """Point remote `name` at `url` in .dvc/config.local (this clone only, not in git).

        Written directly, as `dvc remote add --local` + `dvc remote modify --local` would.
        """
        path = self.root / ".dvc" / "config.local"
        config = configparser.ConfigParser(interpolation=None)
        config.read(path)
        section = f"'remote \"{name}\"'"
        config[section] = {"url": url, **(options or {})}
        with open(path, "w") as f:
            config.write(f)


def init_repo(root: Path, env: dict[str, str]) -> DvcProject:
    """A fresh git repository with a local identity at `root` (created); `env`: offline_env."""
    require_git()
    root.mkdir(parents=True, exist_ok=True)
    project = DvcProject(root, env)
    project.git("init", "-q", "-b", "main")
    for key, value in GIT_USER.items():
        project.git("config", key, value)
    project.git("config", "commit.gpgsign", "false")
    return project


def make_pipeline_project(root: Path, params: Mapping[str, Any], env: dict[str, str]) -> DvcProject:
    """A git repository holding a copy of FishEye's DVC pipeline with `params` changed.

    The stage commands run the installed `fisheye`; the copied code is there for the
    stages' code dependencies. Committed once, so `dvc exp run` and `dvc metrics diff`
    have a baseline.
    """
    if shutil.which("fisheye", path=env["PATH"]) is None:
        raise RuntimeError(
            f"the pipeline's stages run `fisheye`, which is not on PATH ({env['PATH']}): "
            "install FishEye into this interpreter's environment (`make install`)"
        )
    project = init_repo(root, env)
    for name in PIPELINE_FILES:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (root / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    shutil.copytree(
        REPO_ROOT / CODE_DIR,
        root / CODE_DIR,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    project.set_params(params)
    project.commit("FishEye pipeline")
    return project


def sha256_tree(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of every file under each of `paths` (relative to root), keyed by relative path."""
    out: dict[str, str] = {}
    for rel in paths:
        base = root / rel
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
