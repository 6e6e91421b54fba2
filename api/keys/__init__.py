"""API keys (``fp_live_…``/``fp_test_…``): shown once, stored as SHA-256, three roles."""

from api.keys.models import ApiKeyRecord, ApiRole
from api.keys.service import AuthenticatedKey, authenticate, create_key, hash_key, revoke

__all__ = [
    "ApiKeyRecord",
    "ApiRole",
    "AuthenticatedKey",
    "authenticate",
    "create_key",
    "hash_key",
    "revoke",
]
