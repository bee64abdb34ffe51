"""Actor roles. Each module holds a plain class testable without Ray; ``wiring.py`` alone imports Ray,
turns them into actors and decides placement and resources."""
