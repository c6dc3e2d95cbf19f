"""The service's store: SQLAlchemy models and the few functions that read and write them.

Used by ``api/`` and ``workers/``; the numerical library (families, pinn, bandit, jobs) never
imports it.
"""

from metalic.store.db import SchemaError, Store, open_store

__all__ = ["SchemaError", "Store", "open_store"]
