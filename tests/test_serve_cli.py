"""``medden serve`` start-up errors: one ``error:`` line and a non-zero exit, before anything is received."""
from __future__ import annotations

import socket

import pytest

from medden.cli import main
from medden.serve import parse_destination
from medden.errors import ParameterError


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def echo_scp():
    """A minimal C-ECHO-only SCP standing in for a live forward destination."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="DEST")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    yield server.server_address[1]
    server.shutdown()


def test_unreachable_forward_destination_is_one_error_line(capsys, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    code, err = run(capsys, "serve", "--forward", f"127.0.0.1:{dead}:PACS", "--port", 0, "--spool", tmp_path / "q")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith(f"error: forward destination 127.0.0.1:{dead}:PACS does not answer C-ECHO")


def test_port_in_use_is_one_error_line(capsys, tmp_path, echo_scp):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run(capsys, "serve", "--forward", f"127.0.0.1:{echo_scp}:DEST", "--host", "127.0.0.1",
                        "--port", port, "--spool", tmp_path / "q")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith(f"error: cannot listen on port {port}")


@pytest.mark.parametrize("text", ["pacs:4242", "pacs:port:AET", "pacs:0:AET", "pacs:104:" + "A" * 17, "::"])
def test_bad_forward_destination_is_refused(text):
    with pytest.raises(ParameterError, match="--forward"):
        parse_destination(text)


def test_forward_destination_is_parsed():
    dest = parse_destination("pacs.example.org:4242:ORTHANC")
    assert (dest.host, dest.port, dest.ae_title) == ("pacs.example.org", 4242, "ORTHANC")


def test_unknown_method_fails_before_listening(capsys, tmp_path):
    code, err = run(capsys, "serve", "--forward", "127.0.0.1:1:PACS", "--method", "no-such-method",
                    "--spool", tmp_path / "q")
    assert code == 2 and err.startswith("error: ") and "no-such-method" in err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("option, value, expected", [("--quiet-time", 0, "quiet must be a positive"),
                                                     ("--port", 70000, "--port must be"),
                                                     ("--ae-title", "A" * 17, "--ae-title must be")])
def test_bad_node_settings_are_one_error_line(capsys, tmp_path, option, value, expected):
    code, err = run(capsys, "serve", "--forward", "127.0.0.1:1:PACS", option, value, "--spool", tmp_path / "q")
    assert code == 2 and err.startswith("error: ") and expected in err and err.strip().count("\n") == 0


def test_unwritable_spool_is_one_error_line(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    code, err = run(capsys, "serve", "--forward", "127.0.0.1:1:PACS", "--spool", tmp_path / "file" / "q")
    assert code == 2 and err.startswith(f"error: cannot use the spool folder {tmp_path / 'file' / 'q'}")
