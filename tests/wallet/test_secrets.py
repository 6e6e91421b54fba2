"""Secrets redact themselves everywhere a value can leak."""

from __future__ import annotations

import copy
import logging
import pickle
import traceback

import pytest

from wallet.errors import InvalidPrivateKeyError
from wallet.secrets import REDACTED, PrivateKey, SecretBytes, SecretStr

MNEMONIC = "test test test test test test test test test test test junk"
KEY_HEX = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


class TestSecretStr:
    def test_repr_str_format(self):
        secret = SecretStr(MNEMONIC)
        for text in (
            repr(secret),
            str(secret),
            f"{secret}",
            f"{secret!r}",
            "%s" % (secret,),  # noqa: UP031 - the %-operator path matters
            f"{secret}",
            f"{secret:>80}",
            str([secret]),
            str({"m": secret}),
        ):
            assert "test test" not in text
            assert REDACTED in text

    def test_reveal_and_compare(self):
        assert SecretStr(MNEMONIC).reveal() == MNEMONIC
        assert SecretStr("a") == SecretStr("a")
        assert SecretStr("a") != SecretStr("b")
        assert len(SecretStr("abc")) == 3

    def test_not_hashable_not_picklable_immutable(self):
        secret = SecretStr(MNEMONIC)
        with pytest.raises(TypeError):
            hash(secret)
        with pytest.raises(TypeError):
            pickle.dumps(secret)
        with pytest.raises(AttributeError):
            secret._value = "x"  # type: ignore[misc]
        assert copy.deepcopy(secret) is secret

    def test_logging_and_tracebacks(self, caplog):
        secret = SecretStr(MNEMONIC)
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("t").debug("value %s %r", secret, secret)
        assert "test test" not in caplog.text

        def boom(value):
            raise ValueError(f"bad {value}")

        with pytest.raises(ValueError, match="bad") as info:
            boom(secret)
        tb = traceback.TracebackException.from_exception(info.value, capture_locals=True)
        text = "".join(tb.format())
        assert "test test" not in text

    def test_bytes(self):
        secret = SecretBytes(bytes.fromhex(KEY_HEX))
        assert KEY_HEX not in repr(secret)
        assert KEY_HEX not in str(secret)


class TestPrivateKey:
    def test_repr_shows_address_only(self):
        key = PrivateKey("0x" + KEY_HEX)
        assert key.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        for text in (repr(key), str(key), f"{key}", f"{key:s}"):
            assert KEY_HEX not in text.lower()
            assert key.address in text

    def test_equal_and_from_forms(self):
        raw = bytes.fromhex(KEY_HEX)
        assert PrivateKey(raw) == PrivateKey(KEY_HEX) == PrivateKey(SecretBytes(raw))
        assert PrivateKey(raw).reveal_bytes().reveal() == raw

    def test_not_picklable(self):
        with pytest.raises(TypeError):
            pickle.dumps(PrivateKey(KEY_HEX))

    @pytest.mark.parametrize(
        "bad", ["zz" * 32, "00" * 32, "ff" * 32, "aa" * 31, b"\x01" * 33, KEY_HEX + "g"]
    )
    def test_bad_keys_do_not_echo(self, bad):
        with pytest.raises(InvalidPrivateKeyError) as info:
            PrivateKey(bad)
        assert (bad if isinstance(bad, str) else bad.hex()) not in str(info.value)

    def test_signature_matches_eth_keys(self):
        from eth_keys import keys

        key = PrivateKey(KEY_HEX)
        digest = b"\x11" * 32
        assert key.sign_msg_hash(digest) == keys.PrivateKey(bytes.fromhex(KEY_HEX)).sign_msg_hash(
            digest
        )
