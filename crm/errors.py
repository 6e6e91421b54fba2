"""CRM exception tree.

Every error carries the HTTP status, a stable snake_case ``code`` and an error ``type`` so the API
layer renders them with one handler as ``{"error": {"type", "code", "message", "param"}}``::

    CRMError(Exception)                                 500 api_error
    ├── InvalidRequest(CRMError, ValueError)            400 invalid_request_error
    │   ├── InvalidEmail / InvalidPhone / InvalidTimeZone / InvalidWalletAddress
    │   ├── InvalidChoice          (unknown purpose, channel, action, legal basis, trigger…)
    │   ├── InvalidRating          (rating 1-5, NPS 0-10)
    │   ├── InvalidPolicy          (e.g. no non-personalised default channel order)
    │   └── FeedbackTokenExpired
    ├── NotFound(CRMError, LookupError)                 404 not_found_error
    │   ├── MerchantNotFound / ContactNotFound / PolicyNotFound
    │   ├── FollowUpNotFound / FeedbackNotFound / TicketNotFound
    │   └── FeedbackTokenInvalid
    ├── Conflict(CRMError)                              409 conflict_error
    │   ├── DuplicateContact / DuplicateWallet / DuplicatePolicy
    │   ├── InvalidTransition      (state machine refuses the move)
    │   ├── FeedbackTokenUsed / FeedbackFrozen / FeedbackNotSubmitted
    │   └── ContactErased
    └── ConsentChainBroken                              500 api_error

Messages never contain personal data or secrets.
"""

from __future__ import annotations

__all__ = [
    "CRMError",
    "Conflict",
    "ConsentBusy",
    "ConsentChainBroken",
    "ContactErased",
    "ContactNotFound",
    "DuplicateContact",
    "DuplicatePolicy",
    "DuplicateWallet",
    "FeedbackFrozen",
    "FeedbackNotFound",
    "FeedbackNotSubmitted",
    "FeedbackPaymentReversed",
    "FeedbackTokenExpired",
    "FeedbackTokenInvalid",
    "FeedbackTokenUsed",
    "FollowUpNotFound",
    "InvalidChoice",
    "InvalidEmail",
    "InvalidPhone",
    "InvalidPolicy",
    "InvalidRating",
    "InvalidRequest",
    "InvalidTimeZone",
    "InvalidTransition",
    "InvalidWalletAddress",
    "MerchantNotFound",
    "NotFound",
    "PolicyNotFound",
    "TicketNotFound",
]


class CRMError(Exception):
    status_code: int = 500
    code: str = "crm_error"
    type: str = "api_error"
    param: str | None = None

    def __init__(
        self, message: str = "", *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            }
        }


class InvalidRequest(CRMError, ValueError):
    status_code = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidEmail(InvalidRequest):
    code = "invalid_email"
    param = "email"


class InvalidPhone(InvalidRequest):
    code = "invalid_phone"
    param = "phone"


class InvalidTimeZone(InvalidRequest):
    code = "invalid_time_zone"
    param = "time_zone"


class InvalidWalletAddress(InvalidRequest):
    code = "invalid_wallet_address"
    param = "wallet_addresses"


class InvalidChoice(InvalidRequest):
    code = "invalid_choice"


class InvalidRating(InvalidRequest):
    code = "invalid_rating"
    param = "rating"


class InvalidPolicy(InvalidRequest):
    code = "invalid_policy"


class FeedbackTokenExpired(InvalidRequest):
    code = "feedback_token_expired"
    param = "token"


class NotFound(CRMError, LookupError):
    status_code = 404
    code = "not_found"
    type = "not_found_error"


class MerchantNotFound(NotFound):
    code = "merchant_not_found"


class ContactNotFound(NotFound):
    code = "contact_not_found"


class PolicyNotFound(NotFound):
    code = "policy_not_found"


class FollowUpNotFound(NotFound):
    code = "followup_not_found"


class FeedbackNotFound(NotFound):
    code = "feedback_not_found"


class TicketNotFound(NotFound):
    code = "ticket_not_found"


class FeedbackTokenInvalid(NotFound):
    code = "feedback_token_invalid"
    param = "token"


class Conflict(CRMError):
    status_code = 409
    code = "conflict"
    type = "conflict_error"


class DuplicateContact(Conflict):
    code = "contact_email_taken"
    param = "email"


class DuplicateWallet(Conflict):
    code = "wallet_address_taken"
    param = "wallet_addresses"


class DuplicatePolicy(Conflict):
    code = "policy_exists"
    param = "trigger"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class FeedbackTokenUsed(Conflict):
    code = "feedback_token_used"
    param = "token"


class FeedbackPaymentReversed(Conflict):
    """The link's payment is no longer on chain (a reorg) or its invoice was invalidated: there
    is no sale to rate or reward."""

    code = "feedback_payment_reversed"
    param = "token"


class FeedbackFrozen(Conflict):
    code = "feedback_frozen"


class FeedbackNotSubmitted(Conflict):
    code = "feedback_not_submitted"


class ContactErased(Conflict):
    code = "contact_erased"


class ConsentBusy(Conflict):
    """Appends kept landing while the ledger was read for verification: retry."""

    code = "consent_ledger_busy"


class ConsentChainBroken(CRMError):
    code = "consent_chain_broken"
