"""The admin dashboard at ``/dashboard``: server-rendered pages (Jinja2) with Plotly charts fed by
bounded JSON endpoints, a cookie login for admin tokens, CSRF-protected forms. Plotly is the project's partial build
(``static/vendor/plotly.min.js``, from ``scripts/plotly_bundle/``), so the dashboard works offline.

Layout: ``session`` (login, cookie, CSRF), ``data`` (the bounded queries), ``pages`` (the routes),
``templates/`` and ``static/`` (the pages' HTML, script and style).
"""

from api.dashboard.pages import create_dashboard

__all__ = ["create_dashboard"]
