"""docs/walkthrough-department.md as a new operator follows it: its shell blocks, in order, in an
empty folder, with this environment's ``psi`` first on PATH."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "walkthrough-department.md"


@pytest.mark.skipif(not shutil.which("curl"), reason="the walkthrough scrapes metrics with curl")
def test_the_walkthrough_runs_as_written(tmp_path):
    blocks = re.findall(r"```sh\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    script = "set -euo pipefail\ntrap 'kill $(cat node.pid 2>/dev/null) 2>/dev/null' EXIT\n"
    script += "\n".join(blocks)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    run = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "node prison is ready to serve prison" in out
    assert "grants[0].per_sesion: unknown key; did you mean per_session?" in out
    assert "refused, as it should be" in out
    assert re.search(r'kinlink_requests_total\{client="civil-affairs",code="OK"', out)
    assert "epoch 2 prepared" in out and "key epoch 2 started; epoch 1 retired" in out
    during = re.findall(r"identifiers matched .* epoch (\d+)", out)
    assert during == ["1", "1", "2"], out
    # Every identity number of the walkthrough's data, as written there; none may be printed. (A
    # pattern such as 18 digits in a row also matches metric values and fingerprints by chance.)
    data = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "data").glob("*.csv"))
    people = set(re.findall(r"(?<![\dXx])(?:\d{17}[\dXx]|\d{15})(?![\dXx])", data))
    assert people and not [x for x in people if x.upper() in (out + run.stderr).upper()]
    assert "Traceback" not in run.stderr
