"""metalic: meta-learned interface conditions for multi-domain PINNs.

The library is pure computation: PDE families (`metalic.families`), the interface-term catalogue
(`metalic.conditions`), the batched multi-domain PINN trainer (`metalic.pinn`) and the CLI.
It never imports the web service (`api/`), the workers (`workers/`) or a database.
"""

from __future__ import annotations

__version__ = "0.1.0"
