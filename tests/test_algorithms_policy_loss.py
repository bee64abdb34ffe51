"""CDPA policy loss: hand-derived values for every aggregation, KL, TIS, metrics, gradients, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from cdra_ray.algorithms.policy_loss import AGGREGATIONS, cdpa_policy_loss

T, F = True, False
LN = math.log

# Hand case: N = 2 responses, C = 3; row 1 has 2 valid tokens. old = 0, so ratio = exp(logp).
#   row 0: ratio [1.1, 1.5, 0.5], A = +1  -> rho*A [1.1, 1.5, 0.5]; clip(rho, .8, 1.2)*A [1.1, 1.2, 0.8]
#          min -> [1.1, 1.2, 0.5] -> pg = [-1.1, -1.2, -0.5] (token 1 clipped: rho > 1.2 with A > 0)
#   row 1: ratio [1.5, 0.5, pad], A = -1 -> rho*A [-1.5, -0.5]; clipped*A [-1.2, -0.8]
#          min -> [-1.5, -0.8] -> pg = [1.5, 0.8]                (token 1 clipped: rho < 0.8 with A < 0)
#   sums: row 0 = -2.8, row 1 = 2.3
RATIO = [[1.1, 1.5, 0.5], [1.5, 0.5, 1.0]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]
MASK = [[T, T, T], [T, T, F]]


def _inputs(requires_grad=True):
    logp = torch.tensor([[LN(x) for x in row] for row in RATIO], dtype=torch.float64, requires_grad=requires_grad)
    old = torch.zeros(2, 3, dtype=torch.float64)
    return logp, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("seq-mean-token-sum", (-2.8 + 2.3) / 2),  # (1/N) sum_i sum_t = -0.25
        ("seq-mean-token-mean", (-2.8 / 3 + 2.3 / 2) / 2),  # (-0.933333 + 1.15) / 2 = 0.108333
        ("token-mean", (-2.8 + 2.3) / 5),  # -0.1
    ],
)
def test_hand_case_aggregations(aggregation, expected):
    logp, old, adv, mask = _inputs()
    loss, m = cdpa_policy_loss(logp, old, None, adv, mask, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert m["loss"] == pytest.approx(expected, abs=1e-12) and m["pg_loss"] == pytest.approx(expected, abs=1e-12)
    # 2 of 5 valid tokens have their clipped branch active (row0 t1 high, row1 t1 low)
    assert (m["clip_fraction"], m["clip_fraction_low"], m["clip_fraction_high"]) == pytest.approx((0.4, 0.2, 0.2))
    # ratios [1.1, 1.5, .5, 1.5, .5]: min .5, mean 5.1/5 = 1.02, max 1.5
    assert (m["ratio_min"], m["ratio_mean"], m["ratio_max"]) == pytest.approx((0.5, 1.02, 1.5))
    # advantages [1, 1, 1, -1, -1]: mean .2; dev .8 x3, -1.2 x2; var (1.92 + 2.88)/4 = 1.2
    assert m["advantage_mean"] == pytest.approx(0.2) and m["advantage_std"] == pytest.approx(math.sqrt(1.2))
    assert (m["advantage_min"], m["advantage_max"], m["num_tokens"]) == (-1.0, 1.0, 5.0)
    assert "kl_mean" not in m


def test_hand_case_gradient_seq_mean_token_sum():
    logp, old, adv, mask = _inputs()
    loss, _ = cdpa_policy_loss(logp, old, None, adv, mask)
    loss.backward()
    # d(-rho*A)/dlogp = -rho*A where the unclipped branch is taken, 0 where the clipped one is; times 1/N = 1/2
    # row0: t0 -1.1/2 = -0.55, t1 clipped 0, t2 -0.5/2 = -0.25; row1: t0 1.5/2 = 0.75, t1 clipped 0, pad 0
    assert logp.grad.tolist() == [pytest.approx([-0.55, 0.0, -0.25]), pytest.approx([0.75, 0.0, 0.0])]


def test_kl_term_and_its_gradient():
    logp, old, adv, mask = _inputs()
    ref = logp.detach().clone()
    ref[0, 0] += LN(2.0)  # r = ref - logp = ln 2 at (0, 0), 0 elsewhere
    loss, m = cdpa_policy_loss(logp, old, ref, adv, mask, beta=0.1)
    kl00 = 2.0 - LN(2.0) - 1.0  # exp(r) - r - 1 = 0.306853
    assert m["kl_mean"] == pytest.approx(kl00 / 5)  # 0.061371 over 5 valid tokens
    assert m["kl_loss"] == pytest.approx(0.1 * kl00 / 2)  # beta * (1/N) * sum = 0.015343
    assert loss.item() == pytest.approx(-0.25 + 0.1 * kl00 / 2)  # -0.234657
    loss.backward()
    # d kl / d logp = 1 - exp(r) = 1 - 2 = -1 at (0, 0): gradient there -0.55 + 0.1 * (-1) / 2 = -0.6
    assert logp.grad[0, 0].item() == pytest.approx(-0.6)
    # kl_ratio_correction (TRL 1.16 default): kl * rho, rho(0, 0) = 1.1 -> -0.25 + 0.1 * 1.1 * 0.306853 / 2
    corrected, mc = cdpa_policy_loss(logp.detach(), old, ref, adv, mask, beta=0.1, kl_ratio_correction=True)
    assert corrected.item() == pytest.approx(-0.25 + 0.1 * 1.1 * kl00 / 2)  # -0.233122
    assert mc["kl_mean"] == pytest.approx(kl00 / 5)  # the metric stays the plain k3 mean
    # beta = 0 with a reference: KL reported, not added
    loss0, m0 = cdpa_policy_loss(logp.detach(), old, ref, adv, mask, beta=0.0)
    assert loss0.item() == pytest.approx(-0.25) and m0["kl_mean"] == pytest.approx(kl00 / 5)


def test_truncated_importance_weight():
    logp, old, adv, mask = _inputs()
    behaviour = old.clone()
    behaviour[0, 1] = -LN(3.0)  # weight exp(old - behaviour) = 3 at (0, 1), capped at 2
    behaviour[1, 0] = LN(2.0)  # weight 0.5 at (1, 0), below the cap
    loss, m = cdpa_policy_loss(logp, old, None, adv, mask, behaviour_logprobs=behaviour, importance_cap=2.0)
    # row0: [-1.1, -1.2*2, -0.5] sum -4.0; row1: [1.5*0.5, 0.8] sum 1.55 -> (-4.0 + 1.55)/2 = -1.225
    assert loss.item() == pytest.approx(-1.225)
    assert m["importance_weight_max"] == pytest.approx(2.0)
    assert m["importance_weight_mean"] == pytest.approx((1 + 2 + 1 + 0.5 + 1) / 5)  # 1.1
    assert m["importance_capped_fraction"] == pytest.approx(0.2)
    loss.backward()
    # the weight is a constant: row1 t0 gradient 0.75 * 0.5 = 0.375
    assert logp.grad[1, 0].item() == pytest.approx(0.375)
    uncapped, _ = cdpa_policy_loss(logp.detach(), old, None, adv, mask, behaviour_logprobs=behaviour)
    assert uncapped.item() == pytest.approx((-1.1 - 3.6 - 0.5 + 0.75 + 0.8) / 2)  # -1.825


def test_clip_eps_high_asymmetric():
    logp, old, adv, mask = _inputs()
    loss, m = cdpa_policy_loss(logp, old, None, adv, mask, clip_eps_high=0.28)
    # row0 t1: clip(1.5, .8, 1.28) = 1.28 -> pg -1.28 instead of -1.2: sums -2.88, 2.3 -> -0.29
    assert loss.item() == pytest.approx((-2.88 + 2.3) / 2)
    assert m["clip_fraction_high"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------- loop reference
def _naive_loss(logp, old, ref, adv, mask, clip, beta, aggregation, behaviour=None, cap=None):
    rows = []
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            pg = -min(rho * adv[i][t], min(max(rho, 1 - clip), 1 + clip) * adv[i][t])
            if behaviour is not None:
                w = math.exp(old[i][t] - behaviour[i][t])
                pg *= min(w, cap) if cap is not None else w
            r = ref[i][t] - logp[i][t]
            terms.append(pg + beta * (math.exp(r) - r - 1))
        rows.append(terms)
    if aggregation == "seq-mean-token-sum":
        return sum(sum(x) for x in rows) / len(rows)
    if aggregation == "seq-mean-token-mean":
        return sum(sum(x) / max(len(x), 1) for x in rows) / len(rows)
    return sum(sum(x) for x in rows) / sum(len(x) for x in rows)


def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    N, C = int(torch.randint(1, 6, (1,), generator=g)), 7
    lengths = torch.randint(0, C + 1, (N,), generator=g)
    lengths[0] = max(int(lengths[0]), 1)
    mask = torch.arange(C)[None] < lengths[:, None]
    old = -torch.rand(N, C, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(N, C, generator=g, dtype=torch.float64) * 0.3
    ref = old + torch.randn(N, C, generator=g, dtype=torch.float64) * 0.3
    behaviour = old + torch.randn(N, C, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(N, C, generator=g, dtype=torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    pad = lambda x: torch.where(mask, x, nan)  # noqa: E731 - padding is NaN: must never leak
    return pad(logp), pad(old), pad(ref), pad(adv), mask, pad(behaviour)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("beta, cap", [(0.0, None), (0.05, None), (0.05, 1.5)])
def test_loop_vs_vectorised(aggregation, beta, cap):
    for seed in range(30):
        logp, old, ref, adv, mask, behaviour = _random_batch(seed)
        use_is = cap is not None
        loss, m = cdpa_policy_loss(logp, old, ref, adv, mask, beta=beta, aggregation=aggregation,
                                   behaviour_logprobs=behaviour if use_is else None, importance_cap=cap)
        expected = _naive_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, beta,
                               aggregation, behaviour.tolist() if use_is else None, cap)
        assert loss.item() == pytest.approx(expected, abs=1e-12), seed
        assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_padding_and_permutation_invariance(aggregation):
    for seed in range(10):
        logp, old, ref, adv, mask, _ = _random_batch(seed)
        logp = logp.clone().requires_grad_(True)
        loss, m = cdpa_policy_loss(logp, old, ref, adv, mask, beta=0.05, aggregation=aggregation)
        loss.backward()
        N = logp.shape[0]
        nan = torch.full((N, 4), float("nan"), dtype=torch.float64)
        wide = [torch.cat([x.detach(), nan], 1) for x in (logp, old, ref, adv)]
        wide_logp = wide[0].requires_grad_(True)
        wide_mask = torch.cat([mask, torch.zeros(N, 4, dtype=torch.bool)], 1)
        loss2, m2 = cdpa_policy_loss(wide_logp, wide[1], wide[2], wide[3], wide_mask, beta=0.05,
                                     aggregation=aggregation)
        loss2.backward()
        assert loss2.item() == pytest.approx(loss.item(), abs=1e-12) and m2 == pytest.approx(m)
        assert torch.allclose(wide_logp.grad[:, :7], logp.grad, atol=1e-12)
        assert (wide_logp.grad[:, 7:] == 0).all()
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
        loss3, _ = cdpa_policy_loss(logp.detach()[perm], old[perm], ref[perm], adv[perm], mask[perm], beta=0.05,
                                    aggregation=aggregation)
        assert loss3.item() == pytest.approx(loss.item(), abs=1e-12)


def test_on_policy_gradient_is_minus_mean_advantage():
    # At logp == old (first step on fresh samples), ratio = 1 and d loss / d logp_t = -A_t / N (token sum)
    logp, old, adv, mask = _inputs()
    logp = old.clone().requires_grad_(True)
    loss, m = cdpa_policy_loss(logp, old, None, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx(-(3 - 2) / 2)  # -(sum of valid A) / N = -0.5
    assert logp.grad.tolist() == [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.0]]
    assert m["clip_fraction"] == 0.0


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "changes, match",
    [
        ({"logprobs": torch.zeros(2, 4)}, "old_logprobs shape"),
        ({"advantages": torch.zeros(3, 3, dtype=torch.float64)}, "advantages shape"),
        ({"mask": torch.ones(2, 3, 1, dtype=torch.bool)}, "mask must be 2-D"),
        ({"old_logprobs": [[0.0]]}, "old_logprobs must be a torch.Tensor"),
        ({"advantages": torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)},
         "advantages has NaN/inf at valid token \\(0, 1\\)"),
        ({"old_logprobs": torch.tensor([[0.0, 0.0, 0.0], [float("-inf"), 0.0, 0.0]], dtype=torch.float64)},
         "old_logprobs has NaN/inf"),
        ({"mask": torch.zeros(2, 3, dtype=torch.bool)}, "no valid token"),
        ({"mask": torch.full((2, 3), 2)}, "mask must be a bool"),
        ({"aggregation": "sum"}, "unknown aggregation 'sum'; valid"),
        ({"beta": 0.1}, "ref_logprobs is required"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"clip_eps": 0.0}, "clip_eps must be > 0"),
        ({"clip_eps": float("inf")}, "clip_eps must be a finite"),
        ({"importance_cap": 2.0}, "importance_cap needs behaviour_logprobs"),
        ({"logprobs": torch.zeros(0, 3), "old_logprobs": torch.zeros(0, 3), "advantages": torch.zeros(0, 3),
          "mask": torch.zeros(0, 3, dtype=torch.bool)}, "empty batch"),
    ],
)
def test_bad_input(changes, match):
    logp, old, adv, mask = _inputs()
    args = dict(logprobs=logp, old_logprobs=old, ref_logprobs=None, advantages=adv, mask=mask)
    kwargs = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    with pytest.raises(ValueError, match=match):
        cdpa_policy_loss(**args, **kwargs)


def test_integer_mask_is_accepted():
    logp, old, adv, mask = _inputs()
    loss, _ = cdpa_policy_loss(logp, old, None, adv, mask.long())
    assert loss.item() == pytest.approx(-0.25)
