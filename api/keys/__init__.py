"""API keys (``fp_live_…``/``fp_test_…``): shown once, stored as SHA-256, three roles.

``roles`` (:class:`~api.keys.roles.ApiRole`), ``models`` (the ``api_keys`` table), ``repository``
(its SQL), ``service`` (create, authenticate, revoke) and ``schemas`` (the API's shapes). The
package imports none of them, so ``followpay`` can name a role without loading SQLAlchemy.
"""
