"""Signed webhooks: endpoints, an outbox of deliveries, retries with backoff, a delivery log.

Receivers verify with :func:`verify` (see docs/api.md for a standalone recipe). Modules:
``service`` (endpoints, the outbox), ``delivery`` (claims, attempts, leases), ``transport`` (the
guarded HTTP client), ``targets`` (which addresses webhooks may reach), ``signing``, ``secrets``.
"""

from api.webhooks.delivery import DeliveryResult, deliver_due, run_delivery_worker
from api.webhooks.models import (
    EVENT_TYPES,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from api.webhooks.secrets import SecretCipher
from api.webhooks.service import (
    MAX_ENABLED_ENDPOINTS,
    RETRY_SCHEDULE,
    SigningTarget,
    create_endpoint,
    disable_endpoint,
    enqueue,
    event_body,
    next_retry_delay,
    redeliver,
    rotate_secret,
    signed_headers,
    signing_targets,
)
from api.webhooks.signing import SIGNATURE_HEADER, WebhookSignatureError, sign, verify
from api.webhooks.targets import TargetPolicy
from api.webhooks.transport import delivery_client

__all__ = [
    "EVENT_TYPES",
    "MAX_ENABLED_ENDPOINTS",
    "RETRY_SCHEDULE",
    "SIGNATURE_HEADER",
    "DeliveryResult",
    "DeliveryStatus",
    "SecretCipher",
    "SigningTarget",
    "TargetPolicy",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookSignatureError",
    "create_endpoint",
    "deliver_due",
    "delivery_client",
    "disable_endpoint",
    "enqueue",
    "event_body",
    "next_retry_delay",
    "redeliver",
    "rotate_secret",
    "run_delivery_worker",
    "sign",
    "signed_headers",
    "signing_targets",
    "verify",
]
