"""The README's Python example and test command are real."""
import re
from pathlib import Path

from tests.conftest import ROOT, require_fixtures


def test_python_example_runs(tmp_path, monkeypatch):
    fx = require_fixtures()
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("../shared/fixtures", str(fx))
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert isinstance(ns["text"], str) and ns["resumed"].allclose(ns["state"])
    assert len(ns["out"]) == 2 and ns["out"][0].shape == (4096,)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"Run the tests.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip()
    assert cmd == "python -m pytest -q"
    assert "python3 -m pytest -q" in ci or cmd in ci


def test_states_example_runs_and_prints_what_readme_shows(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    sec = text[text.index("## States: save, resume"):]
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1).replace("/tmp/henry.state", str(tmp_path / "h.state"))
    shown = re.search(r"prints\n\n```\n(.*?)```", sec, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == shown
