"""Multi-node training: two torchrun "nodes" of one process each on 127.0.0.1 (gloo, CPU).

Each node is its own `torchrun --nnodes 2 --node-rank R` process tree with its own run
folder, as two machines would be. The ranks must train on disjoint shards of the data,
end with identical weights, and only rank 0 may write checkpoints and the bundle.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT
from tests.helpers.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def _node(rank: int, port: int, data: Path, run_dir: Path, probe: Path) -> list[str]:
    bin_dir = Path(sys.executable).parent
    return [
        str(bin_dir / "torchrun"),
        "--nnodes", "2",
        "--node-rank", str(rank),
        "--nproc-per-node", "1",
        "--master-addr", "127.0.0.1",
        "--master-port", str(port),
        "--no-python",
        str(bin_dir / "fisheye"),
        "train",
        "experiment=smoke",
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=4",
        f"data.root={data}",
        "logger=csv",
        "test=false",
        "drift.enabled=false",
        f"hydra.run.dir={run_dir}",
        "+callbacks.probe._target_=tests.helpers.ddp_probe.Probe",
        f"+callbacks.probe.out_dir={probe}",
    ]  # fmt: skip


def test_two_nodes_train_disjoint_shards_to_identical_weights(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    port = free_port()
    probe = tmp_path / "probe"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    nodes = []
    for rank in (0, 1):
        log = (tmp_path / f"node{rank}.log").open("wb")
        cmd = _node(rank, port, synthetic_dataset, tmp_path / f"node{rank}", probe)
        nodes.append((subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log), log))
    try:
        codes = [proc.wait(timeout=480) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = "\n".join(
        (tmp_path / f"node{r}.log").read_text(errors="replace")[-3000:] for r in (0, 1)
    )
    assert codes == [0, 0], logs

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["node_rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["sampler"] for r in ranks} == {"DistributedSampler"}
    # Disjoint shards that cover the training split; DistributedSampler evens an odd split
    # out by repeating photos from its start, and only those may appear on both ranks.
    size = ranks[0]["dataset_size"]
    shards = [r["indices"] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == math.ceil(size / 2)
    assert set(shards[0]) | set(shards[1]) == set(range(size))
    assert len(set(shards[0]) & set(shards[1])) == 2 * math.ceil(size / 2) - size
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    bundle = tmp_path / "node0" / "bundle"
    assert (bundle / "bundle.json").is_file() and (bundle / "model.safetensors").is_file()
    assert list((tmp_path / "node0" / "checkpoints").glob("*.ckpt"))
    node1 = tmp_path / "node1"
    assert not (node1 / "bundle").exists() and not list(node1.rglob("*.ckpt"))
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["training"]["config"]["trainer"]["num_nodes"] == 2
