"""Signed webhooks: endpoints, an outbox of deliveries, retries with backoff, a delivery log.

Receivers verify with :func:`verify` (see docs/api.md for a standalone recipe).
"""

from api.webhooks.models import (
    EVENT_TYPES,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from api.webhooks.secrets import SecretCipher
from api.webhooks.service import (
    RETRY_SCHEDULE,
    DeliveryResult,
    SigningTarget,
    create_endpoint,
    deliver_due,
    disable_endpoint,
    enqueue,
    event_body,
    next_retry_delay,
    redeliver,
    rotate_secret,
    run_delivery_worker,
    signed_headers,
    signing_targets,
)
from api.webhooks.signing import SIGNATURE_HEADER, WebhookSignatureError, sign, verify

__all__ = [
    "EVENT_TYPES",
    "RETRY_SCHEDULE",
    "SIGNATURE_HEADER",
    "DeliveryResult",
    "DeliveryStatus",
    "SecretCipher",
    "SigningTarget",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookSignatureError",
    "create_endpoint",
    "deliver_due",
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
