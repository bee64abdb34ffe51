"""Construction: tree logic, the council search and the derived records on deterministic fake backends."""

import json
from collections import Counter

import pytest

from cdra_ray.algorithms.steps import step_texts
from cdra_ray.config.construct import default_personas
from cdra_ray.construction.backend import Judgement
from cdra_ray.construction.inputs import import_thought_tree
from cdra_ray.construction.records import check_response_format, d_rea_records, d_rft_record, to_thought_tree
from cdra_ray.construction.search import CouncilSearch, SearchSettings, hundred_to_unit
from cdra_ray.construction.tree import ThoughtTree, apply_threshold, best_and_worst, path_score, select_beam
from cdra_ray.data.prompts import render_step_response
from cdra_ray.messages import Scenario

SCENARIO = Scenario(uid="s/1", preference="I avoid crowded places.", query="Where should I go this weekend?")
PERSONAS = tuple(default_personas())  # Sociologist, Psychologist, Pragmatist, Pedagogue, Contrarian
# value of a thought by the persona that wrote it; Contrarian's replies cannot be judged (None)
VALUE = {"Sociologist": 0.9, "Psychologist": 0.5, "Pragmatist": 0.1, "Pedagogue": 0.05, "Contrarian": None}


class FakeBackend:
    """Deterministic council: thought text names persona and depth; values from VALUE; answers echo the path."""

    def __init__(self, step_score=lambda steps: 0.1 * len(steps), final=lambda t, a: 10.0 * len(t), bad_answer=()):
        self.usage = Counter()
        self.step_score, self.final, self.bad_answer = step_score, final, bad_answer
        self.calls = Counter()
        self.step_requests = []

    def propose(self, scenario, requests):
        self.calls["propose"] += 1
        return [f"{r.persona.name} thinks at depth {len(r.thoughts) + 1}" for r in requests]

    def judge_values(self, scenario, items):
        out = []
        for earlier, new in items:
            value = VALUE[new.split()[0]]
            out.append(None if value is None else Judgement(value, f"value of {new}"))
        return out

    def answer(self, scenario, paths):
        return [None if len(p) in self.bad_answer else f"answer after {len(p)} thoughts" for p in paths]

    def judge_finals(self, scenario, items):
        return [Judgement(self.final(t, a), f"final for {len(t)}") for t, a in items]

    def critique_steps(self, scenario, step_lists):
        self.step_requests += [list(s) for s in step_lists]
        return [Judgement(self.step_score(s), f"critique of step {len(s)}") for s in step_lists]


def search(**overrides):
    settings = dict(personas=PERSONAS, branching=2, depth=2, beam_width=2, prune_threshold=0.1)
    settings.update(overrides)
    backend = overrides.pop("backend", None) or FakeBackend()
    settings.pop("backend", None)
    return CouncilSearch(backend, SearchSettings(**settings)), backend


# ------------------------------------------------------------------------------------------ pure tree logic
def test_threshold_keeps_a_score_equal_to_it_and_skips_unusable():
    tree = ThoughtTree()
    nodes = [tree.add(None, "a", f"t{k}") for k in range(4)]
    for node, score in zip(nodes, (0.1, 0.0999, 0.5, None)):
        node.value_score = score
    nodes[3].status = "unusable"
    kept = apply_threshold(nodes, 0.1)
    assert [n.node_id for n in kept] == [1, 3]
    assert (nodes[1].pruned, nodes[1].prune_reason) == (True, "threshold")
    assert not nodes[3].pruned  # unusable is its own status, not a pruning


def test_beam_keeps_the_best_and_breaks_ties_by_age():
    tree = ThoughtTree()
    nodes = [tree.add(None, "a", f"t{k}") for k in range(4)]
    for node, score in zip(nodes, (0.3, 0.7, 0.3, 0.2)):
        node.value_score = score
    kept = select_beam(nodes, 2)
    assert [n.node_id for n in kept] == [1, 2]  # 0.7 and the older of the two 0.3s
    assert [(n.pruned, n.prune_reason) for n in nodes[2:]] == [(True, "beam"), (True, "beam")]


def test_a_pruned_node_cannot_be_expanded():
    tree = ThoughtTree()
    node = tree.add(None, "a", "t")
    node.pruned = True
    with pytest.raises(ValueError, match="cannot be expanded"):
        tree.add(node.node_id, "a", "child")


def test_path_scores_and_best_worst():
    assert path_score([0.5, 0.25, None], 80, "step_sum") is None
    assert path_score([0.5, 0.25, -0.25], 80, "step_sum") == pytest.approx(0.5)
    assert path_score([0.5, 0.25, -0.25], 80, "step_mean") == pytest.approx(0.5 / 3)
    assert path_score([None], 80, "final_score") == 80
    # ties on the score go to the higher holistic score, then to the lower index
    assert best_and_worst([1.0, 2.0, 2.0, None, -1.0], [50, 60, 70, 99, 10]) == (2, 4)
    assert best_and_worst([1.0, 1.0], [None, None]) == (0, 1)
    assert best_and_worst([None, 3.0]) == (1, None)
    assert best_and_worst([None]) == (None, None)


# ------------------------------------------------------------------------------------------ the council search
def test_expansion_pruning_beam_and_paths_give_the_expected_tree():
    council, backend = search()
    record = council.build(SCENARIO)
    nodes = {n["node_id"]: n for n in record["nodes"]}
    # depth 1, one per persona: Soc 0.9, Psy 0.5, Prag 0.1 (= threshold: kept), Ped 0.05 (pruned), Con unusable
    assert [(n["persona"], n["pruned"], n["prune_reason"], n["status"]) for n in list(nodes.values())[:5]] == [
        ("Sociologist", False, None, "ok"), ("Psychologist", False, None, "ok"),
        ("Pragmatist", True, "beam", "ok"), ("Pedagogue", True, "threshold", "ok"),
        ("Contrarian", False, None, "unusable")]
    assert nodes[5]["value_score"] is None
    # depth 2: the next two personas after each parent's: Soc -> Psy, Prag; Psy -> Prag, Ped
    depth2 = [(n["parent"], n["persona"], n["value_score"], n["prune_reason"]) for n in nodes.values()
              if n["depth"] == 2]
    assert depth2 == [(1, "Psychologist", 0.5, None), (1, "Pragmatist", 0.1, None),
                      (2, "Pragmatist", 0.1, "beam"), (2, "Pedagogue", 0.05, "threshold")]
    # surviving paths: Soc->Psy, Soc->Prag, and Psy alone (all its children were pruned)
    assert [p["node_ids"] for p in record["paths"]] == [[1, 6], [1, 7], [2]]
    assert backend.calls["propose"] == 2


def test_steps_are_the_segments_of_the_rendered_response_and_prefixes_are_asked_once():
    council, backend = search()
    record = council.build(SCENARIO)
    for path in record["paths"]:
        thoughts = [next(n["text"] for n in record["nodes"] if n["node_id"] == i) for i in path["node_ids"]]
        response = render_step_response([*thoughts, path["final_answer"]])
        assert path["steps"] == [s.strip() for s in step_texts(response)]
        assert path["steps"][-1] == f"Step {len(thoughts) + 1}: {path['final_answer']}"
        assert path["step_scores"] == [pytest.approx(0.1 * j) for j in range(1, len(path["steps"]) + 1)]
    # prefixes: [1], [1,6], [1,6,a], [1,7], [1,7,a], [2], [2,a] -> 7 distinct requests, not 8
    assert len(backend.step_requests) == 7
    assert len({tuple(s) for s in backend.step_requests}) == 7


def test_reuse_value_critique_takes_value_scores_and_maps_the_final_score():
    council, backend = search(reuse_value_critique=True)
    record = council.build(SCENARIO)
    assert backend.step_requests == []
    first = record["paths"][0]
    assert first["step_scores"] == [0.9, 0.5, hundred_to_unit(20.0)]  # final judge gives 10 per thought
    assert hundred_to_unit(20.0) == pytest.approx(-0.6)
    assert first["step_critiques"][0] == "value of Sociologist thinks at depth 1"


def test_a_path_whose_answer_is_unusable_is_dropped_and_counted():
    council, backend = search(backend=FakeBackend(bad_answer=(1,)))
    record = council.build(SCENARIO)
    assert [p["node_ids"] for p in record["paths"]] == [[1, 6], [1, 7]]
    assert record["usage"]["paths_unusable_answer"] == 1


# ------------------------------------------------------------------------------------------ records
def test_d_rea_and_d_rft_records():
    council, _ = search(backend=FakeBackend(step_score=lambda s: 0.5 if "Pragmatist" in s[-1] else 0.1))
    tree = council.build(SCENARIO)
    rea = d_rea_records(tree)
    assert len(rea) == sum(len(p["steps"]) for p in tree["paths"]) == 8
    assert rea[1]["id"] == "s/1/p0/s2" and rea[1]["steps"] == tree["paths"][0]["steps"][:2]
    assert {r["scenario_id"] for r in rea} == {"s/1"}
    rft = d_rft_record(tree, "step_sum")
    # sums: [1,6]+a = 0.3, [1,7]+a = 0.1+0.5+0.1 = 0.7, [2]+a = 0.2 -> best path 1, worst path 2
    assert rft["path_score"] == pytest.approx(0.7) and rft["rejected_score"] == pytest.approx(0.2)
    assert rft["response"] == "\n".join(tree["paths"][1]["steps"])
    assert rft["rejected_response"] == "\n".join(tree["paths"][2]["steps"])
    check_response_format(rft)
    # by holistic score instead: 10 per thought -> the two-thought paths tie at 20; the lower index wins
    by_final = d_rft_record(tree, "final_score")
    assert by_final["response"] == "\n".join(tree["paths"][0]["steps"]) and by_final["path_score"] == 20.0


def test_a_step_without_critique_gives_no_d_rea_record_and_no_best_path():
    council, _ = search(backend=FakeBackend(step_score=lambda s: 0.1))
    tree = council.build(SCENARIO)
    for path in tree["paths"]:
        path["step_scores"][0] = None
    assert all(not r["id"].endswith("/s1") for r in d_rea_records(tree))
    assert d_rft_record(tree, "step_sum") is None
    assert d_rft_record(tree, "final_score") is not None


def test_deeppref_export_shape_and_round_trip():
    council, _ = search()
    tree = council.build(SCENARIO)
    exported = to_thought_tree(tree)
    assert exported["user_profile"] == SCENARIO.preference and exported["initial_question"] == SCENARIO.query
    nodes = exported["thought_tree"]
    assert nodes["0"]["children"] == [1, 2, 3, 4, 5]  # every first-step thought, pruned ones too
    assert set(nodes["1"]) >= {"thought", "reasoning", "score", "children"}
    answers = [k for k, n in nodes.items() if n.get("is_answer")]
    assert len(answers) == len(tree["paths"]) == 3
    json.dumps(exported)  # plain JSON
    back = import_thought_tree(SCENARIO, json.loads(json.dumps(nodes)), "export")
    assert [p["steps"] for p in back["paths"]] == [p["steps"] for p in tree["paths"]]
    assert [p["step_scores"] for p in back["paths"]] == [p["step_scores"] for p in tree["paths"]]
    assert [p["final_score"] for p in back["paths"]] == [p["final_score"] for p in tree["paths"]]
