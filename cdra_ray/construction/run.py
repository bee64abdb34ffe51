"""``cdra-ray construct``: build DeepPref-style trees for every scenario, on Ray, resumably.

Order of work, cheapest first: check the ``construct`` section, read and check every input record, skip the ids
already in ``trees.jsonl``, write imported DeepPref trees straight through, and only then resolve models, start
Ray and the engine actors. Each scenario is one Ray task running :class:`~cdra_ray.construction.search.
CouncilSearch` against the engine actors (at most ``construct.concurrency`` in flight); its record is appended
to ``trees.jsonl`` (and ``d_rea.jsonl`` / ``d_rft.jsonl``) as soon as it finishes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cdra_ray.config import Config, save_resolved
from cdra_ray.config.construct import validate_construct
from cdra_ray.construction.backend import BackendSettings
from cdra_ray.construction.inputs import load_inputs
from cdra_ray.construction.outputs import OutputWriter, finished_ids
from cdra_ray.construction.search import SearchSettings

log = logging.getLogger(__name__)


def output_dir(config: Config) -> Path:
    c = config.construct
    if c.output_dir:
        return Path(c.output_dir).expanduser()
    return Path(config.run.output_dir).expanduser() / config.run.name / "construct"


def backend_settings(config: Config) -> BackendSettings:
    c = config.construct
    return BackendSettings(temperature=c.temperature, top_p=c.top_p, retry_temperature=c.retry_temperature,
                           thought_max_tokens=c.thought_max_tokens, answer_max_tokens=c.answer_max_tokens,
                           critique_max_tokens=c.critique_max_tokens, truncated=c.truncated, seed=c.seed)


def run_construction(config: Config) -> Path:
    """Build (or finish building) the construction outputs of ``config``; returns the output directory."""
    c = config.construct
    validate_construct(c)
    inputs = load_inputs(c.input or config.data.path, c.input_format,
                         c.max_scenarios if c.max_scenarios is not None else config.data.max_scenarios,
                         max_field_chars=config.data.max_field_chars)
    out = output_dir(config)
    writer = OutputWriter(out, c.best_path_by)
    save_resolved(config, out)
    done = finished_ids(out)
    todo = [(s, t) for s, t in inputs if s.uid not in done]
    for scenario, tree in todo:
        if tree is not None:
            writer.add(tree)
    to_build = [s for s, t in todo if t is None]
    log.info("construct: %d scenarios, %d already finished, %d imported, %d to build -> %s", len(inputs),
             len(inputs) - len(todo), len(todo) - len(to_build), len(to_build), out)
    run_info = {"concurrency": c.concurrency, "engine": c.engine, "built_this_run": len(to_build)}
    if to_build:
        run_info.update(build_on_ray(config, to_build, writer))
    stats = writer.finalize(run_info)
    log.info("construct: %d trees, %d d_rea records, %d d_rft records", stats["scenarios"],
             stats["records"]["d_rea"], stats["records"]["d_rft"])
    return out


def build_on_ray(config: Config, scenarios: list, writer: OutputWriter) -> dict:
    """Run the scenario tasks with at most ``construct.concurrency`` in flight; returns timing figures."""
    import ray

    from cdra_ray.construction import ray_shells
    from cdra_ray.construction.engines import model_specs
    from cdra_ray.logs import configure_run_logs
    from cdra_ray.train import resolve_model_setting

    c = config.construct
    generator_dir = resolve_model_setting(c.generator_model)
    evaluator_dir = resolve_model_setting(c.evaluator_model) if c.evaluator_model else generator_dir
    specs = model_specs(c, generator_dir, evaluator_dir)
    configure_run_logs(config)  # before the actors: their environment carries where their logs go
    if not ray.is_initialized():
        address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            from cdra_ray.actors.environment import threads_for

            busy = len({spec.key for spec in specs}) * c.num_engines * threads_for(c.engine_num_cpus)
            if busy > (os.cpu_count() or 1):
                log.warning("thread oversubscription: %d engine threads can be busy at once on %d cores "
                            "(construct.num_engines=%d x construct.engine_num_cpus=%s per model); lower them",
                            busy, os.cpu_count() or 1, c.num_engines, c.engine_num_cpus)
            ray.init(num_cpus=max(os.cpu_count() or 1, int(c.engine_num_cpus * c.num_engines * 2 + 1)),
                     include_dashboard=False, log_to_driver=True)
    start = time.perf_counter()
    pools = ray_shells.start_engine_pools(specs, c)
    load_seconds = time.perf_counter() - start
    try:
        stats = ray_shells.run_scenario_tasks(scenarios, pools, specs, SearchSettings.from_config(c),
                                              backend_settings(config), c.concurrency, writer,
                                              progress=config.run.progress_bar)
    finally:
        ray_shells.stop_engine_pools(pools)
    stats["engine_load_seconds"] = round(load_seconds, 2)
    return stats
