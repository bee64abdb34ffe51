"""cdra_ray: Critique-Driven Reasoning Alignment on Ray.

The package imports nothing heavy at the top level: config, data, algorithms and rewards load without Ray,
vLLM or DeepSpeed; those are imported only inside the modules that wrap them.
"""

__version__ = "0.1.0"
