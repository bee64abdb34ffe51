"""``cdra-ray prm-eval``: the critic-quality report, before and after Pers-GenPRM SFT, on held-out scenarios.

Each critic scores the held-out D_Rea paths through the reward code CDPA trains with: the ``pers_genprm``
reward model (:class:`cdra_ray.rewards.PersGenPRM`) on the configured engine (``reward.engine``,
``reward.score_mode`` unless ``sft.eval_score_mode``), one group per path with the path's steps as the scored
spans, so step j is judged from exactly the prompt the reward service sends. Each critic runs in its own process
(one vLLM engine per process) and appends its predictions to ``predictions_<label>.jsonl`` as chunks of paths
finish; a rerun skips what is there (delete the directory to score a retrained critic again). The report
(:mod:`cdra_ray.sft.critic_metrics`) goes to ``prm_eval.json`` and ``prm_eval.md`` in
``<sft output dir of prm>/prm_eval/<score mode>``.

    cdra-ray prm-eval --config sft_cpu_demo                      # base critic vs <output>/final
    cdra-ray prm-eval --config sft_cpu_demo 'sft.eval_models=[base=/m/a,sft=/m/b]'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from cdra_ray.config import Config, ConfigError
from cdra_ray.sft.critic_metrics import critic_report, markdown_table
from cdra_ray.sft.data import rea_paths
from cdra_ray.sft.examples import path_response_steps

log = logging.getLogger(__name__)
CHUNK_PATHS = 4  # paths per engine call (and per append to the predictions file)


def heldout_paths(config: Config) -> list[dict]:
    """The held-out D_Rea paths (whole paths, every step's teacher score), at most ``sft.eval_max_records`` steps."""
    from cdra_ray.sft.run import load_split

    _, _, heldout = load_split(config, "prm")
    paths, steps = [], 0
    for last, scores in sorted(rea_paths(heldout), key=lambda item: item[0].path_id):
        if config.sft.eval_max_records is not None and steps + len(scores) > config.sft.eval_max_records and paths:
            break
        paths.append({"path_id": last.path_id, "scenario_id": last.scenario_id, "preference": last.preference,
                      "query": last.query, "steps": list(last.steps), "scores": scores})
        steps += len(scores)
    return paths


def path_group(path: dict):
    """One group holding the path as a single response, its steps as the scored spans."""
    from cdra_ray.messages import Group, Sample, Scenario

    pieces = path_response_steps(path["steps"])
    spans, offset = [], 0
    for piece in pieces:
        spans.append((offset, offset + len(piece)))
        offset += len(piece)
    scenario = Scenario(uid=path["scenario_id"], preference=path["preference"], query=path["query"])
    return Group(scenario=scenario, prompt_token_ids=[], samples=[Sample("".join(pieces), [], [])],
                 policy_version=0, step_spans=[spans])


def score_paths(job: dict) -> None:
    """Child process: build the engine + PersGenPRM, score the job's paths chunk by chunk, append the rows."""
    from tqdm import tqdm

    from cdra_ray.actors.constructors import EngineSpec
    from cdra_ray.rewards import create_reward_model

    critic = create_reward_model("pers_genprm", engine=EngineSpec(**job["engine"]).build(), **job["reward_options"])
    paths = job["paths"]
    with open(job["out"], "a", encoding="utf-8") as out:
        for start in tqdm(range(0, len(paths), CHUNK_PATHS), desc=f"prm-eval {job['label']}", unit="chunk"):
            chunk = paths[start:start + CHUNK_PATHS]
            outputs = critic.score_groups([path_group(p) for p in chunk])
            for path, output in zip(chunk, outputs):
                for j, (teacher, scored) in enumerate(zip(path["scores"], output.step_scores[0]), start=1):
                    out.write(json.dumps({"path_id": path["path_id"], "step": j, "teacher": teacher,
                                          "predicted": scored.score, "parsed": scored.parsed,
                                          "critique": scored.critique}) + "\n")
            out.flush()


def eval_models(config: Config) -> list[tuple[str, str]]:
    """(label, model setting) pairs: ``sft.eval_models``, or the base critic and the SFT checkpoint."""
    from cdra_ray.sft.run import base_model_setting, sft_output_dir

    if config.sft.eval_models:
        return [tuple(item.split("=", 1)) for item in config.sft.eval_models]  # type: ignore[misc]
    models = [("before", base_model_setting(config, "prm"))]
    final = sft_output_dir(config, "prm") / "final"
    if (final / "config.json").is_file():
        models.append(("after", str(final)))
    else:
        log.warning("no SFT checkpoint at %s: reporting the base critic only (run cdra-ray sft --task prm first)",
                    final)
    return models


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_prm_eval(config: Config) -> Path:
    """Score every critic on the held-out paths (resumable) and write ``prm_eval.{json,md}``; returns the dir."""
    from cdra_ray.actors.constructors import reward_engine_spec, reward_model_options
    from cdra_ray.actors.environment import actor_env
    from cdra_ray.sft.run import sft_output_dir
    from cdra_ray.train import resolve_model_setting

    paths = heldout_paths(config)
    mode = config.sft.eval_score_mode or config.reward.score_mode
    scoring = dataclasses.replace(config, reward=dataclasses.replace(config.reward, kind="pers_genprm",
                                                                     score_mode=mode))
    reward_options = {**reward_model_options(scoring), "parse_rate_floor": 0.0, "max_steps": None}
    w = config.reward
    report_dir = sft_output_dir(config, "prm") / "prm_eval" / mode
    report_dir.mkdir(parents=True, exist_ok=True)
    reports = {}
    for label, setting in eval_models(config):
        model_dir = resolve_model_setting(setting)
        out = report_dir / f"predictions_{label}.jsonl"
        done = {row["path_id"] for row in _read_rows(out)}
        todo = [p for p in paths if p["path_id"] not in done]
        if todo:
            job = {"label": label, "engine": dataclasses.asdict(reward_engine_spec(config, model_dir)),
                   "reward_options": reward_options, "paths": todo, "out": str(out)}
            job_file = report_dir / f"job_{label}.json"
            job_file.write_text(json.dumps(job))
            env = {**os.environ, **actor_env(w.num_cpus, w.engine, w.kv_cache_gb, config.learner.device)}
            package_root = str(Path(__file__).resolve().parents[2])  # the child imports this same cdra_ray
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            result = subprocess.run([sys.executable, "-m", "cdra_ray.sft.prm_eval", str(job_file)], env=env)
            if result.returncode != 0:
                raise RuntimeError(f"prm-eval: scoring with {label}={model_dir} failed (exit {result.returncode})")
        wanted = {p["path_id"] for p in paths}
        rows = [r for r in _read_rows(out) if r["path_id"] in wanted]
        if not rows:
            raise ConfigError(f"prm-eval: no predictions for {label}")
        reports[label] = {"model": model_dir, **critic_report(rows)}
    payload = {"score_mode": mode, "engine": w.engine, "heldout_paths": len(paths),
               "heldout_scenarios": sorted({p["scenario_id"] for p in paths}), "critics": reports}
    (report_dir / "prm_eval.json").write_text(json.dumps(payload, indent=1))
    table = markdown_table(reports)
    (report_dir / "prm_eval.md").write_text(
        f"# Critic quality on {len(paths)} held-out paths ({mode} scores, {w.engine} engine)\n\n{table}\n")
    print(table)
    return report_dir


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    score_paths(json.loads(Path(sys.argv[1]).read_text()))
