"""Offline checks of the multi-node training specs: the Kubeflow PyTorchJob and SLURM script.

The PyTorchJob's own fields are checked by a strict JSON Schema of the training-operator's
`kubeflow.org/v1` PyTorchJob (spec: elasticPolicy, nprocPerNode, pytorchReplicaSpecs,
runPolicy), written from its CRD; each replica's pod template is a Kubernetes
PodTemplateSpec, checked by kubernetes-validate like the serving manifests.
"""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer", "minimum": 0}
_REPLICA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
        "template": {"type": "object"},  # a PodTemplateSpec: checked by kubernetes-validate
    },
}
PYTORCHJOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "PyTorchJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["pytorchReplicaSpecs"],
            "properties": {
                "nprocPerNode": {"type": "string", "pattern": "^([0-9]+|auto|cpu|gpu)$"},
                "elasticPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "minReplicas": _INT,
                        "maxReplicas": _INT,
                        "maxRestarts": _INT,
                        "nProcPerNode": _INT,
                        "rdzvBackend": {"enum": ["c10d", "etcd", "etcd-v2"]},
                        "rdzvHost": {"type": "string"},
                        "rdzvPort": _INT,
                        "rdzvId": {"type": "string"},
                        "rdzvConf": {"type": "array"},
                        "standalone": {"type": "boolean"},
                        "metrics": {"type": "array"},
                    },
                },
                "pytorchReplicaSpecs": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["Master"],
                    "properties": {"Master": _REPLICA, "Worker": _REPLICA},
                },
                "runPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "activeDeadlineSeconds": _INT,
                        "backoffLimit": _INT,
                        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                        "managedBy": {"type": "string"},
                        "schedulingPolicy": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "ttlSecondsAfterFinished": _INT,
                    },
                },
            },
        },
    },
}


def pytorchjob_errors(job: dict[str, Any], k8s_version: str) -> list[str]:
    """What the PyTorchJob schema or the Kubernetes pod-template schema rejects, one per line."""
    import jsonschema
    import kubernetes_validate

    validator = jsonschema.Draft202012Validator(PYTORCHJOB_SCHEMA)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
        for e in validator.iter_errors(job)
    ]
    replicas = job.get("spec", {}).get("pytorchReplicaSpecs", {})
    for role, replica in replicas.items():
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{job['metadata']['name']}-{role.lower()}"},
            "template": replica.get("template", {}),
        }
        try:
            kubernetes_validate.validate(template, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{role}.template.{'.'.join(str(p) for p in e.path)}: {e.message}")
    return errors
