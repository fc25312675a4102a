"""PACS addresses, AE titles, queries and credentials (no server needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medvision.errors import ConfigError
from medvision.pacs import Credentials, PacsAddress, check_ae_title, load_credentials, parse_address, parse_query
from medvision.pacs.uris import ENV_PASSWORD, ENV_TOKEN, ENV_USER

SECRET = "Tr0ub4dor&3-not-in-logs"


@pytest.mark.parametrize(
    ("uri", "expected", "url"),
    [
        (
            "dicomweb+http://127.0.0.1:8042/dicom-web",
            PacsAddress("dicomweb", "127.0.0.1", 8042, path="/dicom-web"),
            "http://127.0.0.1:8042/dicom-web",
        ),
        (
            "dicomweb+https://pacs.example.org/dicom-web/",
            PacsAddress("dicomweb", "pacs.example.org", 443, tls=True, path="/dicom-web"),
            "https://pacs.example.org:443/dicom-web",
        ),
        ("dicomweb+http://[::1]:8042", PacsAddress("dicomweb", "::1", 8042), "http://[::1]:8042"),
        (
            "dimse://ORTHANC@127.0.0.1:4242",
            PacsAddress("dimse", "127.0.0.1", 4242, ae_title="ORTHANC"),
            "127.0.0.1:4242",
        ),
        (
            "DIMSE+TLS://PACS_1@pacs:11112/",
            PacsAddress("dimse", "pacs", 11112, tls=True, ae_title="PACS_1"),
            "pacs:11112",
        ),
        ("dimse://MY%20AE%40X@pacs:104", PacsAddress("dimse", "pacs", 104, ae_title="MY AE@X"), "pacs:104"),
    ],
)
def test_parse_address(uri: str, expected: PacsAddress, url: str) -> None:
    address = parse_address(uri)
    assert address == expected
    assert address.url == url
    assert parse_address(str(address)) == address  # str is a URI that parses back to the same address


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://127.0.0.1:8042/dicom-web", "has the scheme 'http'"),
        ("127.0.0.1:4242", "is not a URI"),
        ("dimse://127.0.0.1:4242", "names no called AE title"),
        ("dimse://ORTHANC@127.0.0.1", "names no port"),
        ("dimse://ORTHANC@127.0.0.1:4242/x", "has a path"),
        ("dimse://A_TITLE_LONGER_THAN_16@host:104", "at most 16 are allowed"),
        ("dimse://BAD%5CAET@host:104", "contains a backslash"),
        ("dimse://BAD%07AET@host:104", "contains a control character"),
        ("dicomweb+http://host:99999/dicom-web", "malformed host or port"),
        ("dicomweb+http://host:0/dicom-web", "has port 0"),
        ("dicomweb+http:///dicom-web", "names no host"),
        ("dicomweb+http://bad_host!:80/x", "invalid host"),
        ("dicomweb+http://host/dicom-web?StudyDate=2026", "the search goes in --query"),
    ],
)
def test_bad_address_names_option_reason_and_example(uri: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(uri, option="--store")
    message = str(info.value)
    assert message.startswith("--store: ")
    assert says in message
    assert "e.g." in message


@pytest.mark.parametrize(
    "uri",
    [f"dicomweb+https://user:{SECRET}@pacs/dicom-web", f"dimse://AET:{SECRET}@pacs:104", f"http://u:{SECRET}@h/x"],
)
def test_credentials_in_uri_are_refused_without_quoting_them(uri: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(uri)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_ae_title_rules() -> None:
    assert check_ae_title(" MEDVISION ") == "MEDVISION"
    assert check_ae_title("A" * 16) == "A" * 16
    for bad in ("", "   ", "A" * 17, "A\\B", "A\nB", "ÄRZTE"):
        with pytest.raises(ConfigError, match="--calling-aet: AE title"):
            check_ae_title(bad)


def test_parse_query() -> None:
    assert parse_query("StudyDate=20261125-20261126&ModalitiesInStudy=CR") == {
        "StudyDate": "20261125-20261126",
        "ModalitiesInStudy": "CR",
    }
    assert parse_query("00100020=P%2A&") == {"PatientID": "P*"}
    with pytest.raises(ConfigError, match="'StudyDat' is not a DICOM keyword"):
        parse_query("StudyDat=2026")
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_query("StudyDate")
    with pytest.raises(ConfigError, match="given twice"):
        parse_query("Modality=CR&Modality=DX")


def test_credentials_from_environment() -> None:
    basic = load_credentials(env={ENV_USER: "reader", ENV_PASSWORD: SECRET})
    assert basic == Credentials(username="reader", password=SECRET)
    bearer = load_credentials(env={ENV_TOKEN: SECRET})
    assert bearer is not None and bearer.token == SECRET and bearer.kind == "bearer"
    assert load_credentials(env={}) is None
    for shown in (basic, bearer):
        assert SECRET not in repr(shown) and SECRET not in str(shown) and "reader" not in repr(shown)
    with pytest.raises(ConfigError, match=ENV_PASSWORD):
        load_credentials(env={ENV_USER: "reader"})
    with pytest.raises(ConfigError, match="together"):
        load_credentials(env={ENV_TOKEN: SECRET, ENV_USER: "reader", ENV_PASSWORD: SECRET})


def test_bearer_token_goes_in_the_authorization_header_only() -> None:
    import requests

    auth = Credentials(token=SECRET).requests_auth()
    prepared = requests.Request("GET", "http://127.0.0.1/x", auth=auth).prepare()
    assert prepared.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(auth)


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_credentials_file_json_and_yaml(tmp_path: Path) -> None:
    json_file = _private(tmp_path / "pacs.json", f'{{"username": "reader", "password": "{SECRET}"}}')
    assert load_credentials(json_file) == Credentials(username="reader", password=SECRET, source=str(json_file))
    yaml_file = _private(tmp_path / "pacs.yaml", f"token: '{SECRET}'\n")
    creds = load_credentials(yaml_file)
    assert creds is not None and creds.token == SECRET
    assert str(yaml_file) in repr(creds) and SECRET not in repr(creds)


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = _private(tmp_path / "pacs.yaml", f"username: reader\npassword: '{SECRET}'\n", mode=0o644)
    with pytest.raises(ConfigError, match="may be read by others") as info:
        load_credentials(path)
    assert "chmod 600" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("bad.json", f'{{"username": "reader", "password": {SECRET}}}', "not valid JSON (line 1)"),
        ("bad.yaml", f"username: reader\npassword: [{SECRET}\n", "not valid YAML"),
        ("int.yaml", "username: reader\npassword: 0123\n", "password is not a non-empty string"),
        ("half.yaml", "username: reader\n", "has no password"),
        ("both.yaml", f"username: reader\npassword: x\ntoken: '{SECRET}'\n", "both a token"),
        ("list.yaml", f"- '{SECRET}'\n", "does not hold a mapping"),
    ],
)
def test_bad_credentials_file_never_quotes_the_secret(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = _private(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        load_credentials(path)
    assert says in str(info.value)
    assert SECRET not in str(info.value)
