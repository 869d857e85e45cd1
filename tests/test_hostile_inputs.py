"""Hostile and unlucky inputs: nothing from a file's name or header runs in a spreadsheet, breaks
the ledger, hangs the scan, reaches the console raw or leaks a patient's name; a scorer stopped
by a signal (or killed) leaves nothing running, and `--resume` finishes with one row per file.

Every crafted file is made here: formula-like names and UIDs, CRs and escape sequences in names
and tags, a FIFO, a socket, a device, a symlinked `--out`, `--overwrite` aimed at a DICOM,
outputs inside the input folder, and a patient name without `^` written into a DICOM SR.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import dicom_factory as F
import pytest
from click.testing import CliRunner
from fresh_process import wait_for_lines

from ptxfast import report, score
from ptxfast.cli import cli
from ptxfast.safe_text import from_cell, to_cell, visible
from ptxfast.score import folders, inputs, ledger

pytestmark = pytest.mark.usefixtures("one_thread")

ESC_TITLE = "\x1b]0;PWNED\x07\x1b[2J"  # set the terminal's title, clear the screen
FORMULA_UID = '=HYPERLINK("http://x/?"&A1,"uid")'
WIDE = {"COLUMNS": "250"}  # the summary's rows on one line each


@pytest.fixture(scope="module")
def artifact(rn34un_artifact) -> Path:
    return rn34un_artifact()


def _dicom(path: Path, seed: int = 0, size: int = 40, **tags) -> Path:
    ds = F.image_dataset(F.gray_pixels(size + 8, size, seed=seed), bits_stored=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the crafted values, as it should
        for key, value in tags.items():
            setattr(ds, key, value)
        return F.save(ds, path)


def _args(root: Path, out: Path, artifact: Path, *extra: str) -> list[str]:
    return [
        "score", str(root), "--out", str(out), "--model", str(artifact), "--device", "cpu",
        "--batch-size", "1", "--threads", "1", "--model-only-iters", "0", *extra,
    ]  # fmt: skip


def _records(path: Path) -> list[list[str]]:
    """The CSV's rows through the ledger's own reader (cells decoded)."""
    with open(path, newline="", **ledger.ENCODING) as f:
        records = list(csv.reader(f))
    assert tuple(records[0]) == ledger.CSV_COLUMNS
    return [ledger.decode_record(r) for r in records[1:]]


# ------------------------------------------------------------------- 1: one rule for text


def test_cells_round_trip_and_numbers_stay_numbers():
    crafted = [
        "=1+1", "+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "'=1", "''", "a\\x41", "\\",
        ESC_TITLE, "cr\rlf\n", "\u202etxt.dcm", "plain/path.dcm", "", "snake\\u0041",
        "bytes\udcff",
    ]  # fmt: skip
    for value in crafted:
        cell = to_cell(value)
        assert from_cell(cell) == value, (value, cell)
        assert not any(c in cell for c in "\x1b\r\n\x07\u202e"), cell
        if value != "+1":  # a plain number, which a spreadsheet reads as that number
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or cell[0] == "'"
    for number in ("0.123456", "-0.5", "1", "0", "-12", "1e-07", "375"):
        assert to_cell(number) == number  # a number is not a formula
    assert to_cell("=1+1") == "'=1+1" and to_cell("-2+3") == "'-2+3" and to_cell("+1") == "+1"
    assert visible(ESC_TITLE) == "\\x1b]0;PWNED\\x07\\x1b[2J"
    assert visible("a\rb\tc\u202e") == "a\\rb\\tc\\u202e"


HOSTILE_NAMES = {
    "=1+1": {},  # no extension: the content is DICOM
    '=HYPERLINK("http:evil","click")': {},
    "+SUM(1).dcm": {},
    "-2+3.dcm": {},
    "@cmd.dcm": {},
    "'quoted.dcm": {},
    "\tlead-tab.dcm": {},
    "cr\rname.dcm": {},
    f"esc{ESC_TITLE}.dcm": {},
    "back\\x41slash.dcm": {},
    "uid-formula.dcm": {"SOPInstanceUID": FORMULA_UID},
    "uid-cr.dcm": {"SOPInstanceUID": "1.2.3\r4.5"},
    "modality-esc.dcm": {"Modality": ESC_TITLE},
    "modality-markup.dcm": {"Modality": "[link=http://e]X"},
}


@pytest.fixture(scope="module")
def hostile(artifact, tmp_path_factory):
    """A folder of crafted names and tags scored by the CLI, then resumed."""
    base = tmp_path_factory.mktemp("hostile")
    root, out = base / "in", base / "preds.csv"
    root.mkdir()
    for i, (name, tags) in enumerate(sorted(HOSTILE_NAMES.items())):
        _dicom(root / name, seed=i, **tags)
    args = _args(root, out, artifact, "--workers", "0")
    first = CliRunner().invoke(cli, [*args, "--json", str(base / "s.json")], env=WIDE)
    assert first.exit_code == 0, first.output
    written = out.read_bytes()
    again = CliRunner().invoke(cli, [*args, "--resume", "--json", str(base / "r.json")], env=WIDE)
    assert again.exit_code == 0, again.output
    return root, out, base, first.output, written, json.loads((base / "r.json").read_text())


def test_crafted_names_and_tags_round_trip_through_the_ledger(hostile):
    root, out, _, _, written, resumed = hostile
    names = sorted(HOSTILE_NAMES)
    data = out.read_bytes()
    assert data == written  # the resume scored nothing again and cut nothing off
    assert b"\x1b" not in data and b"\r" not in data and b"\x07" not in data
    lines = data.decode().splitlines()
    assert len(lines) == len(names) + 1  # one line per record
    for line in lines:
        cells = next(csv.reader([line]))
        assert len(cells) == len(ledger.CSV_COLUMNS), line
        for cell in cells:  # nothing a spreadsheet would evaluate
            assert not cell.startswith(("=", "+", "@", "\t")), cell
            assert not cell.startswith("-") or cell.startswith("'") or float(cell) < 0
    # Paths and UIDs read back exactly: --resume found every file done.
    done, good, torn = ledger.read_done(out)
    assert done == set(names) and good == len(data) and not torn
    assert resumed["already"] == len(names) and resumed["scored"] == resumed["failed"] == 0
    rows = {r[0]: r for r in _records(out)}
    assert rows["uid-formula.dcm"][1] == FORMULA_UID
    assert rows["uid-cr.dcm"][1] == "1.2.3\r4.5"
    assert rows["=1+1"][2] and rows['=HYPERLINK("http:evil","click")'][2]  # scored
    float(rows["=1+1"][2])  # the probability stays a number


def test_header_values_never_reach_the_console_raw(hostile):
    _, out, base, output, _, _ = hostile
    assert "\x1b" not in output and "\r" not in output and "\x07" not in output
    # The eligibility reasons are shown, escaped, and markup in a header stays text.
    assert "Modality \\x1b]0;PWNED\\x07\\x1b[2J" in output
    assert "[LINK=HTTP://E]X" in output
    summary = json.loads((base / "s.json").read_text())
    reasons = summary["eligibility"]["reasons"]
    assert set(reasons) == {"Modality \\x1b]0;PWNED\\x07\\x1b[2J", "Modality [LINK=HTTP://E]X"}
    errors = {r[0]: r[5] for r in _records(out) if r[5]}
    assert errors["modality-esc.dcm"].startswith("not eligible: Modality \x1b]0;PWNED")
    assert "\\x1b]0;PWNED" in out.read_text()  # visible in the CSV's error column


def test_report_reads_the_crafted_ledger(hostile, tmp_path):
    _, out, _, _, _, _ = hostile
    result = report.build_report(out, tmp_path / "r.html", top=2)
    assert result.rows == len(HOSTILE_NAMES)
    assert result.not_eligible == 2 and result.failed == 0
    page = (tmp_path / "r.html").read_text()
    assert "\x1b" not in page and "=HYPERLINK(&quot;http:evil&quot;" in page


_NS = {
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
}


def _calc_cells(fods: Path) -> list[list[tuple[str, str | None, bool]]]:
    """(shown text, value type, has a formula) of every cell of a flat ODS, row by row."""
    q = {k: f"{{{v}}}" for k, v in _NS.items()}
    rows = []
    for row in ET.parse(fods).getroot().iter(f"{q['table']}table-row"):
        cells = []
        for cell in row.iter(f"{q['table']}table-cell"):
            repeat = int(cell.get(f"{q['table']}number-columns-repeated", "1"))
            shown = "".join("".join(p.itertext()) for p in cell.iter(f"{q['text']}p"))
            kind = cell.get(f"{q['office']}value-type")
            cells += [(shown, kind, cell.get(f"{q['table']}formula") is not None)] * min(repeat, 8)
        rows.append(cells)
    return rows


def test_libreoffice_shows_every_cell_as_text(hostile, tmp_path):
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        pytest.skip("LibreOffice Calc not installed (apt-get install libreoffice-calc-nogui)")
    _, out, _, _, _, _ = hostile
    csv_copy = tmp_path / "preds.csv"
    shutil.copy(out, csv_copy)
    # Comma-separated, UTF-8, from line 1, with "Evaluate formulas" on (token 13): the worst
    # case, in which an unguarded `=HYPERLINK(...)` becomes a live link.
    infilter = "CSV:44,34,76,1,,0,false,true,false,false,false,-1,true"
    done = subprocess.run(
        [soffice, f"-env:UserInstallation=file://{tmp_path / 'profile'}", "--headless",
         f"--infilter={infilter}", "--convert-to", "fods", "--outdir", str(tmp_path),
         str(csv_copy)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    fods = tmp_path / "preds.fods"
    assert fods.exists(), done.stdout + done.stderr
    rows = [r for r in _calc_cells(fods) if any(text for text, _, _ in r)]
    assert len(rows) == len(HOSTILE_NAMES) + 1
    shown_paths = set()
    for row in rows[1:]:
        assert not any(formula for _, _, formula in row), row  # nothing evaluated
        for j in (0, 1, 5):  # path, UID, error: text
            assert row[j][1] in ("string", None), row[j]
        for j in (2, 3, 4):  # probability, label, mask area: numbers or empty
            assert row[j][1] in ("float", None), row[j]
        shown_paths.add(from_cell(row[0][0]))
    assert shown_paths == set(HOSTILE_NAMES)  # shown as written, the `'` guard aside


# --------------------------------------------------- 2: regular files only, nothing blocks


def _not_regular_folder(base: Path) -> Path:
    root = base / "in"
    root.mkdir()
    _dicom(root / "good.dcm")
    os.mkfifo(root / "fifo.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    (root / "null.dcm").symlink_to(os.devnull)  # a character device
    return root


def test_fifo_socket_and_device_get_a_row_and_are_never_opened(artifact, tmp_path, monkeypatch):
    root = _not_regular_folder(tmp_path)
    found = score.find_inputs(root)
    assert found.inputs == ["fifo.dcm", "good.dcm", "null.dcm", "sock"]
    with pytest.raises(folders.NotRegular):  # O_NONBLOCK + fstat: never blocks
        folders.read_head(root / "fifo.dcm", 132)
    # An entry swapped for a FIFO after its stat is caught on the open descriptor.
    monkeypatch.setattr(inputs, "not_regular", lambda path: None)
    assert inputs._is_input(root / "fifo.dcm", "fifo.dcm")
    out = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "ptxfast", *_args(root, out, artifact, "--workers", "1")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r[0]: r for r in _records(out)}
    assert rows["good.dcm"][2]
    for name, kind in (("fifo.dcm", "a named pipe"), ("sock", "a socket")):
        assert rows[name][5].startswith(f"not a regular file ({kind})"), rows[name]
    assert rows["null.dcm"][5].startswith("not a regular file (a character device)")
    # The report reads headers of the listed files for their StudyInstanceUID: not of these.
    made = []
    worker = threading.Thread(
        target=lambda: made.append(report.build_report(out, tmp_path / "r.html", root=root)),
        daemon=True,
    )
    worker.start()
    worker.join(120)
    assert made and made[0].failed == 3, "the report blocked on a FIFO"


# ------------------------------------------ 3 and 4: signals, helpers, one lock per file


def _descendants(pid: int) -> set[int]:
    """The processes below `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.add(pid)
    return alive


def _start(cmd: list[str], out: Path, rows_at_least: int, group: bool = False) -> subprocess.Popen:
    """Start a scoring run (in a process group of its own with `group`) and return once the
    CSV holds `rows_at_least` rows."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    if wait_for_lines(out, rows_at_least + 1, proc):
        return proc
    proc.kill()
    raise AssertionError(f"the run ended or stalled first: {proc.communicate()[1][-2000:]}")


def _stop(proc: subprocess.Popen, how: int, group: bool = False) -> tuple[int, str, set[int]]:
    """Send `how` to the scorer's pid alone (or, with `group`, to every process of the run, as
    a batch scheduler's time limit does); its exit code, stderr, and helpers alive 10 s later."""
    helpers = _descendants(proc.pid)
    assert helpers, "the run should have decoding and writing processes"
    if group:
        os.killpg(proc.pid, how)
    else:
        os.kill(proc.pid, how)
    _, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.returncode, err, _alive(helpers)


def test_a_helper_exit_arriving_with_the_stop_signal_changes_nothing(monkeypatch):
    from ptxfast.score.signals import Stopped, stop_on_signals

    # SIGTERM to the whole process group: the helpers die with the scorer, and their SIGCHLD
    # can be pending beside the SIGTERM. Python handles pending signals in ascending order,
    # so the stop's handler runs first and the SIGCHLD after it, against whatever the stop
    # left as its handler (SIG_DFL raised "Signal 17 ignored due to race condition", which
    # Python printed as a traceback while the stop unwound).
    checks, unraisable = [], []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    before = signal.signal(signal.SIGCHLD, lambda *a: checks.append("torch's check"))
    both = {signal.SIGTERM, signal.SIGCHLD}
    main = threading.main_thread().ident
    try:
        with pytest.raises(Stopped) as stop, stop_on_signals():
            # Sent to the main thread, not the process: a process-directed signal goes to any
            # thread that does not block it (pytest-xdist's, a writer's), whose C handler can
            # mark SIGCHLD before SIGTERM, so the two would not be pending together.
            signal.pthread_sigmask(signal.SIG_BLOCK, both)
            signal.pthread_kill(main, signal.SIGTERM)
            signal.pthread_kill(main, signal.SIGCHLD)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both delivered here
            for _ in range(100):
                time.sleep(0.001)
        assert stop.value.signum == signal.SIGTERM and stop.value.__context__ is None
        assert checks == []  # torch's check is off once the stop has begun
        assert [str(u.exc_value) for u in unraisable] == []
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
        signal.signal(signal.SIGCHLD, before)


def test_stopped_runs_leave_nothing_running_and_resume_finishes(artifact, tmp_path):
    root, base = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    names = [f"P{i:02d}.dcm" for i in range(48)]
    for i, name in enumerate(names):
        _dicom(root / name, seed=i, size=96)
    out = base / "preds.csv"
    outputs = ["--masks", str(base / "masks"), "--dicom-seg", str(base / "seg")]
    outputs += ["--dicom-sr", str(base / "sr"), "--output-workers", "1", "--workers", "1"]
    cmd = [sys.executable, "-m", "ptxfast", *_args(root, out, artifact, *outputs)]

    proc = _start(cmd, out, 2)
    # 4: another name of the same file, during the run, shares its lock.
    (base / "alias.csv").symlink_to("preds.csv")
    (base / "sub").mkdir()
    for alias in (base / "alias.csv", base / "sub" / ".." / "alias.csv"):
        res = CliRunner().invoke(cli, _args(root, alias, artifact, "--resume"))
        assert res.exit_code == 1, res.output
        assert "being written by another ptxfast run" in " ".join(res.output.split())
        assert f"pid {proc.pid}" in res.output
    # 3: SIGTERM to the scorer alone.
    code, err, left = _stop(proc, signal.SIGTERM)
    kept = len(ledger.read_done(out)[0])
    assert code == 143, err[-2000:]
    assert (
        err.strip().splitlines()[-1] == f"stopped by SIGTERM; {kept} rows kept; --resume continues"
    )
    assert not left, f"still running 10 s after the scorer stopped: {left}"
    assert not list(base.rglob("*.tmp")), "a temporary output file was left behind"
    assert ledger.read_done(out)[2] is False and 2 <= kept < len(names)

    proc = _start([*cmd, "--resume"], out, kept + 1)
    code, err, left = _stop(proc, signal.SIGINT)
    assert code == 130 and "Aborted" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("stopped by SIGINT; ")
    assert not left

    # SIGTERM to every process of the run (a scheduler's time limit): the same clean stop, and
    # no helper's end is taken for a file that crashed its decoder.
    kept = len(ledger.read_done(out)[0])
    proc = _start([*cmd, "--resume"], out, kept + 1, group=True)
    code, err, left = _stop(proc, signal.SIGTERM, group=True)
    assert code == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM; ") and not left
    assert not list(base.rglob("*.tmp"))
    assert not [r for r in _records(out) if r[5]], "a stop became an error row"

    kept = len(ledger.read_done(out)[0])
    proc = _start([*cmd, "--resume"], out, kept + 1)
    code, _, left = _stop(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL and not left, f"helpers outlived a killed scorer: {left}"

    res = CliRunner().invoke(cli, _args(root, base / "alias.csv", artifact, *outputs, "--resume"))
    assert res.exit_code == 0, res.output
    rows = _records(out)
    assert sorted(r[0] for r in rows) == names  # exactly one row per file
    assert (base / "alias.csv").is_symlink()  # the write followed the link
    for r in rows:
        if r[3] == "1":
            assert (base / "masks" / f"{r[0]}.mask.png").exists(), r[0]


# ---------------------------------------------------------------------- 5: --overwrite


def test_overwrite_replaces_only_a_ledger_or_an_empty_file(artifact, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    dicom = _dicom(root / "P10_1.dcm")
    crafted = _dicom(tmp_path / f"P{ESC_TITLE}.dcm")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    os.mkfifo(tmp_path / "fifo.csv")
    for target, phrase in (
        (dicom, "not a ptxfast predictions CSV"),
        (notes, "not a ptxfast predictions CSV"),
        (crafted, "not a ptxfast predictions CSV"),
        (tmp_path / "fifo.csv", "is not a regular file"),
    ):
        before = target.read_bytes() if target.is_file() else None
        res = CliRunner().invoke(cli, _args(root, target, artifact, "--overwrite"))
        assert res.exit_code == 1 and phrase in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert "\x1b" not in res.output
        if before is not None:
            assert target.read_bytes() == before
    assert "\\x1b]0;PWNED" in CliRunner().invoke(cli, _args(root, crafted, artifact, "--overwrite")).output  # fmt: skip
    # An empty file and a ptxfast CSV are replaced.
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for _ in range(2):
        res = CliRunner().invoke(cli, _args(root, empty, artifact, "--overwrite", "--workers", "0"))
        assert res.exit_code == 0, res.output
        assert [r[0] for r in _records(empty)] == ["P10_1.dcm"]


# -------------------------------------------------------- 6: output folders are marked


def test_output_folders_inside_the_input_are_marked_and_skipped(artifact, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        _dicom(root / f"P{i}.dcm", seed=i)
    args = _args(root, root / "preds.csv", artifact, "--workers", "0", "--output-workers", "0")
    res = CliRunner().invoke(cli, [*args, "--masks", str(root / "masks")])
    assert res.exit_code == 0, res.output
    assert folders.is_marked(root / "masks") and list((root / "masks").glob("*.png"))
    # The next run over the folder scores the radiographs only, never the masks.
    found = score.find_inputs(root)
    assert found.inputs == ["P0.dcm", "P1.dcm", "P2.dcm"]
    res = CliRunner().invoke(cli, _args(root, tmp_path / "again.csv", artifact, "--workers", "0"))
    assert res.exit_code == 0, res.output
    assert [r[0] for r in _records(tmp_path / "again.csv")] == found.inputs
    # An unmarked folder of the input that holds files is refused before any work.
    (root / "xrays").mkdir()
    _dicom(root / "xrays" / "P9.dcm")
    for option in ("--masks", "--dicom-seg", "--dicom-sr"):
        res = CliRunner().invoke(cli, [*args, "--resume", option, str(root / "xrays")])
        assert res.exit_code == 1 and "inside the input folder" in res.output, res.output
    assert not folders.is_marked(root / "xrays")
    assert [p.name for p in (root / "xrays").iterdir()] == ["P9.dcm"]


# ------------------------------------------------------- 7: patient names stay unprinted


def test_person_name_without_caret_never_reaches_the_console(artifact, tmp_path, capfd):
    root = tmp_path / "in"
    root.mkdir()
    _dicom(root / "P1.dcm", PatientName="SMITH JOHN")
    _dicom(root / "P2.dcm", seed=1, PatientName="DOE JANE")
    # Output-writing processes, as a batch job runs them.
    base = tmp_path / "proc"
    cmd = _args(root, base / "p.csv", artifact, "--dicom-sr", str(base / "sr"), "--json")
    cmd = [sys.executable, "-m", "ptxfast", *cmd, str(base / "s.json"), "--output-workers", "1"]
    env = {**os.environ, **WIDE}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((base / "s.json").read_text())
    assert summary["srs_written"] == 2 and summary["library_messages"] >= 2
    for text in (done.stdout, done.stderr):
        assert "SMITH" not in text and "DOE" not in text
    assert "header values counted, not shown" in done.stdout
    # Threads of the scoring process write the same without a word on stderr.
    s = score.score_folder(
        root, tmp_path / "t.csv", model=artifact, device="cpu", workers=1, output_workers=0,
        sr_dir=tmp_path / "sr_t", model_only_iters=0,
    )  # fmt: skip
    captured = capfd.readouterr()
    assert s.srs_written == 2 and s.library_messages >= 2
    assert "SMITH" not in captured.err + captured.out and "DOE" not in captured.err


def test_repeated_library_warnings_are_all_counted_in_a_thread():
    # Outputs written by threads (`--output-workers 0`, a Ray model actor's writer) count every
    # warning, not only the first one of its location that Python's default filter shows.
    from concurrent.futures import ThreadPoolExecutor

    from pydicom.charset import convert_encodings

    from ptxfast.score import library_messages

    def write() -> int:
        with library_messages.captured() as heard:
            for _ in range(2):  # "Unknown encoding 'ISO_IR 999' - using default encoding ..."
                convert_encodings(["ISO_IR 999"])
        return heard.messages

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(write).result() == 2


# --------------------------------------------------------------- 8: report's counts


def test_report_counts_not_eligible_apart_from_failed(tmp_path):
    from ptxfast.data.eligibility import not_eligible_message

    preds = tmp_path / "preds.csv"
    buf = io.StringIO()
    rows = [
        ["a.dcm", "1.2", "0.9", "1", "400", ""],
        ["b.dcm", "1.3", "0.1", "0", "0", ""],
        ["c.dcm", "", "", "", "", "truncated"],
        ["d.dcm", "1.4", "", "", "", not_eligible_message("Modality CT")],
    ]
    csv.writer(buf, lineterminator="\n").writerows([to_cell(v) for v in r] for r in rows)
    preds.write_text(ledger.CSV_HEADER + buf.getvalue())
    result = report.build_report(preds, tmp_path / "r.html")
    assert (result.failed, result.not_eligible, result.positives) == (1, 1, 1)
    assert "1 failed, 1 not eligible" in result.lines()[-1]
    page = (tmp_path / "r.html").read_text()
    assert '<th scope="row">failed</th><td>1</td>' in page
    assert '<th scope="row">not eligible</th><td>1</td>' in page
