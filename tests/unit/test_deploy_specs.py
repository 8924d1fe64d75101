"""The deployment specs validate offline: CI workflow, Dockerfiles, Kubernetes, Cloud Run,
Vertex AI and Cloud Build, each by a real validator or the API's own schema, plus the
properties that matter (probes, non-root, read-only root filesystem, resources, ...).

Validators (tests/helpers/deploy_tools.py says how each runs without a network):
actionlint (+ shellcheck on `run:` scripts), hadolint, `kubectl kustomize`,
kubernetes-validate (strict), the Prometheus Operator CRD models for the ServiceMonitor,
the Google discovery documents for Cloud Run / Vertex AI / Cloud Build, Hydra for the
training overrides, and checkov for security misconfigurations.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fisheye.monitoring.prediction_log.db_url import is_postgres_url, redact
from fisheye.serving.settings import ServeSettings
from tests.helpers.deploy_tools import (
    KUSTOMIZATIONS,
    ToolInstallError,
    check_service_monitor,
    cloud_run_annotations,
    discovery_errors,
    find_object,
    render_kustomization,
    run_checkov,
    run_tool,
    tool_env,
    venv_tool,
)
from tests.helpers.paths import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.y*ml"))
DOCKERFILES = sorted((REPO_ROOT / "dockerfiles").glob("*.Dockerfile"))
CLOUD_RUN = REPO_ROOT / "deploy" / "cloudrun" / "service.yaml"
VERTEX_JOBS = sorted((REPO_ROOT / "deploy" / "vertex").glob("*.yaml"))
CLOUDBUILD = REPO_ROOT / "cloudbuild.yaml"
SERVE_IMAGE = "ghcr.io/fisheye/fisheye-serve"

# Kubernetes versions the manifests must be valid for: an old one still on managed
# clusters, and the newest schema kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

# checkov checks not run, each with the reason.
CHECKOV_SKIPS = {
    # "Image should use digest": the manifests name the image by tag through kustomize's
    # `images:`; the digest of an image built later cannot be in the repository. A release
    # pins it at deploy time (`kustomize edit set image ...@sha256:...`), and tags are
    # immutable releases pulled with imagePullPolicy: Always.
    "CKV_K8S_43": "image digests are pinned at deploy time, not in the repository",
    # "Prefer secrets as files over environment variables": the server reads its settings
    # only from FISHEYE_* variables (pydantic-settings), so a token can only arrive as one.
    # When token auth lands with a file source (pydantic-settings `secrets_dir`), mount the
    # Secret as a volume and drop this skip.
    "CKV_K8S_35": "FishEye reads settings from environment variables only",
    # "Base image uses a non-latest tag": the Dockerfiles say `FROM ${BASE_IMAGE}` and checkov
    # does not resolve ARG defaults, so it always fails. test_dockerfile_build_args checks
    # that the default BASE_IMAGE has an explicit, non-latest tag instead.
    "CKV_DOCKER_7": "FROM ${BASE_IMAGE}: checked by test_dockerfile_build_args",
}
# Failures allowed for one file only (checkov's --skip-check is global), each with the
# reason; none at present.
CHECKOV_FILE_SKIPS: dict[tuple[str, str], str] = {}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _settings_from(env: dict[str, str]) -> ServeSettings:
    """ServeSettings built from FISHEYE_* values: each name must be a real setting."""
    fields = {f"FISHEYE_{name.upper()}": name for name in ServeSettings.model_fields}
    unknown = sorted(k for k in env if k.startswith("FISHEYE_") and k not in fields)
    unknown = [k for k in unknown if k != "FISHEYE_ADMIN_TOKEN"]  # token auth: not yet read
    assert not unknown, f"not FishEye settings (docs/serving.md): {unknown}"
    return ServeSettings(**{fields[k]: v for k, v in env.items() if k in fields})


# --- GitHub Actions -------------------------------------------------------------------------


def test_workflows_pass_actionlint() -> None:
    assert WORKFLOWS, "no workflow in .github/workflows"
    assert venv_tool("shellcheck")  # actionlint runs it on every `run:` script
    result = run_tool([venv_tool("actionlint"), "-no-color", *WORKFLOWS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_errors() -> None:
    """The validator is live: an unknown input and a shell mistake are both reported."""
    broken = (
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v5\n        with:\n          no-such-input: 1\n"
        '      - run: for f in $(ls); do echo "$f"; done\n'
    )
    result = subprocess.run(
        [str(venv_tool("actionlint")), "-no-color", "-"],
        input=broken,
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )
    assert result.returncode == 1
    assert "no-such-input" in result.stdout
    assert "SC2045" in result.stdout  # shellcheck ran on the `run:` script


def test_images_workflow() -> None:
    wf = _load(REPO_ROOT / ".github" / "workflows" / "images.yml")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["push"]["tags"] == ["v*"]
    assert "workflow_dispatch" in on
    assert wf["permissions"] == {}, "least privilege: no permissions at the top"
    built = set()
    for name, job in wf["jobs"].items():
        assert job["permissions"] == {"contents": "read", "packages": "write"}, name
        steps = job["steps"]
        uses = [s.get("uses", "").split("@")[0] for s in steps]
        assert "docker/metadata-action" in uses, name
        builds = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
        pushes = [i for i, s in enumerate(steps) if s in builds and s["with"].get("push")]
        loads = [i for i, s in enumerate(steps) if s in builds and s["with"].get("load")]
        assert len(pushes) == 1 and loads and loads[0] < pushes[0], name
        tests = [i for i, s in enumerate(steps) if "run" in s and "docker run" in s["run"]]
        assert tests and max(tests) < pushes[0], f"{name}: the image is tested before the push"
        push = steps[pushes[0]]["with"]
        assert push["labels"] == "${{ steps.meta.outputs.labels }}"
        assert push["tags"] == "${{ steps.meta.outputs.tags }}"
        assert {"VERSION", "GIT_COMMIT"} <= {
            line.split("=")[0] for line in push["build-args"].split()
        }
        built.add(push["file"])
    assert built == {"dockerfiles/serve.Dockerfile", "dockerfiles/train.Dockerfile"}
    serve_runs = "\n".join(s.get("run", "") for s in wf["jobs"]["serve"]["steps"])
    for flag in ("--read-only", "--tmpfs /tmp", "/readyz", "/v1/predict", "pytest"):
        assert flag in serve_runs, flag


# --- Dockerfiles ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfiles() -> list[Path]:
    assert DOCKERFILES, "no dockerfiles/*.Dockerfile to check"
    return DOCKERFILES


def test_dockerfiles_pass_hadolint(dockerfiles: list[Path]) -> None:
    # Style notes (level info) are advice; warnings and errors fail.
    result = run_tool(
        [venv_tool("hadolint"), "--no-color", "--failure-threshold", "warning", *dockerfiles]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_errors() -> None:
    result = subprocess.run(
        [str(venv_tool("hadolint")), "--no-color", "-"],
        input="FROM python:latest\nRUN apt-get install -y curl\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


def test_dockerfile_build_args() -> None:
    """The images the pipelines build take BASE_IMAGE (a tagged default), VERSION, GIT_COMMIT."""
    for name in ("serve", "train"):
        path = REPO_ROOT / "dockerfiles" / f"{name}.Dockerfile"
        assert path.exists(), path
        text = path.read_text(encoding="utf-8")
        args = dict(re.findall(r"^ARG\s+(\w+)(?:=(\S*))?", text, flags=re.MULTILINE))
        assert {"BASE_IMAGE", "VERSION", "GIT_COMMIT"} <= set(args), path.name
        base = args["BASE_IMAGE"]
        tag = base.rsplit("/", 1)[-1].partition(":")[2].partition("@")[0]
        assert (tag and tag != "latest") or "@sha256:" in base, f"{path.name}: {base}"
        assert re.search(r"^FROM\s+\$\{?BASE_IMAGE\}?", text, flags=re.MULTILINE), path.name
        assert "org.opencontainers.image.revision" in text, path.name


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_manifests_validate(name: str) -> None:
    """Every rendered object passes its schema: the Kubernetes API's, or the CRD's."""
    objects = render_kustomization(name)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            check_service_monitor(obj)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(f"{name}: {obj['kind']} on Kubernetes {version}: {where}: {e.message}")


def test_kubernetes_validators_catch_errors() -> None:
    objects = render_kustomization("base")
    deployment = copy.deepcopy(find_object(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    monitor = copy.deepcopy(find_object(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "30s"
    with pytest.raises(AssertionError, match="scrapeIntervall"):
        check_service_monitor(monitor)
    monitor = copy.deepcopy(find_object(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(ValueError, match="pattern"):
        check_service_monitor(monitor)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _quantity(value: str | int) -> float:
    """A Kubernetes CPU quantity in cores ("500m", "2", 2)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_properties(name: str) -> None:
    objects = render_kustomization(name)
    for obj in objects:
        assert obj["metadata"].get("namespace") == "fisheye", obj["kind"]
    deployment = find_object(objects, "Deployment")
    service = find_object(objects, "Service")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]

    # The image, by the name the pipelines push, with a tag from kustomize's `images:`.
    image, _, tag = container["image"].partition(":")
    assert image == SERVE_IMAGE and tag, container["image"]
    assert deployment["spec"]["replicas"] == 2

    # Probes: readiness on /readyz, liveness on /healthz, a startup probe before them.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert (
            ports.get(container[probe]["httpGet"]["port"], container[probe]["httpGet"]["port"])
            == 8000
        )

    # Non-root, read-only root filesystem, no privilege escalation, no capabilities.
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False

    # Writable places: emptyDir volumes at /tmp and /data, nothing else.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/data"}
    assert all("emptyDir" in volumes[v] for v in mounts.values())

    # Resources: requests and limits for CPU and memory, room for the ~260 MiB server.
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    assert resources["limits"]["memory"].endswith(("Mi", "Gi"))
    memory_mib = int(resources["limits"]["memory"][:-2]) * (
        1024 if resources["limits"]["memory"].endswith("Gi") else 1
    )
    assert memory_mib >= 1024
    cpu_limit = _quantity(resources["limits"]["cpu"])
    assert _quantity(resources["requests"]["cpu"]) <= cpu_limit

    # Settings: from the generated ConfigMap, real FishEye settings, sized to the CPU limit.
    config = find_object(objects, "ConfigMap")
    (env_from,) = container["envFrom"]
    assert env_from["configMapRef"]["name"] == config["metadata"]["name"]
    settings = _settings_from(config["data"])
    assert settings.host == "0.0.0.0" and settings.port == 8000
    if not is_postgres_url(settings.prediction_db):  # a SQLite log: on the pod's /data
        assert settings.prediction_db.parent == Path("/data")
    assert {"FISHEYE_THREADS", "FISHEYE_MODEL_WORKERS", "FISHEYE_DECODE_WORKERS"} <= set(
        config["data"]
    ), "pools default to the node's cores, not the pod's CPU limit"
    assert settings.threads <= cpu_limit and settings.model_workers <= cpu_limit
    (token,) = [e for e in container["env"] if e["name"] == "FISHEYE_ADMIN_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "fisheye-tokens" and ref["optional"] is True

    # Service: ClusterIP, port 80 to the pods' 8000.
    labels = pod["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert _matches(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80 and ports.get(port["targetPort"], port["targetPort"]) == 8000
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)

    # The HPA scales this Deployment on CPU utilisation, from at least 2 replicas.
    hpa = find_object(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    # The PDB keeps one pod; with two or more replicas a drain can still evict the others.
    pdb = find_object(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)

    # The ServiceMonitor selects the Service and scrapes /metrics on its port.
    monitor = find_object(objects, "ServiceMonitor")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"

    # The NetworkPolicy admits the HTTP port of these pods.
    policy = find_object(objects, "NetworkPolicy")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    allowed = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert [ports.get(p, p) for p in allowed] == [8000]


def test_kubernetes_overlays() -> None:
    cpu = find_object(render_kustomization("overlays/cpu"), "Deployment")
    (container,) = cpu["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for kind in ("cpu", "memory"):  # Guaranteed QoS
        assert requests[kind] == limits[kind], kind

    gpu_objects = render_kustomization("overlays/gpu")
    gpu = find_object(gpu_objects, "Deployment")
    spec = gpu["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu")
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert find_object(gpu_objects, "ConfigMap")["data"]["FISHEYE_BACKEND"] == "onnx"
    # A rollout must not need a GPU more than the pool has.
    assert gpu["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0

    base = find_object(render_kustomization("base"), "Deployment")
    assert "nvidia.com/gpu" not in str(base)

    # The fleet: the CPU pods, every one writing to one PostgreSQL store whose password
    # comes from a Secret (never from the ConfigMap), at least three of them.
    fleet_objects = render_kustomization("overlays/fleet")
    config = find_object(fleet_objects, "ConfigMap")["data"]
    assert is_postgres_url(config["FISHEYE_PREDICTION_DB"])
    assert redact(config["FISHEYE_PREDICTION_DB"]) == config["FISHEYE_PREDICTION_DB"]
    fleet = find_object(fleet_objects, "Deployment")
    (container,) = fleet["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    secret = env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == "fisheye-postgres" and not secret.get("optional")
    assert container["resources"] == cpu["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert find_object(fleet_objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3


# --- Cloud Run ------------------------------------------------------------------------------


def test_cloud_run_service() -> None:
    service = _load(CLOUD_RUN)
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    assert discovery_errors("run.v1", "Service", service) == []

    # Annotations Cloud Run accepts, each on the resource it applies to.
    accepted = cloud_run_annotations()
    assert len(accepted) > 10, "could not read Cloud Run's annotation list"
    template = service["spec"]["template"]
    for resource, given in (
        ("Service", service["metadata"].get("annotations", {})),
        ("Revision", template["metadata"]["annotations"]),
    ):
        for key in given:
            assert resource in accepted.get(key, set()), f"{key} is not a {resource} annotation"

    notes = template["metadata"]["annotations"]
    assert notes["run.googleapis.com/execution-environment"] == "gen2"
    low, high = (
        int(notes["autoscaling.knative.dev/minScale"]),
        int(notes["autoscaling.knative.dev/maxScale"]),
    )
    assert 0 <= low <= high
    spec = template["spec"]
    assert spec["containerConcurrency"] > 0
    (container,) = spec["containers"]
    assert container["image"].split("/")[-1].startswith("fisheye-serve:")
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "PORT" not in env  # Cloud Run sets it
    settings = _settings_from(env)
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_google_schemas_catch_errors() -> None:
    service = _load(CLOUD_RUN)
    service["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    service["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"] = 10
    errors = discovery_errors("run.v1", "Service", service)
    assert len(errors) == 2, errors
    job = _load(VERTEX_JOBS[0])
    job["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"] = "NVIDIA_TESLA_T1000"
    assert discovery_errors("aiplatform.v1", "GoogleCloudAiplatformV1CustomJobSpec", job)


# --- Vertex AI ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VERTEX_JOBS, ids=lambda p: p.name)
def test_vertex_custom_job(path: Path) -> None:
    """A CustomJobSpec (what `gcloud ai custom-jobs create --config` reads) that trains."""
    job = _load(path)
    assert discovery_errors("aiplatform.v1", "GoogleCloudAiplatformV1CustomJobSpec", job) == []
    assert not [k for k in re.findall(r"^\s*-?\s*(\w+):", path.read_text(), re.M) if "_" in k], (
        "gcloud rejects keys with underscores"
    )
    (pool,) = job["workerPoolSpecs"]
    assert pool["replicaCount"] == 1  # multi-node training is not configured here
    container = pool["containerSpec"]
    assert container["imageUri"].split("/")[-1].startswith("fisheye-train:")
    args = container["args"]
    assert args[:3] == ["fisheye", "train", "experiment=default_model"]
    assert job["baseOutputDirectory"]["outputUriPrefix"].startswith("gs://")

    # The Hydra overrides compose with FishEye's training config.
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fisheye.conf", version_base="1.3"):
        cfg = compose("train", overrides=args[2:])
    assert cfg.data.root.startswith("/gcs/") and cfg.paths.log_dir.startswith("/gcs/")
    gpus = pool["machineSpec"].get("acceleratorCount", 0)
    assert (cfg.trainer.accelerator == "gpu") == (gpus > 0)


# --- Cloud Build ----------------------------------------------------------------------------

# Substitutions Cloud Build provides itself.
BUILT_IN = {
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "LOCATION",
    "BUILD_ID",
    "COMMIT_SHA",
    "SHORT_SHA",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REVISION_ID",
    "TRIGGER_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
    "REF_NAME",
}


def test_cloudbuild() -> None:
    build = _load(CLOUDBUILD)
    assert discovery_errors("cloudbuild.v1", "Build", build) == []

    text = CLOUDBUILD.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text.split("\nsteps:", 1)[1]))
    declared = set(build["substitutions"])
    assert all(k.startswith("_") for k in declared)
    assert used - declared <= BUILT_IN, f"undeclared substitutions: {used - declared - BUILT_IN}"
    assert declared <= used, f"unused substitutions: {declared - used}"

    steps = {s["id"]: s for s in build["steps"]}
    order = [s["id"] for s in build["steps"]]
    for image in ("serve", "train"):
        args = steps[f"build-{image}"]["args"]
        assert f"--file=dockerfiles/{image}.Dockerfile" in args
        assert {a.split("=")[1] for a in args if a.startswith("--build-arg=")} == {
            "BASE_IMAGE",
            "VERSION",
            "GIT_COMMIT",
        }
    start = steps["start-serve"]["args"]
    assert start[0] == "run" and "--read-only" in start and "--tmpfs=/tmp" in start
    smoke = steps["smoke-readyz"]
    assert smoke["args"][-1].endswith(":8000/readyz")
    assert order.index("build-serve") < order.index("start-serve") < order.index("smoke-readyz")
    assert [i.split("/")[-1].split(":")[0] for i in build["images"]] == [
        "fisheye-serve",
        "fisheye-train",
    ]
    assert all(i.startswith("${_REGION}-docker.pkg.dev/") for i in build["images"])


# --- checkov --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov_reports(
    tmp_path_factory: pytest.TempPathFactory, dockerfiles: list[Path]
) -> dict[str, Any]:
    """checkov over the rendered Kubernetes objects, the Dockerfiles and the workflows."""
    root = tmp_path_factory.mktemp("checkov")
    for name in KUSTOMIZATIONS:
        out = root / "kubernetes" / f"{name.replace('/', '-')}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump_all(render_kustomization(name)), encoding="utf-8")
    (root / "docker").mkdir()
    for path in dockerfiles:
        shutil.copy(path, root / "docker" / path.name)
    shutil.copytree(REPO_ROOT / ".github" / "workflows", root / ".github" / "workflows")
    try:
        reports = run_checkov(
            root, ["kubernetes", "dockerfile", "github_actions"], sorted(CHECKOV_SKIPS)
        )
    except ToolInstallError as e:
        pytest.skip(f"checkov cannot be installed here: {e}")
    return {r["check_type"]: r for r in reports if "check_type" in r}


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile", "github_actions"])
def test_checkov(checkov_reports: dict[str, Any], framework: str) -> None:
    assert framework in checkov_reports, f"checkov found nothing to check for {framework}"
    report = checkov_reports[framework]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['file_path']} {c['resource']}"
        for c in report["results"]["failed_checks"]
        if (Path(c["file_path"]).name, c["check_id"]) not in CHECKOV_FILE_SKIPS
    ]
    assert not failed, "\n".join(failed)
