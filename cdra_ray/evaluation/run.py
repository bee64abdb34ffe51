"""``cdra-ray evaluate``: generate with every configured method, let one judge grade every response, report.

Order of work, cheapest first: the config and the judge setting, every scenario and demonstration line, the
demonstrations' disjointness from the evaluated scenarios, the model directories; then generation (one engine
per model, each in its own process), judging (one judge engine), and the report. Every phase appends to disk and
a rerun of the same command reuses what is there: ``responses.jsonl`` per (method, scenario, model),
``judgments.jsonl`` per (judge, question, texts shown).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cdra_ray.config import Config, ConfigError, save_resolved
from cdra_ray.config.evaluate import EvalConfig, judge_engine_options, policy_engine_options
from cdra_ray.data.scenarios import load_scenarios, resolve_data_path
from cdra_ray.evaluation.baselines import check_demos_disjoint, load_demos, pick_demos
from cdra_ray.evaluation.generation import (EngineSpec, GenJob, generate_responses, pending_jobs, read_jsonl,
                                            resolve_policy, run_isolated)
from cdra_ray.evaluation.grading import grade_responses
from cdra_ray.evaluation.report import judge_stats, method_rows, write_report

log = logging.getLogger(__name__)


def evaluation_dir(config: Config) -> Path:
    if config.evaluate.output_dir:
        return Path(config.evaluate.output_dir).expanduser()
    return Path(config.run.output_dir).expanduser() / config.run.name / "evaluate"


def load_topics(path: str) -> dict[str, str]:
    """Scenario id -> topic: the line's ``topic`` field, else the middle of a ``source/topic/nnn`` id."""
    topics = {}
    for line in resolve_data_path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record.get("topic"), str) and "id" in record:
                topics[str(record["id"])] = record["topic"]
    return topics


def topic_of(uid: str, topics: dict[str, str]) -> str:
    if uid in topics:
        return topics[uid]
    parts = uid.split("/")
    return parts[1] if len(parts) == 3 else "all"


def policy_spec(cfg: EvalConfig, model_dir: str) -> EngineSpec:
    return EngineSpec(cfg.engine, model_dir, policy_engine_options(cfg))


def judge_spec(cfg: EvalConfig, judge_dir: str) -> EngineSpec:
    return EngineSpec(cfg.judge.engine, judge_dir, judge_engine_options(cfg))


def judge_identity(cfg: EvalConfig, judge_dir: str) -> str:
    """What makes two judges the same for reuse of their answers."""
    j = cfg.judge
    where = f"{j.base_url}|{j.served_model}" if j.engine == "openai" else str(judge_dir)
    return f"{j.engine}|{where}|constrained={j.constrained}|tokens={j.max_new_tokens}"


def build_jobs(config: Config) -> tuple[list[GenJob], dict]:
    """Every (method, scenario) generation job, checked before any model loads; plus report info."""
    cfg = config.evaluate
    data = cfg.data or config.data.path
    scenarios = load_scenarios(data, cfg.max_scenarios)
    topics = load_topics(data)
    demos = []
    if any(m.kind == "few_shot" for m in cfg.methods):
        demos = load_demos(cfg.demo_data)
        check_demos_disjoint(demos, scenarios, cfg.demo_data)
        if cfg.few_shot_k > len(demos):
            raise ConfigError(f"evaluate.few_shot_k={cfg.few_shot_k}: {cfg.demo_data} has only {len(demos)} "
                              "demonstrations")
    jobs = []
    models = {}
    for method in cfg.methods:
        setting = method.model or config.model.policy
        model_dir = models.setdefault(setting, resolve_policy(setting))
        for s in scenarios:
            picked = pick_demos(demos, cfg.few_shot_k, cfg.demo_seed, s.uid) if method.kind == "few_shot" else []
            jobs.append(GenJob(method.name, method.kind, model_dir, s.uid, topic_of(s.uid, topics), s.preference,
                               s.query, tuple((d.uid, d.preference, d.query, d.response) for d in picked)))
    info = {"data": data, "scenarios": len(scenarios), "methods": [m.name for m in cfg.methods],
            "models": {m.name: models[m.model or config.model.policy] for m in cfg.methods}}
    return jobs, info


def run_evaluation(config: Config) -> dict:
    """The whole evaluation; returns ``{"dir", "rows", "paths", "judge"}``."""
    cfg = config.evaluate
    if not cfg.judge.model:
        raise ConfigError("evaluate.judge.model is not set: name the judge (an HF dir, smollm2-135m-instruct, or "
                          "with evaluate.judge.engine=openai a local dir holding the endpoint model's tokenizer)")
    jobs, info = build_jobs(config)
    from cdra_ray.train import resolve_model_setting

    judge_dir = resolve_model_setting(cfg.judge.model)
    out = evaluation_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(config, out)
    responses_path = out / "responses.jsonl"

    by_model: dict[str, list[GenJob]] = {}
    for job in pending_jobs(jobs, responses_path):
        by_model.setdefault(job.model, []).append(job)
    for model_dir, model_jobs in by_model.items():
        log.info("generating %d responses with %s (%s)", len(model_jobs), model_dir, cfg.engine)
        run_isolated(generate_responses, policy_spec(cfg, model_dir), model_jobs, str(responses_path),
                     isolate=cfg.engine == "vllm", max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.generation_batch_size, seed=cfg.seed,
                     progress=cfg.progress_bar)
    wanted = {j.key() for j in jobs}
    responses = [r for r in read_jsonl(responses_path) if (r["method"], r["scenario_id"], r["model"]) in wanted]

    judge_id = judge_identity(cfg, judge_dir)
    j = cfg.judge
    run_isolated(grade_responses, judge_spec(cfg, judge_dir), responses, str(out), isolate=j.engine == "vllm",
                 judge_id=judge_id, constrained=j.constrained, max_new_tokens=j.max_new_tokens,
                 batch_size=j.batch_size, agreement_samples=j.agreement_samples,
                 agreement_temperature=j.agreement_temperature, seed=cfg.seed, progress=cfg.progress_bar)

    judged = {r["key"]: r for r in read_jsonl(out / "judgments.jsonl") if r["judge"] == judge_id}
    names = [m.name for m in cfg.methods]
    kw = dict(samples=cfg.bootstrap_samples, confidence=cfg.confidence, seed=cfg.seed)
    rows = method_rows(responses, judged, judge_id, names, **kw)
    topic_rows = method_rows(responses, judged, judge_id, names, by_topic=True, **kw)
    judge = judge_stats(judged, read_jsonl(out / "agreement.jsonl"))
    runs = {}
    for run_dir in cfg.training_runs:
        from cdra_ray.driver.metrics import read_metrics

        records = read_metrics(Path(run_dir))
        if not records:
            raise FileNotFoundError(f"evaluate.training_runs: {run_dir} has no metrics.jsonl")
        runs[Path(run_dir).name] = records
    info.update(judge=judge_id)
    paths = write_report(out, rows, topic_rows, judge, info, runs)
    log.info("evaluation report in %s", out)
    return {"dir": out, "rows": rows, "paths": paths, "judge": judge}
