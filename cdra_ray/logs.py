"""Where a run's log lines go (``run.log_level``).

``warning`` (default): the terminal shows the progress bar, warnings and errors; everything else (cdra_ray's info
lines, and every line an actor process writes: vLLM's engine logs, its per-sync "Failed to load weights" notes
about buffers it recomputes, DeepSpeed's banners) goes to ``<run dir>/logs/``: ``driver.log`` and one
``<actor>-<pid>.log`` per actor process. ``info``: cdra_ray's info lines on the terminal too. ``debug``: every
line of every process on the terminal, as Ray forwards it, and vLLM at debug level.

The driver calls :func:`configure_run_logs` before it starts the actors; each actor calls
:func:`configure_actor_logs` first thing in its process (the settings travel in its environment).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
LOG_DIR_VAR = "CDRA_RAY_LOG_DIR"
LOG_LEVEL_VAR = "CDRA_RAY_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_log_dir(config) -> Path:
    return Path(config.run.output_dir).expanduser() / config.run.name / "logs"


def actor_log_env(level: str, log_dir: str | os.PathLike | None) -> dict[str, str]:
    """Environment variables that carry the log settings into an actor process."""
    env = {LOG_LEVEL_VAR: level}
    if log_dir is not None:
        env[LOG_DIR_VAR] = str(log_dir)
    if level == "debug":
        env["VLLM_LOGGING_LEVEL"] = "DEBUG"
    return env


def configure_run_logs(config) -> Path:
    """The driver's side: terminal at ``run.log_level``, ``driver.log`` at info (debug), and the variables that
    :func:`cdra_ray.actors.environment.actor_env` passes on to every actor. Returns the log directory."""
    level = config.run.log_level
    log_dir = run_log_dir(config)
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(actor_log_env(level, log_dir))
    root = logging.getLogger()
    for handler in root.handlers:  # the terminal (cli's basicConfig, or pytest's)
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(getattr(logging, level.upper()))
    for handler in [h for h in root.handlers if getattr(h, "cdra_run_log", False)]:  # an earlier run's file
        root.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(log_dir / "driver.log")
    file_handler.cdra_run_log = True
    file_handler.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    root.setLevel(min(root.level or logging.WARNING, logging.DEBUG if level == "debug" else logging.INFO))
    return log_dir


def configure_actor_logs(role: str) -> Path | None:
    """The actor's side: unless the level is ``debug``, this process's stdout and stderr (Python and native
    writes alike) go to ``<log dir>/<role>-<pid>.log``, and only cdra_ray's lines at the configured level and up
    still reach the terminal (through the stream Ray forwards to the driver). Returns the file, or None."""
    level = os.environ.get(LOG_LEVEL_VAR, "warning")
    log_dir = os.environ.get(LOG_DIR_VAR)
    if level == "debug" or not log_dir:
        return None
    path = Path(log_dir) / f"{role}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    forwarded = os.fdopen(os.dup(2), "w", buffering=1)  # the stream Ray forwards to the driver's terminal
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    terminal = logging.StreamHandler(forwarded)
    terminal.setLevel(getattr(logging, level.upper(), logging.WARNING))
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("cdra_ray").addHandler(terminal)
    root = logging.getLogger()
    if not root.handlers:  # everything else still lands in the file (fd 2 now points there)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path
