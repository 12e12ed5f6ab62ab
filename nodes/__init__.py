"""The services, grouped by who runs them: ``department`` (a node over a register), ``client``
(civil affairs and other askers), ``shared`` (both), ``demo`` and ``cli`` (on top of both).
The map is docs/architecture.md; tests/test_layering.py holds the grouping."""
