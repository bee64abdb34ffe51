"""``cdra-ray serve-reward``: put the reward deployment on Ray Serve, wait until it answers, serve until stopped.

Ray Serve owns replicas, autoscaling (``serve.min_replicas``..``serve.max_replicas``), placement (each replica
asks for ``reward.num_cpus``/``reward.num_gpus``) and the HTTP proxy (``serve.host``:``serve.port``). With
``run.ray_address`` (or ``RAY_ADDRESS``) it joins that cluster; otherwise it starts a local Ray runtime.
SIGINT/SIGTERM shut Serve down gracefully: replicas stop taking requests, finish those in flight, then exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cdra_ray.config import Config
from cdra_ray.config.schema import DEMO_MODEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedReward:
    """Where a started reward service answers."""

    url: str  # http://host:port + route prefix, ending in "/"
    app_name: str

    def route(self, path: str) -> str:
        return self.url + path.lstrip("/")


def deployment_options(config: Config) -> dict[str, Any]:
    """Serve deployment options from the config: replicas or autoscaling bounds, resources, process environment."""
    from cdra_ray.actors.environment import actor_env

    s, w = config.serve, config.reward
    options: dict[str, Any] = {
        "max_ongoing_requests": s.max_ongoing_requests,
        "graceful_shutdown_timeout_s": s.graceful_shutdown_timeout_s,
        "ray_actor_options": {
            "num_cpus": w.num_cpus, "num_gpus": w.num_gpus,
            "runtime_env": {"env_vars": actor_env(w.num_cpus, w.engine, w.kv_cache_gb, config.learner.device)},
        },
    }
    if s.min_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                         "target_ongoing_requests": s.target_ongoing_requests}
    else:
        options["num_replicas"] = s.num_replicas
    return options


def _connect_ray(config: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        replicas = config.serve.max_replicas or config.serve.num_replicas
        ray.init(num_cpus=max(int(replicas * config.reward.num_cpus + 0.999), os.cpu_count() or 1),
                 include_dashboard=False)


def wait_until_healthy(url: str, timeout_s: float = 300.0) -> dict:
    """Poll ``GET {url}health`` until it answers 200; its JSON, or TimeoutError naming the last failure."""
    deadline, last = time.monotonic() + timeout_s, "no attempt"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(url + "health", timeout=10) as reply:
                return json.loads(reply.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    raise TimeoutError(f"reward service at {url} did not answer /health within {timeout_s:.0f} s ({last})")


def start_reward_service(config: Config) -> ServedReward:
    """Deploy (or redeploy) the reward service and return once its routes answer."""
    from cdra_ray.config.serve import validate_serve
    from cdra_ray.train import resolve_model_setting

    validate_serve(config.serve)
    reward_dir = resolve_model_setting(config.reward.model or DEMO_MODEL)  # before any replica starts
    _connect_ray(config)
    from ray import serve

    from cdra_ray.serving.deployment import RewardDeployment

    s = config.serve
    http = {"host": s.host, "port": s.port}
    if s.request_timeout_s is not None:
        http["request_timeout_s"] = s.request_timeout_s
    serve.start(http_options=http)
    application = RewardDeployment.options(**deployment_options(config)).bind(config, reward_dir)
    serve.run(application, name=s.app_name, route_prefix=s.route_prefix)
    prefix = s.route_prefix.rstrip("/") + "/"
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    served = ServedReward(url=f"http://{host}:{s.port}{prefix}", app_name=s.app_name)
    wait_until_healthy(served.url)
    return served


def stop_reward_service() -> None:
    """Graceful: Serve drains every replica (``serve.graceful_shutdown_timeout_s``), then removes them."""
    from ray import serve

    serve.shutdown()


def serve_reward(config: Config) -> None:
    """The command: start, print where it answers, block until SIGINT/SIGTERM, then shut down gracefully."""
    served = start_reward_service(config)
    print(f"reward service '{served.app_name}' ready at {served.url} "
          f"(POST get_reward, POST v1/score_steps, GET health); Ctrl-C stops it", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):  # a timed wait lets the signal handlers run
        pass
    log.info("shutting the reward service down (in-flight requests finish first)")
    stop_reward_service()
