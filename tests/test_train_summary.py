"""The end-of-run summary warns when the run could not have learned anything (every advantage zero)."""

from cdra_ray.train import NO_SIGNAL_WARNING, format_summary


def _summary(zero_rate: float) -> dict:
    return {"updates": 4, "run_dir": "runs/x", "reward_per_update": [0.99] * 4, "reward_first_half": 0.99,
            "reward_second_half": 0.99, "parse_rate": 1.0, "zero_advantage_rate": zero_rate, "dropped_stale": 0,
            "timing_mean_per_update": {"timing/reward": 1.0}}


def test_a_run_without_any_advantage_is_flagged_and_one_with_signal_is_not():
    assert NO_SIGNAL_WARNING in format_summary(_summary(1.0))
    assert NO_SIGNAL_WARNING not in format_summary(_summary(0.25))
    assert format_summary({"updates": 0, "run_dir": "runs/x"}) == "updates: 0\nrun directory: runs/x"
