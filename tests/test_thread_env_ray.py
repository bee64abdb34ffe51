"""Inside a real Ray actor: the threads follow the CPUs Ray granted, not a hard-coded count."""

import pytest

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def test_actor_threads_follow_the_grant(ray_runtime):
    ray = ray_runtime

    @ray.remote
    class Probe:
        def threads(self, fallback):
            import os

            import torch

            from cdra_ray.actors.environment import apply_granted_threads

            granted = ray.get_runtime_context().get_assigned_resources()
            threads = apply_granted_threads(fallback, "probe")
            return granted, threads, torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]

    one = Probe.options(num_cpus=1).remote()
    granted, threads, torch_threads, omp = ray.get(one.threads.remote(fallback=2.0))  # the config says 2
    assert granted.get("CPU") == 1.0 and threads == 1 and torch_threads == 1 and omp == "1"
    two = Probe.options(num_cpus=2).remote()
    granted, threads, torch_threads, omp = ray.get(two.threads.remote(fallback=1.0))
    assert granted.get("CPU") == 2.0 and threads == min(2, len(__import__("os").sched_getaffinity(0)))
    assert torch_threads == threads and omp == str(threads)
