"""Which launcher a worker picks for a job's resources (issue 14), and the Ray Train
placement a multi-node job asks for; no processes are started here."""

from __future__ import annotations

import pytest

from service.settings import Settings, get_settings
from service.specs import JobSpec
from workers.launchers import Unservable, choose_launcher
from workers.ray_launcher import placement


@pytest.fixture
def two_nodes_allowed(monkeypatch):
    monkeypatch.setenv("AMFT_MAX_NODES", "2")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("AMFT_MAX_NODES")
    get_settings.cache_clear()


def spec(devices: int, nodes: int) -> JobSpec:
    batch = 16 * devices * nodes
    return JobSpec.model_validate({"resources": {"devices": devices, "nodes": nodes},
                                   "training": {"sft_batch_size": batch, "rl_prompts_per_step": batch},
                                   "controller": {"meta_val_prompts": batch}})


def test_one_node_jobs_run_in_process_or_under_torchrun():
    assert choose_launcher(spec(1, 1), Settings(worker_devices=1)) == "local"
    assert choose_launcher(spec(2, 1), Settings(worker_devices=2)) == "torchrun"
    with pytest.raises(Unservable, match="resources.devices = 2 but this worker serves 1"):
        choose_launcher(spec(2, 1), Settings(worker_devices=1))


def test_multi_node_jobs_need_a_ray_cluster(two_nodes_allowed):
    with pytest.raises(Unservable, match="resources.nodes = 2 but this worker has no Ray cluster .AMFT_RAY_ADDRESS."):
        choose_launcher(spec(1, 2), Settings())
    # The Ray cluster provides the devices, not this worker.
    assert choose_launcher(spec(8, 2), Settings(ray_address="head:6380", worker_devices=1)) == "ray"


def test_two_by_eight_gpus_asks_ray_for_sixteen_packed_one_gpu_workers(two_nodes_allowed):
    from ray.train import ScalingConfig

    asked = placement(spec(8, 2), on_gpu=True)
    config = ScalingConfig(**asked)  # the real Ray Train class accepts it
    assert (config.num_workers, config.use_gpu, config.placement_strategy) == (16, True, "PACK")
    assert config.resources_per_worker == {"GPU": 1, "CPU": 1}
    assert placement(spec(1, 2), on_gpu=False)["resources_per_worker"] == {"CPU": 1}
