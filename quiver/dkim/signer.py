"""DkimSigner: signs messages for one domain and selector, relaxed/relaxed (RFC 6376, RFC 8463).

The key is parsed once, when the signer is built; `sign` then does only the
per-message work: split, canonicalise, two SHA-256 hashes and one private-key
operation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

from quiver.dkim.canon import relaxed_body, relaxed_header, relaxed_value, split_message
from quiver.dkim.errors import DkimError
from quiver.dkim.keys import Algorithm, PrivateKey, check_algorithm, load_private_key
from quiver.message import to_crlf

# The header fields signed when a key names none. A field in the list is signed
# only if the message has it; listing more costs nothing.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to",
    "mime-version", "content-type", "content-transfer-encoding", "list-unsubscribe",
    "list-unsubscribe-post", "feedback-id",
)
# RFC 5322 2.1.1: lines SHOULD be at most 78 characters, CRLF excluded.
MAX_LINE = 78
_FIELD = "DKIM-Signature:"
# d= and s= are copied into the header: anything outside hostname characters
# (';', '=', whitespace, CR/LF) would let a setting inject tags or header lines.
_LABELS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Placeholders for t= and bh= in a cached layout: never in a tag (d= and s= are
# hostname characters, header names are printable), the same length as the value.
_T_MARK_CHAR = "\x01"
_BH_MARK_TEXT = "\x02" * 44  # base64 of a SHA-256 digest
_BH_MARK = _BH_MARK_TEXT.encode("ascii")
# Layouts kept per signer: one per distinct set of header-field counts; real
# templates give a handful, and the bound keeps hostile variety from growing it.
MAX_LAYOUTS = 64
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class Unsigned(NamedTuple):
    """A prepared signature: the bytes the private key signs, and where it goes."""

    data: bytes
    head: str  # the header field up to and including "b="
    room: int  # characters of the signature that fit on head's last line


class _Layout(NamedTuple):
    head: str  # the field up to "b=", folded, with the t= and bh= marks
    relaxed: bytes  # its relaxed form as it enters the header hash
    room: int  # characters of the signature that fit on the last line
    t_mark: bytes


class DkimSigner:
    """Signs with one key for one domain and selector. Build it with `from_pem`."""

    __slots__ = ("_key", "_layouts", "_names", "_wanted", "algorithm", "domain", "headers",
                 "selector")

    domain: str
    selector: str
    algorithm: Algorithm
    headers: tuple[str, ...]

    def __init__(
        self, *, domain: str, selector: str, algorithm: str, key: PrivateKey,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    ) -> None:
        for what, value in (("domain", domain), ("selector", selector)):
            if not _LABELS.fullmatch(value) or ".." in value:
                raise DkimError(f"DKIM {what} {value!r} is not a valid DNS name")
        self.algorithm = check_algorithm(algorithm)
        if (self.algorithm == "ed25519-sha256") != isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimError(f"{self.algorithm} cannot sign with a {type(key).__name__}")
        names: list[str] = []
        for name in headers:
            if not _HEADER_NAME.fullmatch(name):
                raise DkimError(f"not a header field name: {name!r}")
            if name.lower() not in names:
                names.append(name.lower())
        if "from" not in names:
            raise DkimError("the signed headers must include 'from' (RFC 6376 5.4)")
        self.domain = domain.lower()
        self.selector = selector
        self.headers = tuple(names)
        self._key = key
        self._names = tuple(n.encode("ascii") for n in names)
        self._wanted = frozenset(self._names)
        self._layouts: dict[tuple[tuple[int, ...], int], _Layout] = {}

    @classmethod
    def from_pem(
        cls, *, domain: str, selector: str, algorithm: str, pem: bytes,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    ) -> DkimSigner:
        """A signer for the unencrypted PEM private key `pem`. Raises DkimError if it can't sign."""
        key = load_private_key(pem, algorithm)
        return cls(domain=domain, selector=selector, algorithm=algorithm, key=key, headers=headers)

    def __repr__(self) -> str:
        return f"DkimSigner(d={self.domain}, s={self.selector}, a={self.algorithm})"

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """The `DKIM-Signature` header field for `message`, CRLF-terminated, to prepend to it.

        `message` is the whole RFC 5322 message; CRLF, LF and lone CR all end a
        line, as on the wire after normalisation. `timestamp` (t=) defaults to now.
        Raises DkimError for a message that has no From, more than one From, a NUL
        byte or a malformed line in its header section.
        """
        unsigned = self.prepare(message, timestamp=timestamp)
        return self.finish(unsigned, self.key_sign(unsigned.data))

    def prepare(self, message: bytes, *, timestamp: int | None = None) -> Unsigned:
        """Everything before the private-key operation: canonical forms and hashes.

        `sign` is `finish(prepare(m), key_sign(prepare(m).data))`; the three steps are
        apart so that `key_sign`, the only costly one, can run on another thread.
        """
        if timestamp is None:
            timestamp = int(time.time())
        elif isinstance(timestamp, bool) or timestamp < 0:
            raise DkimError(f"timestamp must be seconds since the epoch, got {timestamp!r}")
        fields, body = split_message(to_crlf(message))
        wanted = self._wanted
        found: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            if name in wanted:
                if name in found:
                    found[name].append(value)
                else:
                    found[name] = [value]
        froms = len(found.get(b"from", ()))
        if froms != 1:
            raise DkimError(
                "message has no From header field" if froms == 0 else
                f"message has {froms} From header fields; RFC 5322 3.6 allows one"
            )
        hashed: list[bytes] = []
        counts: list[int] = []
        for name in self._names:
            values = found.get(name)
            if values is None:
                counts.append(0)
                continue
            counts.append(len(values))
            # RFC 6376 5.4.2: the n-th listing of a name signs its n-th instance
            # counted from the bottom.
            for value in reversed(values):
                hashed.append(relaxed_header(name, value))
        stamp = str(timestamp)
        layout = self._layout(tuple(counts), len(stamp))
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
        # The signature covers its own header field with b= empty, in relaxed form
        # and without the final CRLF (RFC 6376 3.7).
        hashed.append(layout.relaxed.replace(layout.t_mark, stamp.encode("ascii"))
                      .replace(_BH_MARK, body_hash.encode("ascii")))
        head = layout.head.replace(layout.t_mark.decode("ascii"), stamp).replace(
            _BH_MARK_TEXT, body_hash)
        return Unsigned(data=b"".join(hashed), head=head, room=layout.room)

    def key_sign(self, data: bytes) -> bytes:
        """The private-key operation over the prepared data (RSA releases the GIL in it)."""
        return private_key_sign(self._key, data)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, for a signing worker process
        (quiver.dkim.worker) to load; it never leaves the host."""
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    @staticmethod
    def finish(unsigned: Unsigned, signature: bytes) -> bytes:
        """The header field: the prepared head with the signature folded onto it."""
        text = base64.b64encode(signature).decode("ascii")
        room = unsigned.room
        tail = "".join(f"\r\n {text[i:i + MAX_LINE - 1]}"
                       for i in range(room, len(text), MAX_LINE - 1))
        return f"{unsigned.head}{text[:room]}{tail}\r\n".encode("ascii")

    def _layout(self, counts: tuple[int, ...], stamp_length: int) -> _Layout:
        """The folded header field for a message whose signed fields occur `counts`
        times each, with placeholders of the right length for t= and bh=.

        Folding depends only on the lengths of the tags, and t= and bh= have fixed
        lengths (bh= is always 44 characters), so one layout serves every message
        with the same header fields: built once, then two replaces per message.
        """
        key = (counts, stamp_length)
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        signed_names: list[str] = []
        for name, count in zip(self._names, counts, strict=True):
            signed_names.extend([name.decode("ascii")] * count)
            if name == b"from":
                # Over-signing: one listing more than there are From fields. It
                # stands for an empty field, so a From added in transit breaks
                # the signature instead of becoming the one a reader sees.
                signed_names.append("from")
        t_mark = _T_MARK_CHAR * stamp_length
        tags = [
            ["v=1;"], [f"a={self.algorithm};"], ["c=relaxed/relaxed;"], [f"d={self.domain};"],
            [f"s={self.selector};"], [f"t={t_mark};"],
            # FWS may follow each ':' of h= (RFC 6376 3.5), so the list folds there.
            # (From is listed at least twice, so the list has a first and a last name.)
            [f"h={signed_names[0]}:", *(f"{n}:" for n in signed_names[1:-1]),
             f"{signed_names[-1]};"],
            [f"bh={_BH_MARK_TEXT};"], ["b="],
        ]
        lines = _fold(tags)
        head = "\r\n".join(lines)
        # The marks are not whitespace, so the relaxed form keeps them in place.
        relaxed = b"dkim-signature:" + relaxed_value(head.encode("ascii")[len(_FIELD):])
        layout = _Layout(head=head, relaxed=relaxed, room=max(0, MAX_LINE - len(lines[-1])),
                         t_mark=t_mark.encode("ascii"))
        if len(self._layouts) < MAX_LAYOUTS:
            self._layouts[key] = layout
        return layout


def private_key_sign(key: PrivateKey, data: bytes) -> bytes:
    """`b=`'s signature over the prepared data: RSASSA-PKCS1-v1_5 with SHA-256, or
    Ed25519 over the data's SHA-256 (RFC 8463 3: PureEdDSA signs the hash)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(hashlib.sha256(data).digest())
    return key.sign(data, _PKCS1, _SHA256)


def _fold(tags: list[list[str]]) -> list[str]:
    """The header field's lines: tags separated by SP, folded before a piece that would pass 78."""
    lines: list[str] = []
    line = _FIELD
    for pieces in tags:
        for i, piece in enumerate(pieces):
            text = " " + piece if i == 0 else piece
            if len(line) + len(text) > MAX_LINE and line.strip():
                lines.append(line)
                text = " " + piece
                line = ""
            line += text
    lines.append(line)
    return lines
