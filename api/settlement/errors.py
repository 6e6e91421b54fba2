"""Settlement errors; each carries its HTTP status for the API's one error handler.

SettlementError
├── InvoiceRequestError (ValueError)      400
├── InvoiceNotFoundError (LookupError)    404
├── UnknownContactError (LookupError)     404
├── MerchantAccountMissingError (LookupError)  409
├── OwnershipProofError (ValueError)      400
├── AccountInUseError                     409
├── AccountExistsError                    409
├── DuplicateOrderError                   409
├── InvoiceStateError                     409
└── ReorgTooDeepError                     500 (the indexer stops)
"""

from __future__ import annotations

__all__ = [
    "AccountExistsError",
    "AccountInUseError",
    "DuplicateOrderError",
    "InvoiceNotFoundError",
    "InvoiceRequestError",
    "InvoiceStateError",
    "MerchantAccountMissingError",
    "OwnershipProofError",
    "ReorgTooDeepError",
    "SettlementError",
    "UnknownContactError",
]


class SettlementError(Exception):
    status_code = 400
    code = "settlement_error"
    type = "invalid_request_error"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class InvoiceRequestError(SettlementError, ValueError):
    code = "invoice_invalid"


class InvoiceNotFoundError(SettlementError, LookupError):
    status_code = 404
    code = "resource_missing"


class UnknownContactError(SettlementError, LookupError):
    """An invoice names a contact the merchant does not have."""

    status_code = 404
    code = "resource_missing"


class MerchantAccountMissingError(SettlementError, LookupError):
    status_code = 409
    code = "merchant_account_missing"


class OwnershipProofError(SettlementError, ValueError):
    code = "invalid_ownership_proof"


class AccountInUseError(SettlementError):
    status_code = 409
    code = "account_address_in_use"
    type = "conflict_error"


class AccountExistsError(SettlementError):
    status_code = 409
    code = "account_exists"
    type = "conflict_error"


class DuplicateOrderError(SettlementError):
    status_code = 409
    code = "duplicate_order"
    type = "conflict_error"


class InvoiceStateError(SettlementError):
    status_code = 409
    code = "invoice_state_invalid"
    type = "conflict_error"


class ReorgTooDeepError(SettlementError):
    """No stored block hash matches the chain any more: the reorg is deeper than the indexer's
    window (or the node is another chain). Continuing would leave orphaned payments settled."""

    status_code = 500
    code = "reorg_too_deep"
    type = "api_error"
