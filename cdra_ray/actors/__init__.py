"""Actor roles. Each role module holds a plain class testable without Ray (``rollout_worker``,
``reward_service``, ``reference_service``); ``shells.py`` turns them into Ray actors, ``constructors.py`` maps the
config to their constructor arguments, ``environment.py`` sets each actor's process environment,
``publishers.py`` moves weights to the engines, and ``wiring.py`` starts them all with their resources."""
