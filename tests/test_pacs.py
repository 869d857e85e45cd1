"""`ptxfast score` against real Orthanc servers: instances found by QIDO-RS and fetched by
WADO-RS score as the same files do from a folder; the SRs go back by STOW-RS and C-STORE into
each source's study, once, across --resume and kill -9; credentials come from netrc and never
show; a server that is down or refuses is one line.

Two servers are started for the module (A: the PACS the phantoms are uploaded to, also a
STOW-RS target; B: a C-STORE target), and one with authentication for the credential test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fresh_process import wait_for_lines
from orthanc import Orthanc, free_port

from ptxfast.cli import cli
from ptxfast.data import synth
from ptxfast.score import dicomweb, pacs, score_folder, senders

N = 24
PASSWORD = "s3cret-Pw-27"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifact(rn34un_artifact) -> Path:
    return rn34un_artifact()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """24 tiny phantoms: SOPInstanceUID → file."""
    root = tmp_path_factory.mktemp("phantoms")
    synth.write_dataset(root, N, seed=3, size=64, positive_rate=0.5, workers=1)
    import pydicom

    found = {}
    for p in sorted(root.rglob("*.dcm")):
        found[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
    assert len(found) == N
    return found


@pytest.fixture(scope="module")
def servers(tmp_path_factory, phantoms):
    """(A, B): A holds the phantoms (DICOMweb source and STOW-RS target), B takes C-STORE."""
    base = tmp_path_factory.mktemp("orthanc")
    a = Orthanc(base / "a", "ORTHA")
    try:
        b = Orthanc(base / "b", "ORTHB")
    except BaseException:
        a.stop()
        raise
    try:
        a.upload(phantoms.values())
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def from_folder(phantoms, artifact, tmp_path_factory) -> dict[str, float]:
    """SOPInstanceUID → probability, scoring the phantoms from a folder."""
    folder = next(iter(phantoms.values())).parent
    out = tmp_path_factory.mktemp("folder") / "p.csv"
    score_folder(
        folder, out, model=artifact, device="cpu", batch_size=2, workers=1, model_only_iters=0
    )
    return {r["sop_instance_uid"]: float(r["probability"]) for r in _rows(out)}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _args(url: str, out: Path, artifact: Path, *extra: str) -> list[str]:
    return [
        "score", url, "--out", str(out), "--model", str(artifact), "--device", "cpu",
        "--batch-size", "2", "--workers", "1", "--output-workers", "0",
        "--model-only-iters", "0", *extra,
    ]  # fmt: skip


def _one_per_image(server: Orthanc, phantoms) -> None:
    """Exactly one SR per phantom on `server`, each in its source's study."""
    import pydicom

    srs = server.datasets("SR")
    sources = {}
    for sr in srs:
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        (source,) = {
            s.ReferencedSOPInstanceUID
            for series in evidence.ReferencedSeriesSequence
            for s in series.ReferencedSOPSequence
        }
        assert source not in sources, f"two SRs of {source}"
        sources[source] = sr
        original = pydicom.dcmread(phantoms[source], stop_before_pixels=True)
        assert sr.StudyInstanceUID == original.StudyInstanceUID
    assert sorted(sources) == sorted(phantoms)


def test_score_from_dicomweb_and_send_back(servers, phantoms, artifact, from_folder, tmp_path):
    a, b = servers
    out = tmp_path / "p.csv"
    sends = ["--send", a.dicomweb, "--send", b.dicom]
    args = _args(a.dicomweb, out, artifact, "--dicom-sr", str(tmp_path / "sr"), *sends)
    res = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert len(rows) == N and all(r["error"] == "" for r in rows)
    for r in rows:
        study, series, sop = r["path"].split("/")[1::2]
        assert r["path"] == dicomweb.instance_path(study, series, sop)
        assert r["sop_instance_uid"] == sop
        assert abs(float(r["probability"]) - from_folder[sop]) <= 1e-5
    for server in (a, b):
        _one_per_image(server, phantoms)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["root"] == a.dicomweb
    assert [(t["target"], t["sent"], t["left"]) for t in s["sent"]] == [
        (a.dicomweb, N, 0), (b.dicom, N, 0)
    ]  # fmt: skip
    assert not dicomweb.spool_dir(out).exists()  # fetched files are gone

    again = CliRunner().invoke(cli, [*args, "--resume", "--json", str(tmp_path / "s2.json")])
    assert again.exit_code == 0, again.output
    assert len(_rows(out)) == N
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert s2["already"] == N and [t["sent"] for t in s2["sent"]] == [0, 0]
    assert [t["already"] for t in s2["sent"]] == [N, N]
    for server in (a, b):
        assert len(server.find("SR")) == N  # nothing added


_SLOW_SENDS = """
import sys, time
from ptxfast.score import senders
for name in ("_stow", "_c_store"):
    def slow(target, options, make=getattr(senders, name)):
        send = make(target, options)
        def sent_then_wait(datasets):
            refused = send(datasets)
            time.sleep(0.5)  # stored, not yet recorded: a kill here must not duplicate
            return refused
        return sent_then_wait
    setattr(senders, name, slow)
senders._CHUNK = 4
from ptxfast.cli import main
main(sys.argv[1:])
"""


def test_kill_while_sending_then_resume(servers, phantoms, artifact, tmp_path):
    a, b = servers
    for server in (a, b):
        server.delete("SR")
    out = tmp_path / "p.csv"
    sent = out.with_name(out.name + ".sent")
    args = _args(
        a.dicomweb, out, artifact, "--dicom-sr", str(tmp_path / "sr"),
        "--send", a.dicomweb, "--send", b.dicom,
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SENDS, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_lines(sent, 4, proc)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    acked = sent.read_bytes().count(b"\n")
    assert 4 <= acked < 2 * N
    res = CliRunner().invoke(cli, [*args, "--resume", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert len(_rows(out)) == N
    s = json.loads((tmp_path / "s.json").read_text())
    assert sum(t["already"] for t in s["sent"]) == acked  # what was acknowledged is not resent
    assert all(t["sent"] + t["already"] == N and t["left"] == 0 for t in s["sent"])
    for server in (a, b):
        _one_per_image(server, phantoms)


def test_target_down_ends_in_one_line_and_resume_sends_the_rest(
    servers, phantoms, artifact, tmp_path
):
    a, _ = servers
    port = free_port()
    target = f"dicom://ORTHC@127.0.0.1:{port}"
    out = tmp_path / "p.csv"
    study = next(iter(phantoms.values()))
    import pydicom

    study_uid = str(pydicom.dcmread(study, stop_before_pixels=True).StudyInstanceUID)
    args = _args(
        a.dicomweb, out, artifact, "--dicom-sr", str(tmp_path / "sr"), "--send", target,
        "--study", study_uid, "--dicom-seg", str(tmp_path / "seg"),
    )  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 result(s) not sent to " + target in errors[0]  # SEG + SR
    assert "--resume" in errors[0]
    assert len(_rows(out)) == 1  # the row is kept
    c = Orthanc(tmp_path / "c", "ORTHC", dicom_port=port)
    try:
        res = CliRunner().invoke(cli, [*args, "--resume"])
        assert res.exit_code == 0, res.output
        (sr,), (seg,) = c.datasets("SR"), c.datasets("SEG")
        assert sr.StudyInstanceUID == seg.StudyInstanceUID == study_uid
        referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        assert seg.SOPInstanceUID in {
            s.ReferencedSOPInstanceUID for x in referenced for s in x.ReferencedSOPSequence
        }
    finally:
        c.stop()


def test_credentials_from_netrc_and_never_shown(phantoms, artifact, tmp_path, forking):
    # `forking`: the decoding workers read $NETRC; a forkserver started by an earlier test
    # (once gRPC is loaded) would hand them its own, older environment.
    monkeypatch = forking
    for var in (pacs.TOKEN_ENV, pacs.USER_ENV, pacs.PASSWORD_ENV):
        monkeypatch.delenv(var, raising=False)
    server = Orthanc(tmp_path / "auth", "ORTHS", users={"alice": PASSWORD})
    try:
        server.upload(list(phantoms.values())[:2])
        assert server.get("/system", auth=None).status_code == 401  # authentication is on
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login alice password {PASSWORD}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        out = tmp_path / "p.csv"
        args = _args(
            server.dicomweb, out, artifact, "--dicom-sr", str(tmp_path / "sr"),
            "--send", server.dicomweb, "--json", str(tmp_path / "s.json"),
        )  # fmt: skip
        ok = CliRunner().invoke(cli, args)
        assert ok.exit_code == 0, ok.output
        assert len(_rows(out)) == 2 and len(server.find("SR")) == 2
        written = [ok.output, out.read_text(), (tmp_path / "s.json").read_text()]

        netrc.write_text("machine 127.0.0.1 login alice password wrong-one\n")
        bad = CliRunner().invoke(cli, [*_args(server.dicomweb, tmp_path / "q.csv", artifact)])
        assert bad.exit_code == 1
        assert _lines(bad.output)[0].startswith("error:") and len(_lines(bad.output)) == 1
        assert "HTTP 401" in bad.output and "netrc" in bad.output
        for text in [*written, bad.output]:
            assert PASSWORD not in text and "wrong-one" not in text

        with_creds = server.dicomweb.replace("://", f"://alice:{PASSWORD}@")
        refused = CliRunner().invoke(cli, _args(with_creds, tmp_path / "r.csv", artifact))
        assert refused.exit_code == 1 and "do not belong in a URL" in refused.output
        assert PASSWORD not in refused.output
    finally:
        server.stop()


def test_server_down_and_missing_library_are_one_line(artifact, tmp_path, monkeypatch):
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    res = CliRunner().invoke(cli, _args(down, tmp_path / "p.csv", artifact))
    assert res.exit_code == 1 and len(_lines(res.output)) == 1
    assert "cannot query the DICOMweb server" in res.output and "connection refused" in res.output
    assert not (tmp_path / "p.csv").exists()

    monkeypatch.setitem(sys.modules, "pynetdicom", None)  # as if not installed
    res = CliRunner().invoke(cli, _args(down, tmp_path / "p.csv", artifact))
    assert res.exit_code == 1 and len(_lines(res.output)) == 1
    assert "pip install 'ptxfast[pacs]'" in res.output


def test_an_instance_that_cannot_be_fetched_is_an_error_row(servers, tmp_path):
    import torch

    a, _ = servers
    options = pacs.PacsOptions(url=a.dicomweb, attempts=2, backoff=0.01)
    found = dicomweb.find_instances(options)
    assert len(found.inputs) == N and found.candidates == N
    missing = dicomweb.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    paths = [found.inputs[0], missing]
    state = torch.zeros(2, dtype=torch.int64)
    files = dicomweb.FetchingFiles(tmp_path, paths, 64, state, options=options)
    (img, meta, _), (none, failed, _) = files.__getitems__([0, 1])
    assert (
        img is not None and meta.error is None and meta.sop_instance_uid == paths[0].split("/")[-1]
    )
    assert none is None and failed.sop_instance_uid == "1.2.3.4.5"
    assert failed.error.startswith("could not fetch from") and "HTTP 404" in failed.error
    spool = dicomweb.Spool(tmp_path / "spool")
    (spool.root / paths[0]).parent.mkdir(parents=True)
    (spool.root / paths[0]).write_bytes(b"x")
    spool.release([[paths[0]]])
    assert not (spool.root / paths[0]).exists()  # the file; its folders stay (no race)
    assert (spool.root / paths[0]).parent.is_dir()
    spool.remove()
    assert not spool.root.exists()  # the folders go with the spool at the end


def test_a_full_disk_under_the_sent_record_is_cut_back_and_said_whole(tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    from ptxfast.score.ledger import WriteFailed

    path = tmp_path / "p.csv.sent"
    record = senders.SentLedger(path, fresh=True)
    record.record("T", [("SR", "a.dcm", "1.2")])
    real, landed = record.file, []

    class Full:  # part of a line lands, then the disk is full
        def write(self, data):
            if not landed:
                landed.append(data[:5])
                return real.write(bytes(data[:5]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(real, name)

    record.file = Full()
    with pytest.raises(WriteFailed, match=r"p.csv.sent: No space left on device \(ENOSPC\)"):
        record.record("T", [("SR", "b.dcm", "1.3")])
    assert landed and record.acked == {("T", "SR", "a.dcm")}
    assert path.read_text() == '["T", "SR", "a.dcm", "1.2"]\n'  # the torn line is gone

    # A sender whose record cannot be written: the target's error is that one line, whole.
    monkeypatch.setattr(senders, "_stow", lambda target, options: lambda datasets: set())
    monkeypatch.setattr(senders, "_read", lambda items: [SimpleNamespace(SOPInstanceUID="1.3")])
    options = pacs.PacsOptions(attempts=1, backoff=0)
    sender = senders.Sender(options, record, [], [senders.Target(name="T", url="http://x")])
    sender.queues["T"].put(senders._Item("SR", "b.dcm", tmp_path / "b.dcm"))
    [account] = sender.finish()
    assert account["left"] == 1 and account["sent"] == 0
    assert account["error"].startswith(f"cannot write {path}: No space left on device (ENOSPC)")
    assert account["error"].endswith("--resume to continue")
    record.close()

    path.write_bytes(path.read_bytes() + b'["T", "SR", "b.')  # killed mid-line
    again = senders.SentLedger(path, fresh=False)
    assert again.acked == {("T", "SR", "a.dcm")}
    again.record("T", [("SR", "b.dcm", "1.3")])
    again.close()
    assert path.read_text() == '["T", "SR", "a.dcm", "1.2"]\n["T", "SR", "b.dcm", "1.3"]\n'


def test_send_targets_are_parsed_or_refused():
    t = senders.parse_target("dicom://PACS1@10.0.0.2:11112")
    assert (t.aet, t.host, t.port, t.url) == ("PACS1", "10.0.0.2", 11112, None)
    w = senders.parse_target("https://pacs.example/dicom-web/")
    assert w.url == "https://pacs.example/dicom-web" and w.name == w.url
    for bad in ("dicom://TOO-LONG-AE-TITLE-X@h:1", "dicom://A@h", "ftp://x", "dicom://A@h:70000"):
        with pytest.raises(pacs.PacsError):
            senders.parse_target(bad)
    assert pacs.redact("https://u:p@h:8443/dicom-web?token=x#f") == "https://h:8443/dicom-web"


def test_credentials_environment_first_then_netrc(tmp_path, monkeypatch):
    for var in (pacs.TOKEN_ENV, pacs.USER_ENV, pacs.PASSWORD_ENV, "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs.example login bob password from-netrc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    url = "https://pacs.example/dicom-web"
    assert pacs.session(url).auth == ("bob", "from-netrc")
    assert pacs.session("https://elsewhere/dicom-web").auth is None  # netrc is per host
    monkeypatch.setenv(pacs.USER_ENV, "carol")
    monkeypatch.setenv(pacs.PASSWORD_ENV, "pw")
    assert pacs.session(url).auth == ("carol", "pw")
    monkeypatch.setenv(pacs.TOKEN_ENV, "tok")
    s = pacs.session(url)
    assert s.auth is None and s.headers["Authorization"] == "Bearer tok"
    assert s.verify is True  # TLS verified by default
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert pacs.session(url, ca).verify == str(ca)


def test_server_text_is_one_printable_line():
    import requests

    response = requests.Response()
    response.status_code, response.reason = 500, "Bad\x1b[31m\nthing"
    err = requests.HTTPError(response=response)
    text = pacs.describe_failure(err)
    assert text == "HTTP 500 Bad\\x1b[31m\\nthing" and text.isprintable()
    other = pacs.describe_failure(RuntimeError("no\x1b]0;x\x07 way\nsecond line"))
    assert other == "RuntimeError: no\\x1b]0;x\\x07 way" and other.isprintable()
    response.status_code = 401
    assert "netrc" in pacs.describe_failure(requests.HTTPError(response=response))


def test_the_ae_title_default_is_one_default():
    from ptxfast.cli.score import _pacs_options

    default = pacs.PacsOptions().ae_title
    [option] = [p for p in cli.commands["score"].params if p.name == "ae_title"]
    assert option.default == default  # the CLI's default is the options' default
    assert _pacs_options((), None, (), default, None) is None  # nothing given: a plain folder
    assert _pacs_options((), None, (), "OTHER", None).ae_title == "OTHER"


def test_pacs_options_refused_before_any_work(tmp_path):
    from ptxfast.score import ScoreConfig, ScoreError

    def check(root, **kw):
        ScoreConfig(root, tmp_path / "p.csv", pacs=pacs.PacsOptions(**kw)).check()

    with pytest.raises(ScoreError, match="add --dicom-sr DIR"):
        check(tmp_path, send=("dicom://A@h:104",))
    with pytest.raises(ScoreError, match="give its URL"):
        check(tmp_path, studies=("1.2.3",))
    with pytest.raises(ScoreError, match="not a DICOM UID"):
        check("http://h/dicom-web", studies=("../1",))
    with pytest.raises(ScoreError, match="YYYYMMDD"):
        check("http://h/dicom-web", since="2024-01-01")
    config = ScoreConfig("https://h:8443/dicom-web/", tmp_path / "p.csv")
    assert config.url == "https://h:8443/dicom-web/" and config.root == tmp_path / "p.csv.fetching"
    with pytest.raises(ScoreError, match="--engine local"):
        ScoreConfig("https://h/dicom-web", tmp_path / "p.csv", engine="ray").check()


def test_result_uids_are_derived_from_source_and_artifact():
    from ptxfast.score.dicom_out import ModelIdentity, derived_uid

    model = ModelIdentity("rn34un", "torchscript", "fp32", "ab" * 32, 0.3, 0.3)
    other = ModelIdentity("rn34un", "torchscript", "fp32", "cd" * 32, 0.3, 0.3)
    uid = derived_uid("SR", "1.2.3.4", model)
    assert uid == derived_uid("SR", "1.2.3.4", model)  # the same result: the same UID
    assert len({uid, derived_uid("SR", "1.2.3.5", model), derived_uid("SEG", "1.2.3.4", model),
                derived_uid("SR", "1.2.3.4", other)}) == 4  # fmt: skip
    assert len(uid) <= 64 and all(p.isdigit() for p in uid.split("."))
