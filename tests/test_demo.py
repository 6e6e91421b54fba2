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


def test_a_terminated_demo_leaves_nothing_behind(tmp_path):
    """SIGTERM's default action left the demo's database in the temporary directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        for line in demo.stdout:  # until the API serves: the database is there by then
            if "API listening on" in line or time.monotonic() > deadline:
                break
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("followpay-demo-")]
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        demo.kill()
        demo.wait(timeout=10)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("followpay-demo-")] == []
