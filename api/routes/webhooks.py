"""/v1/webhook_endpoints and /v1/webhook_deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Path, Request

from api.deps import (
    AfterCommit,
    CipherDep,
    ConfigCacheDep,
    SessionDep,
    SettingsDep,
    require_role,
)
from api.errors import NotFound
from api.keys.service import AuthenticatedKey
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import visible_merchant
from api.routing import ApiRouter
from api.webhooks import repository
from api.webhooks import service as webhooks
from api.webhooks.models import WebhookDelivery, WebhookEndpoint
from api.webhooks.schemas import (
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointPublic,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookRedeliverFailed,
    WebhookSecretRotate,
)
from api.webhooks.targets import TargetPolicy

__all__ = ["router"]

router = ApiRouter(tags=["webhooks"])

Manager = Annotated[AuthenticatedKey, require_role("admin", "merchant")]
EndpointId = Annotated[str, Path(max_length=40, description="A webhook endpoint id (we_…).")]
DeliveryId = Annotated[str, Path(max_length=40, description="A webhook delivery id (whd_…).")]


@router.post(
    "/webhook_endpoints",
    response_model=WebhookEndpointWithSecret,
    summary="Register a webhook endpoint",
    description="The response carries the signing `secret`; it is never returned again except by "
    "`rotate_secret`. The URL must use https, whatever the key's mode (plain http only where "
    "private targets are allowed, for development). A host that is, or resolves to, a "
    "loopback, private, link-local or otherwise non-public address is refused "
    "(`400 url_not_allowed`). A merchant has at most 16 enabled endpoints "
    "(`400 webhook_endpoint_limit`). An admin key names the merchant (`merchant_id`); an "
    "unknown one is a 404.",
)
def create_webhook_endpoint(
    body: WebhookEndpointCreate,
    session: SessionDep,
    caller: Manager,
    cipher: CipherDep,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
    settings: SettingsDep,
) -> WebhookEndpointWithSecret:
    merchant_id = caller.merchant_for_write(body.merchant_id)
    if caller.is_admin:  # events are queued under the merchant's canonical id: "01", "999"
        merchant_id = str(visible_merchant(session, caller, merchant_id).id)  # got none
    endpoint, secret = webhooks.create_endpoint(
        session,
        merchant_id,
        body.url,
        body.enabled_events,
        description=body.description,
        livemode=caller.livemode,
        cipher=cipher,
        targets=TargetPolicy(allow_private=settings.webhook_allow_private_targets),
    )
    after_commit.append(cache.clear)  # this process's cached subscriptions
    return WebhookEndpointWithSecret.with_secret(endpoint, secret)


@router.get(
    "/webhook_endpoints",
    response_model=ListResponse[WebhookEndpointPublic],
    summary="List webhook endpoints",
)
def list_webhook_endpoints(
    request: Request, session: SessionDep, caller: Manager, page: PageDep
) -> ListResponse[WebhookEndpointPublic]:
    rows, has_more = paginate(
        session,
        repository.endpoints_select(caller.scope, caller.livemode),
        created_at=WebhookEndpoint.created_at,
        id=WebhookEndpoint.id,
        page=page,
    )
    return ListResponse[WebhookEndpointPublic](
        data=[WebhookEndpointPublic.of(r) for r in rows], has_more=has_more, url=request.url.path
    )


@router.get(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    summary="Retrieve a webhook endpoint",
)
def get_webhook_endpoint(
    endpoint_id: EndpointId, session: SessionDep, caller: Manager
) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.of(
        webhooks.get_endpoint(
            session, endpoint_id, merchant_id=caller.scope, livemode=caller.livemode
        )
    )


@router.post(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    summary="Update a webhook endpoint",
    description="Change its `url` (checked as at registration), `enabled_events` or "
    "`description`, or disable (`disabled: true`) or enable it again (`disabled: false`; "
    "`400 webhook_endpoint_limit` past 16 enabled endpoints). Fields left out stay as they "
    "are; nothing is written unless every change is valid. Deliveries that failed while it was "
    "disabled stay failed: redeliver them.",
)
def update_webhook_endpoint(
    endpoint_id: EndpointId,
    body: WebhookEndpointUpdate,
    session: SessionDep,
    caller: Manager,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
    settings: SettingsDep,
) -> WebhookEndpointPublic:
    endpoint = webhooks.update_endpoint(
        session,
        endpoint_id,
        webhooks.EndpointChanges(
            url=body.url,
            enabled_events=body.enabled_events,
            description=body.description,
            clear_description="description" in body.model_fields_set and body.description is None,
            enabled=None if body.disabled is None else not body.disabled,
        ),
        merchant_id=caller.scope,
        livemode=caller.livemode,
        targets=TargetPolicy(allow_private=settings.webhook_allow_private_targets),
    )
    after_commit.append(cache.clear)  # this process's cached subscriptions
    return WebhookEndpointPublic.of(endpoint)


@router.post(
    "/webhook_endpoints/{endpoint_id}/rotate_secret",
    response_model=WebhookEndpointWithSecret,
    summary="Rotate the signing secret",
    description="Returns the new secret. The old one stops signing immediately, or with "
    "`expires_in` keeps signing beside it for up to 24 hours (deliveries carry both `v1=` "
    "signatures meanwhile).",
)
def rotate_webhook_secret(
    endpoint_id: EndpointId,
    session: SessionDep,
    caller: Manager,
    cipher: CipherDep,
    body: WebhookSecretRotate | None = None,
) -> WebhookEndpointWithSecret:
    endpoint, secret = webhooks.rotate_secret(
        session,
        endpoint_id,
        merchant_id=caller.scope,
        livemode=caller.livemode,
        cipher=cipher,
        grace=timedelta(seconds=(body or WebhookSecretRotate()).expires_in),
    )
    return WebhookEndpointWithSecret.with_secret(endpoint, secret)


@router.get(
    "/webhook_endpoints/{endpoint_id}/deliveries",
    response_model=ListResponse[WebhookDeliveryPublic],
    summary="List an endpoint's deliveries (the delivery log)",
)
def list_webhook_deliveries(
    endpoint_id: EndpointId, request: Request, session: SessionDep, caller: Manager, page: PageDep
) -> ListResponse[WebhookDeliveryPublic]:
    webhooks.get_endpoint(  # 404 if not visible
        session, endpoint_id, merchant_id=caller.scope, livemode=caller.livemode
    )
    rows, has_more = paginate(
        session,
        repository.deliveries_select(endpoint_id, caller.scope),
        created_at=WebhookDelivery.created_at,
        id=WebhookDelivery.id,
        page=page,
    )
    return ListResponse[WebhookDeliveryPublic](
        data=[WebhookDeliveryPublic.of(r) for r in rows], has_more=has_more, url=request.url.path
    )


@router.post(
    "/webhook_endpoints/{endpoint_id}/redeliver_failed",
    response_model=ListResponse[WebhookDeliveryPublic],
    summary="Redeliver every event the endpoint missed",
    description="For each event whose deliveries to this endpoint all failed (none pending or "
    "delivered), queues one new delivery of it (same event id and body), due now, oldest "
    "first: after an outage, or after re-enabling an endpoint that was disabled as failing. "
    "Returns the new deliveries; with `has_more`, call again for the next ones (an event is "
    "never queued twice). A disabled endpoint is refused (`409 webhook_endpoint_disabled`).",
)
def redeliver_failed_webhooks(
    endpoint_id: EndpointId,
    request: Request,
    session: SessionDep,
    caller: Manager,
    body: WebhookRedeliverFailed | None = None,
) -> ListResponse[WebhookDeliveryPublic]:
    body = body or WebhookRedeliverFailed()
    copies, has_more = webhooks.redeliver_failed(
        session,
        endpoint_id,
        merchant_id=caller.scope,
        livemode=caller.livemode,
        created_gte=body.created_gte,
        limit=body.limit,
    )
    return ListResponse[WebhookDeliveryPublic](
        data=[WebhookDeliveryPublic.of(c) for c in copies], has_more=has_more, url=request.url.path
    )


@router.delete(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    summary="Disable a webhook endpoint",
    description="Stops all sending to the endpoint; its delivery log stays readable.",
)
def disable_webhook_endpoint(
    endpoint_id: EndpointId,
    session: SessionDep,
    caller: Manager,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
) -> WebhookEndpointPublic:
    endpoint = webhooks.disable_endpoint(
        session, endpoint_id, merchant_id=caller.scope, livemode=caller.livemode
    )
    after_commit.append(cache.clear)
    return WebhookEndpointPublic.of(endpoint)


@router.get(
    "/webhook_deliveries/{delivery_id}",
    response_model=WebhookDeliveryPublic,
    summary="Retrieve a delivery with its attempt log",
)
def get_webhook_delivery(
    delivery_id: DeliveryId, session: SessionDep, caller: Manager
) -> WebhookDeliveryPublic:
    delivery = repository.get_delivery(
        session, delivery_id, merchant_id=caller.scope, livemode=caller.livemode
    )
    if delivery is None:
        raise NotFound(f"No such webhook delivery: '{delivery_id}'.", param="id")
    return WebhookDeliveryPublic.of(delivery, list(repository.attempts_for(session, delivery.id)))


@router.post(
    "/webhook_deliveries/{delivery_id}/redeliver",
    response_model=WebhookDeliveryPublic,
    summary="Redeliver an event",
    description="Queues the same event (same id and body) again for the same endpoint, due now.",
)
def redeliver_webhook(
    delivery_id: DeliveryId, session: SessionDep, caller: Manager
) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic.of(
        webhooks.redeliver(session, delivery_id, merchant_id=caller.scope, livemode=caller.livemode)
    )
