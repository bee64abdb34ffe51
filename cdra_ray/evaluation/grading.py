"""Ask the judge every question about every response, appending each answer to ``judgments.jsonl``.

Order: the seven questions that need only the response, then PrefEval's hallucination check for the responses
whose acknowledgement check quoted a preference (it compares that quote with the user's preference). A judgment
is keyed by (judge, question, the exact texts shown): a rerun reuses every finished one, and a changed response
or judge is asked again. Afterwards ``agreement_samples`` finished judgments (a seeded draw) are asked once more,
at ``agreement_temperature``, into ``agreement.jsonl`` (the judge's self-agreement).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Sequence

from cdra_ray.evaluation import metrics as M
from cdra_ray.evaluation.generation import EngineSpec, read_jsonl
from cdra_ray.evaluation.prompts import QUESTION_SET

FIRST_PASS = tuple(q for q in M.QUESTIONS if q != M.PF_HALLUCINATION)


def judgment_key(judge_id: str, question: str, values: dict[str, str]) -> str:
    blob = json.dumps([judge_id, question, [values[f] for f in QUESTION_SET[question].fields]])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def response_values(record: dict) -> dict[str, str]:
    return {"preference": record["preference"], "query": record["query"], "response": record["response"]}


def answer_word(answer: bool | None) -> str | None:
    return None if answer is None else ("Yes" if answer else "No")


def plan_requests(responses: Sequence[dict], judged: dict[str, dict], judge_id: str
                  ) -> tuple[list[tuple[str, str, dict, dict]], list[tuple[str, str, dict, dict]]]:
    """(first-pass, hallucination-pass) requests still to ask: ``(key, question, values, response record)``.
    The hallucination pass lists only responses whose acknowledgement is already judged Yes."""
    first, second, planned = [], [], set()  # identical texts (two methods, same response) are asked once
    for r in responses:
        values = response_values(r)
        for q in FIRST_PASS:
            key = judgment_key(judge_id, q, values)
            if key not in judged and key not in planned:
                planned.add(key)
                first.append((key, q, values, r))
        ack = judged.get(judgment_key(judge_id, M.PF_ACKNOWLEDGE, values))
        if ack is not None and ack["answer"] == "Yes":
            hv = {"preference": r["preference"], "restatement": ack["explanation"]}
            key = judgment_key(judge_id, M.PF_HALLUCINATION, hv)
            if key not in judged and key not in planned:
                planned.add(key)
                second.append((key, M.PF_HALLUCINATION, hv, r))
    return first, second


def _record(key, question, response, judgment, judge_id) -> dict:
    return {"key": key, "judge": judge_id, "method": response["method"], "scenario_id": response["scenario_id"],
            "topic": response.get("topic", ""), "question": question, "answer": answer_word(judgment.answer),
            "parsed": judgment.answer is not None, "explanation": judgment.lead, "raw": judgment.raw,
            "attempts": judgment.attempts, "route": judgment.route}


def grade_responses(spec: EngineSpec, responses: Sequence[dict], out_dir: str, *, judge_id: str,
                    constrained: bool, max_new_tokens: int, batch_size: int, agreement_samples: int,
                    agreement_temperature: float, seed: int = 0, progress: bool = True) -> None:
    """Build the judge engine and ask what is missing (see the module docstring)."""
    from tqdm import tqdm

    from cdra_ray.evaluation.judging import YesNoJudge

    out = Path(out_dir)
    judgments_path, agreement_path = out / "judgments.jsonl", out / "agreement.jsonl"
    judged = {r["key"]: r for r in read_jsonl(judgments_path)}
    judge = None
    for pass_no in (1, 2):
        todo = plan_requests(responses, judged, judge_id)[pass_no - 1]
        if not todo:
            continue
        judge = judge or YesNoJudge(spec.build(), constrained=constrained, max_new_tokens=max_new_tokens, seed=seed)
        bar = tqdm(total=len(todo), desc=f"judge pass {pass_no}", disable=not progress)
        with open(judgments_path, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                answers = judge.ask([(q, v) for _, q, v, _ in batch])
                for (key, q, _, r), judgment in zip(batch, answers):
                    judged[key] = _record(key, q, r, judgment, judge_id)
                    f.write(json.dumps(judged[key]) + "\n")
                f.flush()
                bar.update(len(batch))
        bar.close()

    # self-agreement: re-ask a seeded sample of finished, parsed judgments
    done_agree = {r["key"] for r in read_jsonl(agreement_path)}
    values_of = {}
    for r in responses:
        values = response_values(r)
        for q in FIRST_PASS:
            values_of[judgment_key(judge_id, q, values)] = (q, values)
    pool = sorted(k for k, r in judged.items() if r["parsed"] and k in values_of)
    sample = random.Random(seed).sample(pool, min(agreement_samples, len(pool)))
    todo = [k for k in sample if k not in done_agree]
    if todo:
        judge = judge or YesNoJudge(spec.build(), constrained=constrained, max_new_tokens=max_new_tokens, seed=seed)
        again = judge.ask([values_of[k] for k in todo], temperature=agreement_temperature)
        with open(agreement_path, "a", encoding="utf-8") as f:
            for key, judgment in zip(todo, again):
                f.write(json.dumps({"key": key, "question": values_of[key][0], "first": judged[key]["answer"],
                                    "second": answer_word(judgment.answer)}) + "\n")
