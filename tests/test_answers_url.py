"""``--answers https://...`` and ``hostsetup.answers=`` on the kernel command line,
against a real HTTPS server started here (a CA made with openssl for the test,
given with ``--answers-ca``), aimed at the sandbox's private dbus-daemon."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, hostsetup
from tmux import Terminal

from sandbox.core import Sandbox
from wizard.fetch import ANSWERS_LIMIT, cmdline_answers


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A CA (cert, key) made with openssl."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def server_cert(d: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``."""
    key, csr, cert, ext = d / "srv.key", d / "srv.csr", d / "srv.pem", d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey",
                    str(ca[1]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class Server:
    """An HTTPS server on 127.0.0.1 serving ``pages`` (path -> (body, declare length))."""

    def __init__(self, d: Path) -> None:
        self.ca = make_ca(d, "test-ca")
        self.other_ca = make_ca(d, "other-ca")[0]
        cert, key = server_cert(d, self.ca)
        self.pages: dict[str, tuple[bytes, bool]] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path not in pages:
                    self.send_error(404)
                    return
                body, declare = pages[self.path]
                self.send_response(200)
                if declare:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client stopped reading (too large)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path, dbus_host: Sandbox) -> Iterator[Server]:
    srv = Server(tmp_path)
    bus = dbus_host.env["HOSTSETUP_DBUS_ADDRESS"]
    srv.pages["/answers.yaml"] = (
        f"version: 1\nservices:\n  bus: {bus}\n  require: [libvirtd.service]\n".encode(), True)
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def env(tmp_path: Path) -> dict[str, str]:
    """A TMPDIR of the test's own, to see that the private copy is gone at exit."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp_path / "tmp")}


def test_valid_answers_over_https(server: Server, tmp_path: Path) -> None:
    url = server.url + "/answers.yaml"
    res = hostsetup("plan", "--answers", url, "--answers-ca", str(server.ca[0]),
                    env=env(tmp_path))
    assert res.returncode == 4, res.stderr
    assert "start unit libvirtd.service" in res.stdout
    assert list((tmp_path / "tmp").iterdir()) == []  # the private copy was removed


def test_wrong_ca_is_unreachable_naming_the_url(server: Server, tmp_path: Path) -> None:
    url = server.url + "/answers.yaml"
    for extra in (["--answers-ca", str(server.other_ca)], []):  # another CA, the system's
        res = hostsetup("plan", "--answers", url, *extra)
        assert res.returncode == 5, res.stderr
        assert f"hostsetup: {url}: server certificate not verified" in res.stderr
        assert "Traceback" not in res.stderr


def test_too_large_and_404_are_invalid_answers(server: Server, tmp_path: Path) -> None:
    big = b"# padding\n" * (ANSWERS_LIMIT // 10 + 10)
    server.pages["/big.yaml"] = (big, True)
    server.pages["/big-undeclared.yaml"] = (big, False)
    ca = ["--answers-ca", str(server.ca[0])]
    report = tmp_path / "r.json"
    for page in ("/big.yaml", "/big-undeclared.yaml"):
        res = hostsetup("apply", "--answers", server.url + page, *ca, "--report", str(report))
        assert res.returncode == 3, res.stderr
        assert f"{server.url}{page}: " in res.stderr
        assert f"more than the {ANSWERS_LIMIT} " in res.stderr
    assert '"exit_code": 3' in report.read_text()
    res = hostsetup("apply", "--answers", server.url + "/nothing.yaml", *ca)
    assert res.returncode == 3
    assert f"{server.url}/nothing.yaml: HTTP 404 Not Found" in res.stderr


def test_fetched_answers_follow_the_answers_rules(server: Server, tmp_path: Path) -> None:
    server.pages["/clear.yaml"] = (b"version: 1\nvsphere_network:\n  server: vc\n"
                                   b"  user: root\n  password: hunter2\n", True)
    server.pages["/broken.yaml"] = (b"version: 1\nservices: [\n", True)
    ca = ["--answers-ca", str(server.ca[0])]
    res = hostsetup("plan", "--answers", server.url + "/clear.yaml", *ca)
    assert res.returncode == 3
    assert "vsphere_network.password (line 5): must be a secret reference" in res.stderr
    assert "hunter2" not in res.stderr
    res = hostsetup("plan", "--answers", server.url + "/broken.yaml", *ca)
    assert res.returncode == 3
    assert f"{server.url}/broken.yaml (line " in res.stderr and "not valid YAML" in res.stderr
    assert "hostsetup-answers-" not in res.stderr  # the URL is named, not the private copy


def test_plain_http_and_credentials_are_refused() -> None:
    res = hostsetup("plan", "--answers", "http://127.0.0.1:9/a.yaml")
    assert res.returncode == 2 and "only https:// URLs are fetched" in res.stderr
    res = hostsetup("plan", "--answers", "https://me:secret@127.0.0.1:9/a.yaml")
    assert res.returncode == 2 and "no credentials in the URL" in res.stderr
    assert "secret" not in res.stderr.replace("no credentials", "")


def test_kernel_command_line(tmp_path: Path) -> None:
    f = tmp_path / "cmdline"
    f.write_text('BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet hostsetup.answers=https://h/a.yaml '
                 'hostsetup.answers_ca=/etc/ca.pem console="ttyS0,115200"\n')
    assert cmdline_answers(f) == ("https://h/a.yaml", Path("/etc/ca.pem"))
    f.write_text("root=/dev/sda1 hostsetup.answers=/root/answers.yaml\n")
    assert cmdline_answers(f) == ("/root/answers.yaml", None)
    f.write_text("root=/dev/sda1 quiet\n")
    assert cmdline_answers(f) == (None, None)
    assert cmdline_answers(tmp_path / "missing") == (None, None)


def test_wizard_takes_answers_from_the_kernel_command_line(
        server: Server, dbus_host: Sandbox, tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    # a URL that is not there: the wizard says so, naming the URL (exit 3)
    cmdline.write_text(f"quiet hostsetup.answers={server.url}/gone.yaml "
                       f"hostsetup.answers_ca={server.ca[0]}\n")
    res = hostsetup(env={"HOSTSETUP_PROC_CMDLINE": str(cmdline)})
    assert res.returncode == 3 and f"{server.url}/gone.yaml: HTTP 404" in res.stderr
    # the answers are used: on a terminal, the services step is prefilled with the bus
    server.pages["/answers.yaml"] = (server.pages["/answers.yaml"][0]
                                     + b"interactive: [services]\n", True)
    cmdline.write_text(f"quiet hostsetup.answers={server.url}/answers.yaml "
                       f"hostsetup.answers_ca={server.ca[0]}\n")
    t = Terminal(f"HOSTSETUP_PROC_CMDLINE={cmdline} {ROOT}/.venv/bin/python -m wizard "
                 f"--log {tmp_path}/wizard.log", cwd=tmp_path)
    try:
        t.wait_for("[*] Host services")
        t.send("F12")
        screen = t.wait_for("Host services: connection")
        # the field shows the end of the sandbox's bus address (default: "system")
        assert dbus_host.env["HOSTSETUP_DBUS_ADDRESS"][-17:] == "system_bus_socket"
        assert "system_bus_socket" in screen
        t.send("C-c")
        assert t.exit_code() == 130
    finally:
        t.close()
