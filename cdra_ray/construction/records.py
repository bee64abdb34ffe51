"""From one scenario's tree record to the training sets and the DeepPref export (pure functions).

- :func:`d_rea_records`: one Pers-GenPRM example per (path, step j): (P, q, steps 1..j) -> critique, score.
  Steps whose critique could not be obtained are left out (never a made-up score).
- :func:`d_rft_record`: the best path (``best_path_by``, the paper's sum of step scores by default) rendered in
  the policy's step format, and the worst surviving path as the rejected response for a pairwise reward model.
- :func:`to_thought_tree`: the original DeepPref shape {"user_profile", "initial_question", "thought_tree":
  {"0": root, "1": {...}}} with each node's ``thought``, ``reasoning``, ``score``, ``children`` (the step critique
  and score where the node lies on a surviving path, else the value judge's; ``value_score`` too); pruned
  and unusable nodes are kept (with ``pruned`` / ``status``), each final answer is a leaf under its path.
"""

from __future__ import annotations

from cdra_ray.construction.tree import best_and_worst, path_score
from cdra_ray.data.prompts import render_step_response


def d_rea_records(tree: dict) -> list[dict]:
    out = []
    for p, path in enumerate(tree["paths"]):
        for j, (score, critique) in enumerate(zip(path["step_scores"], path["step_critiques"]), start=1):
            if score is None or not critique:
                continue
            out.append({"id": f"{tree['id']}/p{p}/s{j}", "scenario_id": tree["id"],
                        "preference": tree["preference"], "query": tree["query"],
                        "steps": path["steps"][:j], "critique": critique, "score": float(score)})
    return out


def d_rft_record(tree: dict, best_path_by: str) -> dict | None:
    """None when no path has every score ``best_path_by`` needs."""
    paths = tree["paths"]
    scores = [path_score(p["step_scores"], p["final_score"], best_path_by) for p in paths]
    best, worst = best_and_worst(scores, [p["final_score"] for p in paths])
    if best is None:
        return None
    chosen = paths[best]
    rejected = paths[worst] if worst is not None else None
    return {
        "id": tree["id"], "preference": tree["preference"], "query": tree["query"],
        "steps": chosen["steps"], "final_answer": chosen["final_answer"],
        "response": render_response(chosen), "path_score": scores[best],
        "rejected_response": render_response(rejected) if rejected else None,
        "rejected_score": scores[worst] if rejected else None,
    }


def render_response(path: dict) -> str:
    """The path as the policy would write it; ``path["steps"]`` are its segments, so the two agree."""
    text = "\n".join(path["steps"])
    nodes_plus_answer = len(path["node_ids"]) + 1
    if len(path["steps"]) != nodes_plus_answer:
        raise ValueError(f"path has {len(path['steps'])} steps for {nodes_plus_answer} thoughts + answer")
    return text


def to_thought_tree(tree: dict) -> dict:
    # a node's step annotation depends only on its chain, so every path through it gives the same one
    annotated = {i: (path["step_scores"][j], path["step_critiques"][j])
                 for path in tree["paths"] for j, i in enumerate(path["node_ids"])}
    nodes = {0: {"thought": tree["query"], "reasoning": "", "score": None, "children": []}}
    for n in tree["nodes"]:
        score, reasoning = annotated.get(n["node_id"], (n["value_score"], n["critique"]))
        nodes[n["node_id"]] = {"thought": n["text"], "reasoning": reasoning, "score": score,
                               "value_score": n["value_score"], "persona": n["persona"], "pruned": n["pruned"],
                               "status": n["status"], "children": []}
        nodes[n["parent"] or 0]["children"].append(n["node_id"])
    next_id = max(nodes) + 1
    for path in tree["paths"]:  # the answer is the path's last step: its step score and critique, as in Fig. 16
        nodes[next_id] = {"thought": path["final_answer"], "reasoning": path["step_critiques"][-1],
                          "score": path["step_scores"][-1], "final_score": path["final_score"], "is_answer": True,
                          "children": []}
        nodes[path["node_ids"][-1] if path["node_ids"] else 0]["children"].append(next_id)
        next_id += 1
    return {"id": tree["id"], "user_profile": tree["preference"], "initial_question": tree["query"],
            "thought_tree": {str(k): v for k, v in sorted(nodes.items())}}


def check_response_format(record: dict) -> None:
    """The RFT response must be what :func:`render_step_response` makes of its steps (guards against drift)."""
    plain = [s.split(":", 1)[1].strip() for s in record["steps"]]
    if render_step_response(plain) != record["response"]:
        raise ValueError(f"d_rft record {record['id']}: response does not match the policy's step format")
