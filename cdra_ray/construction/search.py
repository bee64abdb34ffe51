"""Build one scenario's tree with the council, then annotate every surviving path step by step.

The search (paper App. E): each persona proposes one first-step hypothesis; every new thought is scored by the
value judge; thoughts under ``prune_threshold`` are pruned, and of the rest the ``beam_width`` best of each
depth are expanded by ``branching`` follow-up thoughts, each written by the next persona of the council in turn
(so greedy decoding still yields distinct thoughts, and "survival by persona" means something). Each surviving
path gets a final answer and a holistic 0-100 score; then every step of every path, the answer being the last
step, gets a critique and a score from the evaluator with the reward service's step-critique prompt
(``reuse_value_critique``: the value judge's critiques instead, and the holistic score mapped onto [-1, 1]
for the answer step).

Step texts are stored as the step segmenter cuts them out of the rendered response ("Step k: ..."), which is
exactly what the reward service hands the critic at training time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cdra_ray.algorithms.steps import step_texts
from cdra_ray.config.construct import ConstructConfig, Persona
from cdra_ray.construction.backend import CouncilBackend, ProposeRequest
from cdra_ray.construction.tree import ThoughtNode, ThoughtTree, apply_threshold, select_beam
from cdra_ray.data.prompts import render_step_response
from cdra_ray.messages import Scenario


@dataclass(frozen=True)
class SearchSettings:
    personas: tuple[Persona, ...]
    branching: int = 2
    depth: int = 3
    beam_width: int = 3
    prune_threshold: float = 0.1
    reuse_value_critique: bool = False

    @classmethod
    def from_config(cls, c: ConstructConfig) -> SearchSettings:
        return cls(personas=tuple(Persona(p.name, p.role) for p in c.personas), branching=c.branching,
                   depth=c.depth, beam_width=c.beam_width, prune_threshold=c.prune_threshold,
                   reuse_value_critique=c.reuse_value_critique)


def path_steps(thoughts: list[str], answer: str) -> list[str]:
    """The steps of a path as the segmenter cuts them from its rendered response (answer = last step)."""
    steps = [s.strip() for s in step_texts(render_step_response([*thoughts, answer]))]
    if len(steps) != len(thoughts) + 1:  # clean_thought folds every reply onto one line, so this cannot happen
        raise RuntimeError(f"a rendered path of {len(thoughts) + 1} steps segments into {len(steps)} steps")
    return steps


def hundred_to_unit(score: float) -> float:
    """A 0-100 holistic score on the step scale [-1, 1] (linear: 0 -> -1, 50 -> 0, 100 -> 1)."""
    return round(score / 50.0 - 1.0, 4)


class CouncilSearch:
    def __init__(self, backend: CouncilBackend, settings: SearchSettings):
        if not settings.personas:
            raise ValueError("the council needs at least one persona")
        self.backend, self.s = backend, settings
        self._persona_index = {p.name: k for k, p in enumerate(settings.personas)}

    # ------------------------------------------------------------------ the tree
    def _add_judged(self, scenario: Scenario, tree: ThoughtTree, parents: list[ThoughtNode | None],
                    personas: list[Persona]) -> list[ThoughtNode]:
        """Propose one thought per (parent, persona), add them all, and value-judge the usable ones."""
        requests = [ProposeRequest(p, tuple(n.text for n in tree.chain(parent.node_id)) if parent else ())
                    for parent, p in zip(parents, personas)]
        texts = self.backend.propose(scenario, requests)
        nodes = [tree.add(parent.node_id if parent else None, persona.name, text or "",
                          "ok" if text else "unusable")
                 for parent, persona, text in zip(parents, personas, texts)]
        usable = [n for n in nodes if n.status == "ok"]
        items = [([c.text for c in tree.chain(n.node_id)[:-1]], n.text) for n in usable]
        for node, judgement in zip(usable, self.backend.judge_values(scenario, items) if usable else []):
            if judgement is None:
                node.status = "unusable"
            else:
                node.value_score, node.critique = judgement.score, judgement.critique
        return nodes

    def grow(self, scenario: Scenario) -> ThoughtTree:
        tree = ThoughtTree()
        council = list(self.s.personas)
        nodes = self._add_judged(scenario, tree, [None] * len(council), council)
        frontier = select_beam(apply_threshold(nodes, self.s.prune_threshold), self.s.beam_width)
        for _ in range(2, self.s.depth + 1):
            if not frontier:
                break
            parents, personas = [], []
            for parent in frontier:
                first = self._persona_index.get(parent.persona, -1) + 1
                for b in range(self.s.branching):
                    parents.append(parent)
                    personas.append(council[(first + b) % len(council)])
            nodes = self._add_judged(scenario, tree, parents, personas)
            frontier = select_beam(apply_threshold(nodes, self.s.prune_threshold), self.s.beam_width)
        return tree

    # ------------------------------------------------------------------ paths
    def build(self, scenario: Scenario) -> dict:
        """The trees.jsonl record of one scenario (see CONTRACTS: id, preference, query, nodes, paths) plus
        ``usage`` (calls, tokens, seconds, retries, unusable replies of this scenario)."""
        start = time.perf_counter()
        tree = self.grow(scenario)
        leaf_paths = tree.leaf_paths()
        thoughts = [[tree.nodes[i].text for i in ids] for ids in leaf_paths]
        answers = self.backend.answer(scenario, thoughts) if leaf_paths else []
        kept = [k for k, a in enumerate(answers) if a]
        finals = self.backend.judge_finals(scenario, [(thoughts[k], answers[k]) for k in kept]) if kept else []
        paths = []
        for k, final in zip(kept, finals):
            paths.append({"node_ids": leaf_paths[k], "final_answer": answers[k],
                          "final_score": final.score if final else None,
                          "final_critique": final.critique if final else "",
                          "steps": path_steps(thoughts[k], answers[k])})
        self._annotate(scenario, tree, paths)
        usage = self.backend.usage
        usage["paths_unusable_answer"] += len(leaf_paths) - len(kept)
        usage["seconds"] += time.perf_counter() - start
        return {"id": scenario.uid, "preference": scenario.preference, "query": scenario.query,
                "nodes": tree.records(), "paths": paths, "usage": dict(usage)}

    def _annotate(self, scenario: Scenario, tree: ThoughtTree, paths: list[dict]) -> None:
        """step_scores / step_critiques of every path, one entry per step (the answer is the last step)."""
        if self.s.reuse_value_critique:
            for path in paths:
                nodes = [tree.nodes[i] for i in path["node_ids"]]
                answer_score = hundred_to_unit(path["final_score"]) if path["final_score"] is not None else None
                path["step_scores"] = [n.value_score for n in nodes] + [answer_score]
                path["step_critiques"] = [n.critique for n in nodes] + [path["final_critique"]]
            return
        prefixes: dict[tuple[str, ...], int] = {}  # paths share their first steps: ask once per distinct prefix
        for path in paths:
            for j in range(1, len(path["steps"]) + 1):
                prefixes.setdefault(tuple(path["steps"][:j]), len(prefixes))
        keys = list(prefixes)
        judgements = self.backend.critique_steps(scenario, [list(k) for k in keys]) if keys else []
        for path in paths:
            found = [judgements[prefixes[tuple(path["steps"][:j])]] for j in range(1, len(path["steps"]) + 1)]
            path["step_scores"] = [j.score if j else None for j in found]
            path["step_critiques"] = [j.critique if j else "" for j in found]
