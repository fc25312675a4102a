"""PACS addresses and credentials: ``dicomweb+http(s)://host:port/path`` and ``dimse://AET@host:port``.

An address never holds a credential: user names, passwords and tokens come from the environment
(``MEDVISION_PACS_USER`` and ``MEDVISION_PACS_PASSWORD``, or ``MEDVISION_PACS_TOKEN`` for a bearer token)
or from a credentials file that only its owner may read, and are kept in :class:`Credentials`, whose
``repr`` and ``str`` never show them. An address is therefore safe to print, log and put in an error.

Example:
    >>> parse_address("dimse://ORTHANC@pacs.example.org:4242")
    PacsAddress('dimse://ORTHANC@pacs.example.org:4242')
    >>> parse_address("dicomweb+https://pacs.example.org/dicom-web").url
    'https://pacs.example.org:443/dicom-web'
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from medvision.errors import ConfigError

__all__ = [
    "DEFAULT_CALLING_AET",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USER",
    "Credentials",
    "PacsAddress",
    "check_ae_title",
    "load_credentials",
    "parse_address",
    "parse_query",
]

#: medvision's own AE title when ``--calling-aet`` is not given.
DEFAULT_CALLING_AET = "MEDVISION"
ENV_USER = "MEDVISION_PACS_USER"
ENV_PASSWORD = "MEDVISION_PACS_PASSWORD"
ENV_TOKEN = "MEDVISION_PACS_TOKEN"

DICOMWEB = "dicomweb"
DIMSE = "dimse"
_SCHEMES = {
    "dicomweb+http": (DICOMWEB, False),
    "dicomweb+https": (DICOMWEB, True),
    "dimse": (DIMSE, False),
    "dimse+tls": (DIMSE, True),
}
_EXAMPLES = (
    "e.g. dicomweb+http://127.0.0.1:8042/dicom-web, dicomweb+https://pacs.example.org/dicom-web"
    " or dimse://ORTHANC@127.0.0.1:4242 (dimse+tls:// for DICOM TLS)"
)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*$")


def check_ae_title(value: str, option: str = "--calling-aet") -> str:
    """``value`` as an AE title (PS3.5 AE: 1-16 characters, no backslash or control character), stripped.

    Raises:
        ConfigError: naming ``option``, what is wrong and an example.
    """
    title = value.strip(" ")
    problem = None
    if not title:
        problem = "is empty"
    elif len(title) > 16:
        problem = f"has {len(title)} characters, at most 16 are allowed"
    elif "\\" in title:
        problem = "contains a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in title):
        problem = "contains a control character"
    elif any(ord(c) > 126 for c in title):
        problem = "contains a character outside ASCII"
    if problem:
        raise ConfigError(
            option, f"AE title {value!r} {problem}", "use up to 16 ASCII letters or digits, e.g. MEDVISION"
        )
    return title


@dataclass(frozen=True)
class PacsAddress:
    """Where a PACS listens. No credentials: ``str`` is the URI it was parsed from, without any.

    Attributes:
        protocol: ``"dicomweb"`` or ``"dimse"``.
        host: host name or IP address (IPv6 without brackets).
        port: TCP port.
        tls: HTTPS for DICOMweb, DICOM TLS for DIMSE.
        path: the DICOMweb base path (``/dicom-web``), ``""`` for DIMSE or the root.
        ae_title: the called AE title (DIMSE only).
    """

    protocol: str
    host: str
    port: int
    tls: bool = False
    path: str = ""
    ae_title: str | None = None

    @property
    def scheme(self) -> str:
        if self.protocol == DICOMWEB:
            return "dicomweb+https" if self.tls else "dicomweb+http"
        return "dimse+tls" if self.tls else "dimse"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb base URL (``http(s)://host:port/path``); for DIMSE, ``host:port``."""
        if self.protocol != DICOMWEB:
            return self._netloc
        return f"{'https' if self.tls else 'http'}://{self._netloc}{self.path}"

    def __str__(self) -> str:
        if self.protocol == DIMSE:
            return f"{self.scheme}://{quote(self.ae_title or '', safe='')}@{self._netloc}"
        return f"{self.scheme}://{self._netloc}{self.path}"

    def __repr__(self) -> str:
        return f"PacsAddress({str(self)!r})"


def _shown(uri: str) -> str:
    """``uri`` with any ``user:password@`` masked, to quote in a message."""
    return re.sub(r"(://)[^/@]*:[^/@]*@", r"\1<credentials>@", uri)


def _bad(option: str, uri: str, what: str) -> ConfigError:
    return ConfigError(option, f"{_shown(uri)!r} {what}", _EXAMPLES)


def parse_address(uri: str, option: str = "--input") -> PacsAddress:
    """Parse and check a PACS URI.

    Args:
        uri: ``dicomweb+http://host:port/path``, ``dicomweb+https://host[:port]/path``,
            ``dimse://AET@host:port`` or ``dimse+tls://AET@host:port``.
        option: the option or config key it came from, named in errors (``--input``, ``--store``).

    Raises:
        ConfigError: naming ``option``, what is wrong and an example. A URI with a password is refused
            without quoting it.
    """
    text = uri.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in _SCHEMES:
        what = f"has the scheme {scheme!r}" if scheme else "is not a URI (no scheme://)"
        raise _bad(option, text, f"{what}; medvision reads {', '.join(sorted(_SCHEMES))}")
    protocol, tls = _SCHEMES[scheme]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        # urlsplit's message may quote the netloc, which may hold a password: say it in our words.
        raise ConfigError(option, f"{scheme}:// URI has a malformed host or port (1-65535)", _EXAMPLES) from None
    if parts.password is not None or (protocol == DICOMWEB and parts.username is not None):
        shown = f"{scheme}://{parts.hostname or ''}"
        raise ConfigError(
            option,
            f"{shown}...: credentials in the URI are refused (they would end up in logs and shell history)",
            f"set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}, or pass a credentials file",
        )
    if parts.query or parts.fragment:
        hint = " (the search goes in --query)" if parts.query else ""
        raise _bad(option, text, f"has a query or fragment{hint}")
    host = parts.hostname or ""
    if not host:
        raise _bad(option, text, "names no host")
    if not _valid_host(host):
        raise _bad(option, text, f"has an invalid host {host!r}")
    if port is None:
        if protocol == DIMSE:
            raise _bad(option, text, "names no port (DIMSE has no default port; PACS often use 104, 4242 or 11112)")
        port = 443 if tls else 80
    if port == 0:
        raise _bad(option, text, "has port 0")
    if protocol == DIMSE:
        if not parts.username:
            raise _bad(option, text, "names no called AE title (dimse://AET@host:port)")
        if parts.path not in ("", "/"):
            raise _bad(option, text, f"has a path {parts.path!r}; a DIMSE address is dimse://AET@host:port")
        aet = check_ae_title(unquote(parts.username), option)
        return PacsAddress(protocol=DIMSE, host=host, port=port, tls=tls, ae_title=aet)
    path = parts.path.rstrip("/")
    if not _PATH.match(path):
        raise _bad(option, text, f"has an invalid path {path!r}")
    return PacsAddress(protocol=DICOMWEB, host=host, port=port, tls=tls, path=path)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host))


def parse_query(text: str, option: str = "--query") -> dict[str, str]:
    """``"StudyDate=20261125-20261126&ModalitiesInStudy=CR"`` as ``{keyword: value}``.

    Keys are DICOM keywords (``StudyDate``) or tags (``00080020``), values are DICOM matching values
    (ranges ``A-B``, wildcards ``*``). Keys are checked, values are passed on as given.

    Raises:
        ConfigError: a part without ``=``, an unknown keyword or a repeated key.
    """
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    query: dict[str, str] = {}
    for part in (p for p in text.split("&") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                option, f"{part!r} is not KEY=VALUE", "e.g. StudyDate=20261125-20261126&ModalitiesInStudy=CR"
            )
        if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
            key = keyword_for_tag(int(key, 16)) or key.upper()
        elif tag_for_keyword(key) is None:
            raise ConfigError(
                option,
                f"{key!r} is not a DICOM keyword",
                "use keywords such as StudyDate, ModalitiesInStudy, PatientID",
            )
        if key in query:
            raise ConfigError(option, f"{key} is given twice", "give each key once (a range is A-B)")
        query[key] = unquote(value.strip())
    return query


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (``username``, ``password``) or bearer (``token``) credentials.

    ``repr`` and ``str`` show the kind and where they came from, never a user name, password or token.
    """

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "environment"

    @property
    def kind(self) -> str:
        return "bearer" if self.token else "basic"

    def __repr__(self) -> str:
        return f"Credentials(kind={self.kind!r}, source={self.source!r})"

    __str__ = __repr__

    def requests_auth(self) -> Any:
        """A ``requests`` auth object: HTTP basic, or a bearer token in the Authorization header."""
        import requests.auth

        if self.token:
            return _BearerAuth(self.token)
        return requests.auth.HTTPBasicAuth(self.username or "", self.password or "")


class _BearerAuth:
    """``Authorization: Bearer <token>``, added by requests at send time (never in a headers dict we log)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(token=<hidden>)"


def _from_mapping(data: Mapping[str, object], where: str, source: str) -> Credentials:
    def text(key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        # Only strings: YAML reads an unquoted 0123 as the number 83, which would silently change a password.
        if not isinstance(value, str) or not value:
            raise ConfigError(where, f"{key} is not a non-empty string", "write it as a quoted string")
        return value

    user, password, token = text("username"), text("password"), text("token")
    unknown = sorted(set(data) - {"username", "password", "token"})
    if unknown:
        raise ConfigError(
            where, f"unknown key(s) {', '.join(map(repr, unknown))}", "use {username, password} or {token}"
        )
    if token and (user or password):
        raise ConfigError(
            where, "holds both a token and a user name or password", "keep one: {token} or {username, password}"
        )
    if token:
        return Credentials(token=token, source=source)
    if not user or not password:
        missing = "username" if not user else "password"
        raise ConfigError(where, f"has no {missing}", "give both {username, password}, or {token}")
    return Credentials(username=user, password=password, source=source)


def load_credentials(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The PACS credentials: from ``path`` when given, else from the environment, else ``None``.

    Args:
        path: a JSON or YAML file holding ``{username, password}`` or ``{token}``; refused when group or
            others may read it (``chmod 600``).
        env: the environment (``os.environ`` when ``None``): ``MEDVISION_PACS_USER`` with
            ``MEDVISION_PACS_PASSWORD``, or ``MEDVISION_PACS_TOKEN``.

    Raises:
        ConfigError: an unreadable, malformed or too open file, or an incomplete or ambiguous environment.
            The message never quotes a secret.
    """
    if path is not None:
        return _load_file(Path(path))
    env = os.environ if env is None else env
    user, password, token = env.get(ENV_USER) or None, env.get(ENV_PASSWORD) or None, env.get(ENV_TOKEN) or None
    if token and (user or password):
        raise ConfigError(
            ENV_TOKEN,
            f"is set together with {ENV_USER}/{ENV_PASSWORD}",
            "set either the token or the user and password",
        )
    if token:
        return Credentials(token=token, source="environment")
    if user or password:
        if not (user and password):
            missing = ENV_PASSWORD if user else ENV_USER
            raise ConfigError(missing, "is not set (the other half of the basic credentials is)", f"set {missing} too")
        return Credentials(username=user, password=password, source="environment")
    return None


def _load_file(path: Path) -> Credentials:
    where = str(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(where, f"cannot read the credentials file ({exc.strerror})", "check the path") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(where, "the credentials file is not a regular file", "pass a JSON or YAML file")
    if info.st_mode & 0o077:
        raise ConfigError(
            where,
            f"the credentials file may be read by others (mode {stat.filemode(info.st_mode)})",
            f"make it private: chmod 600 {path}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(where, f"cannot read the credentials file ({reason})", "check the file") from None
    # Parser messages quote the offending line, which may be the password: report the position only.
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                where, f"not valid JSON (line {exc.lineno})", 'write {"username": ..., "password": ...}'
            ) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(
                where, f"not valid YAML{line}", "write username: ... and password: ..., or token: ..."
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            where, "the credentials file does not hold a mapping", "write {username, password} or {token}"
        )
    return _from_mapping(data, where, source=where)
