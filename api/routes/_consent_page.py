"""The small HTML pages behind the messages' links: for "Stop these messages" a confirmation
whose button POSTs the withdrawal and its result; for a rating link a confirmation with the
rating preselected whose button POSTs it and the recorded answer; an error. Opening a page
changes nothing (mail scanners open links). No script, no outside resources, no framing; they
show only what the JSON of the same link shows (the consents' states, the answer)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from starlette.responses import HTMLResponse

from api.schemas.public import PublicConsentState, PublicFeedback

__all__ = [
    "PAGE_HEADERS",
    "confirm_page",
    "done_page",
    "error_page",
    "html_page",
    "rated_page",
    "rating_page",
    "wants_html",
]

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the URL holds the token
    "Cache-Control": "no-store",
}
_STYLE = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"


def wants_html(accept: str | None) -> bool:
    """A browser's form POST (it asks for ``text/html``); API clients and RFC 8058 one-click
    POSTs from mail providers get JSON."""
    return "text/html" in (accept or "")


def html_page(
    title: str,
    body: str,
    status: int = 200,
    *,
    headers: dict[str, str] | None = None,
    style: str = "",
) -> HTMLResponse:
    """One customer page: ``body`` is trusted HTML (callers escape what they put in it)."""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{escape(title)}</title>'
        f"<style>{_STYLE}{style}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=headers or PAGE_HEADERS)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return html_page(title, body, status)


def _states(consents: Sequence[PublicConsentState]) -> str:
    if not consents:
        return "<p>No consents are recorded for you.</p>"
    items = "".join(
        f"<li>{escape(c.purpose.replace('_', ' '))} by {escape(c.channel.replace('_', ' '))}: "
        f"{escape(c.state)}</li>"
        for c in consents
    )
    return f"<p>Your choices now:</p><ul>{items}</ul>"


def confirm_page(consents: Sequence[PublicConsentState]) -> HTMLResponse:
    """Opening the link changes nothing (mail scanners open links); the button POSTs to the
    page's own URL (no ``action``: right behind any proxy prefix) and withdraws."""
    form = '<form method="post"><button type="submit">Stop all messages</button></form>'

    text = "<p>One click withdraws every consent you gave: no more follow-ups of any kind.</p>"
    return _page("Stop these messages?", text + form + _states(consents))


def done_page(consents: Sequence[PublicConsentState]) -> HTMLResponse:
    text = "<p>Done: you will receive no more messages. Nothing else is needed.</p>"
    return _page("You are unsubscribed", text + _states(consents))


_LABELS = {1: "very poor", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}


def rating_page(chosen: int | None) -> HTMLResponse:
    """The rating link's page: the link's rating checked; the button POSTs the form to the
    page's own URL (``rating=N``) and records it."""
    options = "".join(
        f'<p><label><input type="radio" name="rating" value="{n}" required'
        f"{' checked' if n == chosen else ''}> {n} {'&#9733;' * n} ({_LABELS[n]})</label></p>"
        for n in range(1, 6)
    )
    form = (
        '<form method="post"><fieldset><legend>Your rating</legend>'
        f'{options}</fieldset><button type="submit">Send my rating</button></form>'
    )
    text = (
        "<p>Check your choice and send it. Answering earns reward points, whatever you answer.</p>"
    )
    return _page("How did it go?", text + form)


def rated_page(answer: PublicFeedback) -> HTMLResponse:
    """The recorded answer (also what a second visit shows: it changes nothing)."""
    parts = [f"<p>{escape(answer.message)}</p>"]
    if answer.rating is not None:
        parts.append(f"<p>Your rating: {answer.rating} of 5.</p>")
    if answer.reward_points:
        parts.append(f"<p>{answer.reward_points} reward points credited.</p>")
    return _page("Thank you", "".join(parts))


def error_page(status: int, message: str) -> HTMLResponse:
    return _page("This link does not work", f"<p>{escape(message)}</p>", status)
