"""The guard: stops a failing run, when configured (off unless a ``guard`` section or flag says
otherwise). ``rules.py`` says when a run is failing, ``actions.py`` what is done to it,
``webhook.py`` reads Alertmanager's payloads, ``core.py`` decides, safely, and ``collector.py``
exports what it did."""
