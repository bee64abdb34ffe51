"""The reward service over HTTP on Ray Serve: a process reward any trainer can call (``cdra-ray serve-reward``).

- ``protocol.py``   request and reply formats (OpenRLHF's ``/get_reward``, the native ``/v1/score_steps``), pure
- ``scorer.py``     records -> the training run's reward service (same prompts, batching, cache, parsing)
- ``deployment.py`` the Ray Serve deployment (FastAPI ingress, ``@serve.batch``, ``/health``)
- ``launch.py``     config -> Serve options; start, wait until healthy, graceful shutdown

The client side is :mod:`cdra_ray.client` (a TRL reward function). Importing this package imports no Ray.
"""
