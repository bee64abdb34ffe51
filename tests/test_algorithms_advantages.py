"""Advantage estimators: hand-derived cases, invariances, loop-vs-vectorised equivalence, bad input."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch

from cdra_ray.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    register_advantage_estimator,
    zero_advantage_rate,
)

T, F = True, False


def _approx(x):
    return pytest.approx(x, abs=1e-6)


# ----------------------------------------------------------------------------------------------- hand cases
def test_grpo_single_step_outcome():
    r = torch.tensor([[1.0], [0.0], [2.0]])
    sm = torch.ones(3, 1, dtype=torch.bool)
    ts = torch.zeros(3, 2, dtype=torch.long)
    tm = torch.tensor([[T, T], [T, F], [T, T]])
    adv = compute_advantages("grpo", r, sm, ts, tm, eps=0.0)
    # mean 1; deviations 0, -1, 1; unbiased var (0 + 1 + 1) / 2 = 1 -> std 1 -> A = 0, -1, 1 (padding 0)
    assert adv.tolist() == [[0.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]
    adv = compute_advantages("grpo", r, sm, ts, tm)  # default eps 1e-6: 1 / (1 + 1e-6)
    assert adv[2, 0].item() == _approx(1 / (1 + 1e-6))


def test_grpo_sums_steps_into_dense_reward():
    r = torch.tensor([[0.5, 0.5], [1.0, -1.0], [0.2, 99.0]])
    sm = torch.tensor([[T, T], [T, T], [T, F]])  # 99 is padding and must not count
    ts = torch.tensor([[0, 1], [0, 1], [0, 0]])
    tm = torch.ones(3, 2, dtype=torch.bool)
    adv = compute_advantages("grpo", r, sm, ts, tm, eps=0.0)
    # R = [1.0, 0.0, 0.2]; mean 0.4; dev 0.6, -0.4, -0.2; var (0.36 + 0.16 + 0.04) / 2 = 0.28; std 0.529150
    std = math.sqrt(0.28)
    assert adv[:, 0].tolist() == _approx([0.6 / std, -0.4 / std, -0.2 / std])  # 1.133893, -0.755929, -0.377964
    assert (adv[:, 0:1] == adv).all()  # broadcast over tokens
    # scale=False (Dr. GRPO / TRL scale_rewards="none"): R - mean = 0.6, -0.4, -0.2
    assert compute_advantages("grpo", r, sm, ts, tm, scale=False)[:, 0].tolist() == _approx([0.6, -0.4, -0.2])


def test_process_future_hand_case():
    r = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    sm = torch.tensor([[T, T, T], [T, T, F]])
    ts = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 0]])
    tm = torch.tensor([[T, T, T, T], [T, T, T, F]])
    adv = compute_advantages("process_future", r, sm, ts, tm, eps=0.0)
    # valid steps [1, 0, 1, 0, 0]: mean 0.4; dev .6 -.4 .6 -.4 -.4; var (3*.16 + 2*.36) / 4 = 0.3
    hi, lo = 0.6 / math.sqrt(0.3), -0.4 / math.sqrt(0.3)  # r~ = 1.095445 for a 1, -0.730297 for a 0
    # row 0 future sums: step0 hi+lo+hi = 1.460593, step1 lo+hi = 0.365148, step2 hi = 1.095445
    # row 1: step0 lo+lo = -1.460593, step1 lo = -0.730297
    assert adv.tolist()[0] == _approx([2 * hi + lo, 2 * hi + lo, hi + lo, hi])
    assert adv.tolist()[1] == _approx([2 * lo, lo, lo, 0.0])


# Shared group for cdpa: lengths 4, 2, 3.
CDPA_R = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 1.0]])
CDPA_SM = torch.tensor([[T, T], [T, F], [T, T]])
CDPA_TS = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0]])
CDPA_TM = torch.tensor([[T, T, T, T], [T, T, F, F], [T, T, T, F]])
# token rewards r_{i,t}: row0 [1, 1, 0, 0], row1 [0, 0, -, -], row2 [0.5, 1, 1, -]


def test_cdpa_position_hand_case():
    adv = compute_advantages("cdpa", CDPA_R, CDPA_SM, CDPA_TS, CDPA_TM, eps=0.0)
    s3 = 1 / math.sqrt(3)  # 0.577350
    # t=0: [1, 0, .5] mean .5, dev .5 -.5 0, var .5/2 = .25, std .5 -> 1, -1, 0
    # t=1: [1, 0, 1] mean 2/3, dev 1/3 -2/3 1/3, var (6/9)/2 = 1/3, std .57735 -> .57735, -1.1547, .57735
    # t=2: [0, -, 1] mean .5, dev -.5 .5, var .5/1 = .5, std .70711 -> -.70711, .70711 (row1 has no token)
    # t=3: [0, -, -] one response -> std 0 -> A = 0
    assert adv.tolist() == [
        _approx([1.0, s3, -math.sqrt(0.5), 0.0]),
        _approx([-1.0, -2 * s3, 0.0, 0.0]),
        _approx([0.0, s3, math.sqrt(0.5), 0.0]),
    ]


def test_cdpa_position_pads_count_reproduces_paper_code():
    adv = compute_advantages("cdpa", CDPA_R, CDPA_SM, CDPA_TS, CDPA_TM, eps=0.0, pads_count=True)
    s3 = 1 / math.sqrt(3)
    # t=0, t=1: no padding, unchanged. t=2: [0, 0(pad), 1] mean 1/3, dev -1/3 -1/3 2/3, var (6/9)/2 = 1/3,
    # std .57735 -> row0 -.57735, row2 1.1547 (row1 masked -> 0). t=3: [0, 0(pad), 0(pad)] all equal -> 0
    assert adv.tolist() == [
        _approx([1.0, s3, -s3, 0.0]),
        _approx([-1.0, -2 * s3, 0.0, 0.0]),
        _approx([0.0, s3, 2 * s3, 0.0]),
    ]


def test_cdpa_pooled_hand_case():
    adv = compute_advantages("cdpa", CDPA_R, CDPA_SM, CDPA_TS, CDPA_TM, eps=0.0, normalize="pooled")
    # 9 tokens [1,1,0,0, 0,0, .5,1,1]: sum 4.5, mean .5; dev ±.5 except the .5 token; var 8*.25/8 = .25, std .5
    assert adv.tolist() == [
        _approx([1.0, 1.0, -1.0, -1.0]),
        _approx([-1.0, -1.0, 0.0, 0.0]),
        _approx([0.0, 1.0, 1.0, 0.0]),
    ]


def test_equal_rewards_give_exact_zeros_and_zero_rate():
    # 0.1 three times: mean(0.1, 0.1, 0.1) is not exactly 0.1 in floating point; the result must still be 0.0
    r = torch.full((3, 1), 0.1)
    sm = torch.ones(3, 1, dtype=torch.bool)
    ts = torch.zeros(3, 2, dtype=torch.long)
    tm = torch.ones(3, 2, dtype=torch.bool)
    flat = [compute_advantages(n, r, sm, ts, tm, **o) for n, o in [("grpo", {}), ("process_future", {}),
                                                                   ("cdpa", {}), ("cdpa", {"normalize": "pooled"})]]
    assert all((a == 0).all() for a in flat)
    varied = compute_advantages("grpo", torch.tensor([[0.1], [0.2], [0.3]]), sm, ts, tm)
    # groups: all-zero, all-zero, varied, all-zero -> 3 of 4
    assert zero_advantage_rate([flat[0], flat[2], varied, flat[3]], [tm] * 4) == 0.75
    assert zero_advantage_rate([varied], [torch.zeros_like(tm)]) == 1.0  # no valid token: vacuously zero
    assert zero_advantage_rate([varied * 1e-9], [tm], atol=1e-6) == 1.0


def test_registry_and_custom_estimator():
    assert {"grpo", "process_future", "cdpa"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda *a, **k: None)

    @register_advantage_estimator("test_constant_one")
    def _one(step_rewards, step_mask, token_steps, token_mask, *, eps, value: float = 1.0):
        return torch.full(token_steps.shape, value, dtype=step_rewards.dtype)

    try:
        adv = compute_advantages("test_constant_one", CDPA_R, CDPA_SM, CDPA_TS, CDPA_TM, value=2.0)
        assert adv.tolist() == [[2.0] * 4, [2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0]]  # masked -> 0
    finally:
        del ADVANTAGE_ESTIMATORS["test_constant_one"]


# ----------------------------------------------------------------------------------------------- naive loop
def _naive(name, r, sm, ts, tm, eps, normalize="position", pads_count=False, scale=True):
    """Python-float loop implementation of every estimator (the reference for the vectorised code)."""
    G, C = ts.shape
    r, sm, ts, tm = r.tolist(), sm.tolist(), ts.tolist(), tm.tolist()

    def norm(values):
        if len(values) <= 1 or max(values) == min(values):
            return [0.0] * len(values)
        mu, sd = statistics.fmean(values), statistics.stdev(values)
        return [(v - mu) / (sd + eps) for v in values]

    out = [[0.0] * C for _ in range(G)]
    if name == "grpo":
        totals = [sum(r[i][j] for j in range(len(r[i])) if sm[i][j]) for i in range(G)]
        if scale:
            a = norm(totals)
        else:
            mu = statistics.fmean(totals)
            a = [0.0] * G if max(totals) == min(totals) else [x - mu for x in totals]
        for i in range(G):
            for t in range(C):
                if tm[i][t]:
                    out[i][t] = a[i]
    elif name == "process_future":
        cells = [(i, j) for i in range(G) for j in range(len(r[i])) if sm[i][j]]
        normed = dict(zip(cells, norm([r[i][j] for i, j in cells])))
        for i in range(G):
            for t in range(C):
                if tm[i][t]:
                    out[i][t] = sum(v for (ii, j), v in normed.items() if ii == i and j >= ts[i][t])
    elif name == "cdpa" and normalize == "pooled":
        cells = [(i, t) for i in range(G) for t in range(C) if tm[i][t]]
        for (i, t), v in zip(cells, norm([r[i][ts[i][t]] for i, t in cells])):
            out[i][t] = v
    elif name == "cdpa":
        for t in range(C):
            rows = [i for i in range(G) if tm[i][t] or pads_count]
            values = [r[i][ts[i][t]] if tm[i][t] else 0.0 for i in rows]
            for i, v in zip(rows, norm(values)):
                if tm[i][t]:
                    out[i][t] = v
    return torch.tensor(out, dtype=torch.float64)


def _random_group(seed: int):
    """A ragged random group: G in 2..6, steps 1..4 per response, lengths 0..9 tokens, non-decreasing steps."""
    g = torch.Generator().manual_seed(seed)
    G = int(torch.randint(2, 7, (1,), generator=g))
    S, C = 4, 9
    n_steps = torch.randint(1, S + 1, (G,), generator=g)
    lengths = torch.randint(0, C + 1, (G,), generator=g)
    # coarse rewards so that ties (and all-equal groups) happen too
    r = (torch.randint(-2, 3, (G, S), generator=g).float() / 2)
    if seed % 7 == 0:
        r = torch.full((G, S), 0.5)
    sm = torch.arange(S)[None] < n_steps[:, None]
    tm = torch.arange(C)[None] < lengths[:, None]
    ts = torch.zeros(G, C, dtype=torch.long)
    for i in range(G):
        cuts = torch.sort(torch.randint(0, int(n_steps[i]), (C,), generator=g)).values
        ts[i] = cuts
    r = torch.where(sm, r, torch.tensor(float("nan")))  # padding is NaN: must never leak
    ts = torch.where(tm, ts, torch.full_like(ts, 77))  # padding points nowhere: must never be read
    return r, sm, ts, tm


SETTINGS = [("grpo", {}), ("grpo", {"scale": False}), ("process_future", {}), ("cdpa", {}),
            ("cdpa", {"normalize": "pooled"}), ("cdpa", {"pads_count": True})]


@pytest.mark.parametrize("name, options", SETTINGS)
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1])
def test_loop_vs_vectorised(name, options, eps):
    for seed in range(40):
        r, sm, ts, tm = _random_group(seed)
        fast = compute_advantages(name, r.double(), sm, ts, tm, eps=eps, **options)
        slow = _naive(name, r, sm, ts, tm, eps, **options)
        assert torch.allclose(fast, slow, atol=1e-10, rtol=0), (seed, fast, slow)
        assert torch.isfinite(fast).all()
        assert (fast[~tm] == 0).all()


@pytest.mark.parametrize("name, options", SETTINGS)
def test_appending_padding_changes_nothing(name, options):
    for seed in range(20):
        r, sm, ts, tm = _random_group(seed)
        G = r.shape[0]
        base = compute_advantages(name, r, sm, ts, tm, **options)
        r2 = torch.cat([r, torch.full((G, 3), float("nan"))], 1)  # 3 more step columns, all masked
        sm2 = torch.cat([sm, torch.zeros(G, 3, dtype=torch.bool)], 1)
        ts2 = torch.cat([ts, torch.full((G, 5), -4)], 1)  # 5 more token columns, masked, garbage steps
        tm2 = torch.cat([tm, torch.zeros(G, 5, dtype=torch.bool)], 1)
        padded = compute_advantages(name, r2, sm2, ts2, tm2, **options)
        assert torch.equal(padded[:, : tm.shape[1]], base)
        assert (padded[:, tm.shape[1]:] == 0).all()


@pytest.mark.parametrize("name, options", SETTINGS)
def test_permuting_responses_permutes_advantages(name, options):
    for seed in range(20):
        r, sm, ts, tm = _random_group(seed)
        perm = torch.randperm(r.shape[0], generator=torch.Generator().manual_seed(seed))
        base = compute_advantages(name, r.double(), sm, ts, tm, **options)
        permuted = compute_advantages(name, r.double()[perm], sm[perm], ts[perm], tm[perm], **options)
        assert torch.allclose(permuted, base[perm], atol=1e-12, rtol=0)


def test_output_dtype_follows_rewards():
    adv = compute_advantages("cdpa", CDPA_R.to(torch.bfloat16), CDPA_SM, CDPA_TS, CDPA_TM)
    assert adv.dtype == torch.bfloat16
    assert compute_advantages("cdpa", CDPA_R, CDPA_SM, CDPA_TS, CDPA_TM).dtype == torch.float32


# ----------------------------------------------------------------------------------------------- bad input
def _args(**changes):
    args = dict(step_rewards=CDPA_R.clone(), step_mask=CDPA_SM.clone(), token_steps=CDPA_TS.clone(),
                token_mask=CDPA_TM.clone())
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"step_rewards": CDPA_R[:, :1]}, "step_mask shape"),
        ({"token_mask": CDPA_TM[:, :3]}, "token_mask shape"),
        ({"token_steps": CDPA_TS[:2], "token_mask": CDPA_TM[:2]}, "token_steps has 2 responses"),
        ({"step_rewards": CDPA_R[0]}, "step_rewards must be 2-D"),
        ({"step_rewards": CDPA_R.tolist()}, "step_rewards must be a torch.Tensor"),
        ({"step_rewards": CDPA_R.long()}, "step_rewards must be a floating"),
        ({"token_steps": CDPA_TS.float()}, "token_steps must be an integer"),
        ({"step_mask": CDPA_SM.float() * 2}, "step_mask must be a bool"),
        ({"step_rewards": torch.empty(0, 2), "step_mask": torch.empty(0, 2, dtype=torch.bool),
          "token_steps": torch.empty(0, 4, dtype=torch.long), "token_mask": torch.empty(0, 4, dtype=torch.bool)},
         "empty group"),
        ({"step_rewards": CDPA_R[:1], "step_mask": CDPA_SM[:1], "token_steps": CDPA_TS[:1],
          "token_mask": CDPA_TM[:1]}, "group of one"),
        ({"step_rewards": torch.tensor([[1.0, float("nan")], [0.0, 0.0], [0.5, 1.0]])}, "step_rewards has NaN"),
        ({"step_rewards": torch.tensor([[1.0, 0.0], [float("inf"), 0.0], [0.5, 1.0]])}, "step_rewards has NaN/inf"),
        ({"step_mask": torch.tensor([[T, T], [F, F], [T, T]])}, "response\\(s\\) \\[1\\] have no valid step"),
        ({"token_steps": torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 1, 0]])}, "token_steps\\[0, 3\\] = 2"),
        ({"token_steps": torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 1, 1, 0]])}, "masked out in step_mask"),
    ],
)
def test_bad_input_raises_naming_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages("cdpa", **_args(**changes))


def test_bad_name_option_eps():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gae'; valid: \['cdpa', .*'grpo'"):
        compute_advantages("gae", **_args())
    with pytest.raises(ValueError, match="unknown option"):
        compute_advantages("grpo", **_args(), normalize="pooled")
    with pytest.raises(ValueError, match="normalize must be"):
        compute_advantages("cdpa", **_args(), normalize="token")
    with pytest.raises(ValueError, match="pads_count"):
        compute_advantages("cdpa", **_args(), normalize="pooled", pads_count=True)
    with pytest.raises(ValueError, match="eps"):
        compute_advantages("cdpa", **_args(), eps=float("nan"))
    with pytest.raises(ValueError, match="overflowed"):
        compute_advantages("grpo", **_args(step_rewards=torch.tensor([[1e308, 1e308], [-1e308, 0.0],
                                                                      [0.0, 0.0]], dtype=torch.float64)))


@pytest.mark.parametrize("name", ["grpo", "cdpa", "process_future"])
def test_rewards_whose_spread_overflows_raise_instead_of_zero_advantages(name):
    sm = torch.ones(2, 1, dtype=torch.bool)
    ts = torch.zeros(2, 3, dtype=torch.long)
    tm = torch.ones(2, 3, dtype=torch.bool)
    # Two rewards +-a: mean 0, unbiased var (a^2 + a^2) / 1 = 2a^2, std a*sqrt(2), A = +-1/sqrt(2) for any a.
    # a = 6e153: 2a^2 = 7.2e307 still fits in float64 (max ~1.8e308) ...
    fits = torch.tensor([[6e153], [-6e153]], dtype=torch.float64)
    adv = compute_advantages(name, fits, sm, ts, tm)
    assert adv[:, 0].tolist() == [_approx(1 / math.sqrt(2)), _approx(-1 / math.sqrt(2))]
    # ... a = 1e155: 2a^2 = 2e310 overflows to inf, and (x - mean) / inf would make every advantage 0.
    with pytest.raises(ValueError, match="too large to normalize"):
        compute_advantages(name, torch.tensor([[1e155], [-1e155]], dtype=torch.float64), sm, ts, tm)
    # Equal huge rewards are still a constant set: exactly 0, no error.
    same = compute_advantages(name, torch.tensor([[1e308], [1e308]], dtype=torch.float64), sm, ts, tm)
    assert same.abs().max().item() == 0.0


def test_zero_advantage_rate_bad_input():
    with pytest.raises(ValueError, match="no groups"):
        zero_advantage_rate([], [])
    with pytest.raises(ValueError, match="masks has 0"):
        zero_advantage_rate([torch.zeros(2, 2)], [])
    with pytest.raises(ValueError, match="shape"):
        zero_advantage_rate([torch.zeros(2, 2)], [torch.ones(2, 3, dtype=torch.bool)])
    with pytest.raises(ValueError, match="NaN"):
        zero_advantage_rate([torch.tensor([[float("nan")]])], [torch.ones(1, 1, dtype=torch.bool)])


def test_algorithms_import_only_torch_numpy_stdlib():
    """The math package stays importable without Ray, vLLM, DeepSpeed, transformers or TRL."""
    code = ("import sys, cdra_ray.algorithms; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'ray', 'vllm', 'deepspeed', 'transformers', 'trl', 'tokenizers', 'accelerate', 'datasets'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
