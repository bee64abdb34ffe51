"""Construction input: (preference, query) scenarios from three shapes, every record checked before any model loads.

- ``jsonl``: the project's JSONL (``{"id", "preference", "query"}``), read by :func:`cdra_ray.data.scenarios.
  load_scenarios` (which also takes the DeepPref field names).
- ``prefeval``: a raw PrefEval benchmark topic file (``benchmark_dataset/explicit_preference/<topic>.json``): one
  JSON array of ``{"preference", "question", "explanation"}``; ids are ``<file stem>/<index>``.
- ``deeppref``: the original DeepPref records (``user_profile``, ``initial_question``, optional ``thought_tree``
  {"0": root, id: {thought, reasoning, score, children}}), as a JSON array or JSONL. A record that carries a
  tree is imported as it is (its leaves are the final answers, each node's ``reasoning``/``score`` its critique
  and step score) and needs no model; the others are built like any scenario.

Errors are :class:`~cdra_ray.data.scenarios.ScenarioDataError` naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdra_ray.construction.search import path_steps
from cdra_ray.data.scenarios import ScenarioDataError, load_scenarios, resolve_data_path
from cdra_ray.messages import Scenario


def _json_items(file: Path) -> list[tuple[int, object]]:
    """(line number, value) of every element of a JSON array file, or of every line of a JSONL file."""
    text = file.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped.startswith("["):
        items = []
        for line_no, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    items.append((line_no, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ScenarioDataError(f"{file}:{line_no}: invalid JSON at column {err.colno}: {err.msg}") from None
        return items
    decoder, items = json.JSONDecoder(), []
    pos = len(text) - len(stripped) + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise ScenarioDataError(f"{file}: the JSON array is not closed")
        if text[pos] == "]":
            return items
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ScenarioDataError(f"{file}:{err.lineno}: invalid JSON at column {err.colno}: {err.msg}") from None
        items.append((text.count("\n", 0, pos) + 1, value))
        pos = end


def _text(record: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in record:
            value = record[key]
            if not isinstance(value, str) or not value.strip():
                raise ScenarioDataError(f"{where}: field {key!r} must be a non-empty string")
            return value.strip()
    raise ScenarioDataError(f"{where}: missing field {keys[0]!r} (accepted names: {list(keys)})")


def detect_format(file: Path) -> str:
    if file.suffix == ".jsonl":
        first = next((line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        return "deeppref" if '"thought_tree"' in first else "jsonl"
    head = file.read_text(encoding="utf-8")[:4000]
    return "deeppref" if ("user_profile" in head or "initial_question" in head) else "prefeval"


def load_inputs(path: str, fmt: str = "auto", max_scenarios: int | None = None, *,
                max_field_chars: int | None = None) -> list[tuple[Scenario, dict | None]]:
    """(scenario, imported tree record or None) in file order; ``max_field_chars`` as in ``load_scenarios``."""
    file = resolve_data_path(path)
    fmt = detect_format(file) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return [(s, None) for s in load_scenarios(file, max_scenarios, max_field_chars=max_field_chars)]
    out: list[tuple[Scenario, dict | None]] = []
    seen: dict[str, int] = {}
    for index, (line, record) in enumerate(_json_items(file)):
        where = f"{file}:{line}"
        if not isinstance(record, dict):
            raise ScenarioDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if fmt == "prefeval":
            preference, query = _text(record, ("preference",), where), _text(record, ("question", "query"), where)
        else:
            preference = _text(record, ("user_profile", "preference"), where)
            query = _text(record, ("initial_question", "query"), where)
        uid = str(record.get("id", f"{file.stem}/{index}"))
        if uid in seen:
            raise ScenarioDataError(f"{where}: duplicate id {uid!r} (first on line {seen[uid]})")
        seen[uid] = line
        scenario = Scenario(uid=uid, preference=preference, query=query, index=len(out))
        tree = record.get("thought_tree") if fmt == "deeppref" else None
        out.append((scenario, import_thought_tree(scenario, tree, where) if tree else None))
    if not out:
        raise ScenarioDataError(f"{file}: no scenarios")
    return out[:max_scenarios] if max_scenarios else out


def _score(node: dict, key: str, low: float, high: float, where: str) -> float | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ScenarioDataError(f"{where}: {key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def import_thought_tree(scenario: Scenario, tree: object, where: str) -> dict:
    """A DeepPref ``thought_tree`` as a trees.jsonl record: root "0"; every leaf is a path's final answer."""
    if not isinstance(tree, dict) or "0" not in tree:
        raise ScenarioDataError(f"{where}: thought_tree must be an object with a root node \"0\"")
    parent_of: dict[str, str] = {}
    for node_id, node in tree.items():
        here = f"{where}: thought_tree node {node_id!r}"
        if not isinstance(node, dict) or not isinstance(node.get("children", []), list):
            raise ScenarioDataError(f"{here}: expected an object with a list of children")
        if node_id != "0" and not (isinstance(node.get("thought"), str) and node["thought"].strip()):
            raise ScenarioDataError(f"{here}: missing or empty \"thought\"")
        for child in node.get("children", []):
            if str(child) not in tree:
                raise ScenarioDataError(f"{here}: child {child!r} is not a node of the tree")
            if str(child) in parent_of:
                raise ScenarioDataError(f"{here}: child {child!r} has two parents")
            parent_of[str(child)] = node_id

    def usable(node_id: str) -> bool:
        node = tree[node_id]
        return not node.get("pruned", False) and node.get("status", "ok") == "ok"

    ids = {node_id: k for k, node_id in enumerate((i for i in tree if i != "0"), start=1)}
    nodes, paths = [], []
    for node_id, k in ids.items():
        node, parent = tree[node_id], parent_of.get(node_id, "0")
        depth, up = 1, parent
        while up != "0":
            depth, up = depth + 1, parent_of.get(up, "0")
        nodes.append({"node_id": k, "parent": None if parent == "0" else ids[parent], "depth": depth,
                      "persona": str(node.get("persona", "")), "text": " ".join(node["thought"].split()),
                      "value_score": _score(node, "score", -1.0, 1.0, f"{where}: node {node_id!r}"),
                      "critique": str(node.get("reasoning", "")), "pruned": bool(node.get("pruned", False)),
                      "prune_reason": node.get("prune_reason"), "status": str(node.get("status", "ok"))})

    def walk(node_id: str, chain: list[str]) -> None:
        kids = [str(c) for c in tree[node_id].get("children", []) if usable(str(c))]
        if not kids and chain:
            *thought_ids, leaf = chain
            by_id = {n["node_id"]: n for n in nodes}
            thoughts = [by_id[ids[i]] for i in thought_ids]
            answer = by_id[ids[leaf]]
            nodes.remove(answer)  # an answer is a path's last step, not a thought of the tree
            paths.append({"node_ids": [n["node_id"] for n in thoughts], "final_answer": answer["text"],
                          "final_score": _score(tree[leaf], "final_score", 0.0, 100.0, f"{where}: node {leaf!r}"),
                          "final_critique": "", "steps": path_steps([n["text"] for n in thoughts], answer["text"]),
                          "step_scores": [n["value_score"] for n in thoughts] + [answer["value_score"]],
                          "step_critiques": [n["critique"] for n in thoughts] + [answer["critique"]]})
        for kid in kids:
            walk(kid, chain + [kid])

    walk("0", [])
    return {"id": scenario.uid, "preference": scenario.preference, "query": scenario.query, "nodes": nodes,
            "paths": paths, "usage": {"imported": 1}}
