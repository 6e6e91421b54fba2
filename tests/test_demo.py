"""The README's demo tells its whole story on both local chains."""

from __future__ import annotations

import re
import tempfile

import pytest
from rich.console import Console

from api.demo import run_demo


@pytest.mark.parametrize("backend", ["tester", "anvil"])
def test_demo_story(backend, request, tmp_path, monkeypatch):
    if backend == "anvil":
        request.getfixturevalue("anvil_chain")  # fails in CI / skips locally without anvil
    console = Console(record=True, width=220)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's database goes
    outcome = run_demo(backend, console=console)
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    assert len(outcome["settled"]) == 3
    assert outcome["followups"] == {"Ada": ["sent"], "Bob": ["suppressed"], "Chen": ["scheduled"]}
    assert outcome["emails"] == 1
    assert outcome["ticket_id"] is not None
    assert (outcome["csat"], outcome["nps"]) == (0.0, None)  # one rating of 2, no NPS asked
    text = console.export_text()
    assert "no_consent" in text
    assert "held: quiet hours" in text
    assert "payWithPermit" in text
    assert "3: 1 scheduled, 1 sent, 1 suppressed" in text  # every follow-up is counted
    # the checkout link names the server the demo runs, not the settings' default
    (api,) = re.findall(r"API listening on (http://127\.0\.0\.1:\d+)", text)
    assert re.search(re.escape(api) + r"/v1/public/checkout/inv_[0-9a-f]+\.[\w-]{22}\b", text)
