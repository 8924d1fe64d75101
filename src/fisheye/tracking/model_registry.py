"""The MLflow model registry of bundles: register, list, promote, and resolve `models:/` URIs.

A registered model version's artifact is a bundle folder, tagged with the sha256 of its
`bundle.json` (which lists the sha256 of every other file). Resolving
`models:/NAME@ALIAS` or `models:/NAME/VERSION` downloads that folder into a
content-addressed cache (`$XDG_CACHE_HOME/fisheye/registry/<sha256>/`), checks every file's
hash and that the bundle is the one registered, and returns its path and hash, so the
caller loads it pinned to that hash. MLflow is imported on use: it is optional, and slow to
import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fisheye.bundle import BUNDLE_JSON, Bundle, BundleError, load_bundle
from fisheye.tracking.store import (
    BUNDLE_ARTIFACT,
    SHA256_TAG,
    VERSION_TAG,
    TrackingError,
    client,
    experiment_id,
)

log = logging.getLogger(__name__)

SCHEME = "models:/"
DEFAULT_NAME = "fisheye"
DEFAULT_ALIAS = "champion"
REGISTER_EXPERIMENT = "fisheye-registry"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(TrackingError):
    """A registry URI, name or version is wrong, or its bundle fails verification."""


def is_registry_uri(ref: object) -> bool:
    """Whether a `--model` value is a registry URI (`models:/...`) rather than a folder."""
    return str(ref).startswith(SCHEME)


def parse_uri(uri: str) -> tuple[str, str | None, int | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    match = _URI.match(str(uri))
    if match is None:
        raise RegistryError(
            f"{uri!r} is not a registry URI: use models:/NAME@ALIAS (e.g. "
            f"models:/{DEFAULT_NAME}@{DEFAULT_ALIAS}) or models:/NAME/VERSION"
        )
    version = match["version"]
    return match["name"], match["alias"], int(version) if version else None


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/fisheye/registry (~/.cache when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fisheye" / "registry"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a bundle."""

    name: str
    version: int
    aliases: list[str] = field(default_factory=list)
    created: datetime | None = None
    bundle_sha256: str | None = None
    bundle_version: str | None = None
    run_id: str | None = None
    source: str = ""
    status: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`created` in ISO 8601)."""
        out = asdict(self)
        out["created"] = self.created.isoformat() if self.created else None
        return out


@dataclass(frozen=True)
class ResolvedModel:
    """A registry URI resolved to a verified local bundle folder."""

    uri: str
    path: Path
    sha256: str
    version: ModelVersion


def _version(mv: Any) -> ModelVersion:
    tags = dict(mv.tags or {})
    created = (
        datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
    )
    return ModelVersion(
        name=mv.name,
        version=int(mv.version),
        aliases=sorted(mv.aliases or []),
        created=created,
        bundle_sha256=tags.get(SHA256_TAG),
        bundle_version=tags.get(VERSION_TAG),
        run_id=mv.run_id,
        source=mv.source or "",
        status=str(mv.status or ""),
    )


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _find_run_with(mlflow_client: Any, sha256: str) -> str | None:
    """A run (e.g. the training run) that already holds this bundle as its `bundle` artifact."""
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiments:
        return None
    runs = mlflow_client.search_runs(
        experiments,
        filter_string=f"tags.`{SHA256_TAG}` = '{sha256}'",
        max_results=5,
        order_by=["attributes.start_time DESC"],
    )
    wanted = f"{BUNDLE_ARTIFACT}/{BUNDLE_JSON}"
    for run in runs:
        # Its artifacts must be readable from here (a run logged inside a container, say,
        # may record a path that does not exist on this machine).
        with contextlib.suppress(Exception):
            listed = mlflow_client.list_artifacts(run.info.run_id, BUNDLE_ARTIFACT)
            if any(a.path == wanted for a in listed):
                return run.info.run_id
    return None


def _register_run(mlflow_client: Any, bundle: Bundle) -> str:
    """A new run in the registry experiment that holds the bundle as its artifact."""
    exp = experiment_id(mlflow_client, REGISTER_EXPERIMENT)
    run = mlflow_client.create_run(exp, run_name=f"register {bundle.name} {bundle.version}")
    run_id = run.info.run_id
    try:
        mlflow_client.log_artifacts(run_id, str(bundle.path), BUNDLE_ARTIFACT)
        mlflow_client.set_tag(run_id, VERSION_TAG, bundle.version)
        mlflow_client.set_tag(run_id, "fisheye.bundle_dir", str(bundle.path.resolve()))
        # Set last: a run with the hash tag holds the complete bundle.
        mlflow_client.set_tag(run_id, SHA256_TAG, bundle.sha256)
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id)
    return run_id


def register(
    bundle_dir: Path,
    name: str = DEFAULT_NAME,
    *,
    tracking_uri: str | None = None,
    description: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Register a verified bundle as a new version of `name`; (version, newly created).

    The source is the training run that logged this very bundle when there is one (found by
    its hash tag), else a new run of the `fisheye-registry` experiment. Registering the same
    bundle under the same name again returns the existing version.
    """
    bundle = load_bundle(Path(bundle_dir))  # every hash checked before anything is uploaded
    mlflow_client = client(tracking_uri, create=True)
    for existing in list_versions(name, tracking_uri=tracking_uri, mlflow_client=mlflow_client):
        if existing.bundle_sha256 == bundle.sha256:
            return existing, False
    try:
        mlflow_client.get_registered_model(name)
    except Exception as exc:
        if not _not_found(exc):
            raise
        mlflow_client.create_registered_model(
            name, description="FishEye model bundles (fisheye registry register)"
        )
    run_id = _find_run_with(mlflow_client, bundle.sha256) or _register_run(mlflow_client, bundle)
    mv = mlflow_client.create_model_version(
        name,
        source=f"runs:/{run_id}/{BUNDLE_ARTIFACT}",
        run_id=run_id,
        tags={
            SHA256_TAG: bundle.sha256,
            VERSION_TAG: bundle.version,
            "fisheye.architecture": bundle.architecture,
            "fisheye.classes": str(len(bundle.classes)),
        },
        description=description,
    )
    return _version(mv), True


def _all_pages(search: Any, filter_string: str | None) -> list[Any]:
    """Every result of an MLflow search, page by page."""
    out: list[Any] = []
    token = None
    while True:
        page = search(filter_string=filter_string, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def list_versions(
    name: str | None = None, *, tracking_uri: str | None = None, mlflow_client: Any = None
) -> list[ModelVersion]:
    """Registered versions (of `name`, or of every model), by name then newest first."""
    mlflow_client = mlflow_client or client(tracking_uri)
    filter_string = f"name = '{name}'" if name else None
    # Searches do not fill in model versions' aliases; the registered models hold them.
    aliases: dict[tuple[str, int], list[str]] = {}
    for model in _all_pages(mlflow_client.search_registered_models, filter_string):
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault((model.name, int(number)), []).append(alias)
    found = [
        replace(v, aliases=sorted(aliases.get((v.name, v.version), v.aliases)))
        for v in map(_version, _all_pages(mlflow_client.search_model_versions, filter_string))
    ]
    return sorted(found, key=lambda v: (v.name, -v.version))


def get_version(
    name: str, version: int | None = None, alias: str | None = None, *, mlflow_client: Any
) -> ModelVersion:
    """One registered version, by number or by alias."""
    try:
        if alias is not None:
            mv = mlflow_client.get_model_version_by_alias(name, alias)
        else:
            mv = mlflow_client.get_model_version(name, str(version))
    except Exception as exc:
        if _not_found(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
            what = f"alias {alias!r}" if alias is not None else f"version {version}"
            raise RegistryError(
                f"the registry at {mlflow_client.tracking_uri} has no {what} of model {name!r} "
                "(`fisheye registry list` shows what it has)"
            ) from None
        raise
    return _version(mv)


def promote(
    name: str,
    version: int,
    alias: str = DEFAULT_ALIAS,
    *,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
) -> ModelVersion:
    """Point `alias` at a version, after resolving and verifying its bundle (cached)."""
    mlflow_client = client(tracking_uri)
    resolve(f"{SCHEME}{name}/{version}", cache_dir=cache_dir, mlflow_client=mlflow_client)
    mlflow_client.set_registered_model_alias(name, alias, str(version))
    return get_version(name, version, mlflow_client=mlflow_client)


def _verified(path: Path, expected: str, uri: str) -> Bundle:
    """The bundle at `path` if every file passes its hash and bundle.json is `expected`."""
    bundle = load_bundle(path)
    if bundle.sha256 != expected:
        raise BundleError(
            f"the artifact of {uri} is not the bundle that was registered (bundle.json "
            f"sha256 {bundle.sha256[:12]}..., registered {expected[:12]}...)"
        )
    return bundle


def resolve(
    uri: str,
    *,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
    mlflow_client: Any = None,
) -> ResolvedModel:
    """The verified local bundle a `models:/` URI names (downloaded once into the cache).

    Raises RegistryError for an unknown name, alias or version, and for an artifact that
    fails verification (a modified file, or not the bundle whose hash was registered).
    """
    name, alias, number = parse_uri(uri)
    mlflow_client = mlflow_client or client(tracking_uri)
    mv = get_version(name, number, alias, mlflow_client=mlflow_client)
    sha = (mv.bundle_sha256 or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise RegistryError(
            f"{uri} (version {mv.version}) has no {SHA256_TAG} tag: it was not registered "
            "with `fisheye registry register`, so its bundle cannot be verified"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / sha
    if target.is_dir():
        try:
            _verified(target, sha, uri)
            return ResolvedModel(uri, target, sha, mv)
        except BundleError as exc:
            log.warning("cached bundle %s fails verification (%s); downloading again", target, exc)
            shutil.rmtree(target, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        from mlflow.artifacts import download_artifacts

        source = mlflow_client.get_model_version_download_uri(name, str(mv.version))
        log.info("downloading %s (version %d) from %s", uri, mv.version, source)
        local = Path(
            download_artifacts(
                artifact_uri=source,
                dst_path=str(tmp),
                tracking_uri=mlflow_client.tracking_uri,
            )
        )
        try:
            _verified(local, sha, uri)
        except BundleError as exc:
            raise RegistryError(
                f"the registered bundle of {uri} (version {mv.version}) fails verification "
                f"and is refused: {exc}"
            ) from None
        try:
            os.replace(local, target)
        except OSError:  # another process cached it first: use that copy, once verified
            if not target.is_dir():
                raise
            _verified(target, sha, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(uri, target, sha, mv)


class PinMismatchError(RegistryError):
    """A registry URI names another bundle than the pinned sha256."""


def resolve_reference(
    ref: Path | str, pinned: str | None = None, *, tracking_uri: str | None = None
) -> tuple[Path, str | None, ResolvedModel | None]:
    """A `--model` value as (bundle folder, sha256 to pin it to, the registry version if any).

    A folder is returned as it is, with `pinned`; a registry URI is resolved to a verified
    local copy pinned to its registered hash (and must match `pinned` when given). The
    server's start-up, hot swap and SIGHUP, and the CLI, all load models through this.
    """
    if not is_registry_uri(ref):
        return Path(ref), pinned, None
    resolved = resolve(str(ref), tracking_uri=tracking_uri)
    if pinned is not None and pinned.strip().lower() != resolved.sha256:
        raise PinMismatchError(
            f"{ref} is the bundle {resolved.sha256[:12]}..., not the pinned "
            f"{pinned.strip()[:12]}... (FISHEYE_MODEL_SHA256)"
        )
    return resolved.path, resolved.sha256, resolved
