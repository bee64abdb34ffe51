"""What the driver does when an actor dies: Ray restarts it, the driver notices, catches it up, resubmits.

Ray's own model does the restarting: every actor but the learner is created with ``max_restarts =
run.max_actor_restarts`` and ``max_task_retries = 0``, so a call that was running in a dead process fails with
:class:`ray.exceptions.RayActorError` instead of being replayed blindly. The driver then

1. asks the actor for its *incarnation* (a token drawn when its process started; the call waits while Ray
   restarts it): a new token is one more death, counted against the budget; the same token means the death was
   already handled (one death fails every call that was in flight),
2. gives a restarted rollout worker the learner's current weights and version before it generates again (a
   replayed call would have sampled with the weights it was built from),
3. resubmits the failed chain from the stage that died, reusing the outputs of the stages before it, so a
   scenario is generated, scored and annotated until it reaches the learner, and is trained exactly once.

The learner is never restarted (its optimizer state lives only in its process): its death stops the run with
:class:`ActorFailure`, and ``run.resume=true`` continues from the last checkpoint. So does a death beyond the
budget, naming the actor and how often it failed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

RESTART_TIMEOUT_S = 600.0  # how long the driver waits for Ray to bring a dead actor back


class ActorFailure(RuntimeError):
    """An actor died for good (the learner, or any actor beyond ``run.max_actor_restarts``): the run stopped."""


def actor_death_type() -> type[BaseException]:
    from ray.exceptions import RayActorError

    return RayActorError


def raises_actor_death(ref: Any) -> BaseException | None:
    """The actor-death error stored in ``ref`` (a finished ObjectRef), or None if it holds a value/other error."""
    import ray

    try:
        ray.get(ref)
    except actor_death_type() as err:
        return err
    except Exception:  # an application error: not a death
        return None
    return None


class RestartTracker:
    """Counts the deaths of each named actor by watching its incarnation token."""

    def __init__(self, max_restarts: int):
        self.max_restarts = max_restarts
        self.deaths: Counter[str] = Counter()
        self._incarnations: dict[str, str] = {}

    def start(self, name: str, incarnation: str) -> None:
        self._incarnations[name] = incarnation

    def observe(self, name: str, handle: Any, cause: BaseException | None = None) -> bool:
        """Wait for ``handle`` to answer; True when it is a new incarnation (a restart not yet handled).

        Raises :class:`ActorFailure` when Ray will not bring it back (the budget is spent) or it does not come
        back within :data:`RESTART_TIMEOUT_S`.
        """
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError

        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                incarnation = ray.get(handle.incarnation.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError as err:  # restarting: Ray answers "unavailable" until it is back
                if time.monotonic() > deadline:
                    raise ActorFailure(f"{name} died and did not come back within {RESTART_TIMEOUT_S:.0f} s") from err
                time.sleep(0.2)
            except actor_death_type() as err:  # dead for good: Ray will not restart it again
                self.deaths[name] += 1
                raise ActorFailure(
                    f"{name} failed {self.deaths[name]} times and Ray did not restart it again "
                    f"(run.max_actor_restarts={self.max_restarts}); the run stopped. Last error: {cause or err}"
                ) from err
            except GetTimeoutError as err:
                raise ActorFailure(f"{name} died and did not come back within {RESTART_TIMEOUT_S:.0f} s") from err
        if incarnation == self._incarnations.get(name):
            return False
        self._incarnations[name] = incarnation
        self.deaths[name] += 1
        log.warning("%s died and was restarted by Ray (%d of run.max_actor_restarts=%d)%s", name,
                    self.deaths[name], self.max_restarts, f": {cause}" if cause else "")
        return True


def learner_failure(phase: str, update: int, err: BaseException, last_checkpoint: Any) -> ActorFailure:
    where = (f"continue from the last checkpoint ({last_checkpoint}) with run.resume=true" if last_checkpoint
             else "no checkpoint was written yet, so a rerun starts from the beginning")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ActorFailure(f"the learner actor died during {phase} of update {update} ({first_line}); the learner is "
                        f"not restarted (its optimizer state died with it), so the run stopped: {where}")
