"""The service's store: the only room that holds SQL.

``db.Store`` opens the database and its short transactions; the modules below are the storage
interface that ``api/`` and ``workers/`` call, each function one transaction that returns records
(``records``), never rows or sessions:

- ``tasks``: a task's life (submit, dispatch, progress, exactly-once results, retries, cancel);
- ``studies``: studies, policy snapshots, engines restored from them, refits;
- ``campaigns``: campaigns and the guarded submission of their steps;
- ``workers``: trainer and dispatcher rows, heartbeats; ``tokens``: API tokens;
- ``reports``: bounded read queries for the dashboard and the metrics.

The schema's migrations live in ``migrations/`` (the store never imports them). The numerical
library (families, pinn, bandit, jobs) never imports the store.
"""

from metalic.store.db import Store, open_store

__all__ = ["Store", "open_store"]
