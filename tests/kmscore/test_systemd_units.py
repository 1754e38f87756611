"""The shipped service files work as documented (issue 11, item 10): the units start what
`./setup.sh install` installs, pass `systemd-analyze verify`, and the container's
`podman run` line passes every variable its config needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "config" / "systemd").glob("*.service"))
KMS = str(Path(sys.executable).with_name("kms"))


def exec_lines(unit: Path) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines()
            if re.match(r"^Exec(Start|StartPre|Reload)=", line)]


def test_units_start_the_commands_the_install_step_installs():
    setup = (ROOT / "setup.sh").read_text()
    install = setup[setup.index("system_install() {"):]
    assert 'bin=/usr/local/bin' in install and 'ln -sfn "$opt/bin/$cmd" "$root$bin/$cmd"' in install
    for unit in UNITS:
        assert f"config/systemd/{unit.name}" in install, f"{unit.name} is not installed by ./setup.sh install"
        for line in exec_lines(unit):
            binary = line.split()[0].lstrip("-")
            assert binary in ("/usr/local/bin/kms", "/bin/kill"), (unit.name, line)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for unit in UNITS:  # the installed path, pointed at this checkout's kms
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/kms", KMS))
    r = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.glob("*.service")))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    problems = [line for line in r.stderr.splitlines() if "keyhold" in line]
    assert not problems, problems


def test_podman_line_passes_every_variable_the_image_config_needs():
    containerfile = (ROOT / "config" / "container" / "Containerfile").read_text()
    run = re.search(r"podman run(.*?)keyhold\n", containerfile.replace("\\\n#", " "), re.S)
    assert run, "no podman run line in the Containerfile"
    passed = set(re.findall(r"-e ([A-Z_][A-Z0-9_]*)=", run.group(1)))
    config = (ROOT / "config" / "container" / "sidecar.toml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", config)) | set(re.findall(r'var = "([A-Z_][A-Z0-9_]*)"', config))
    assert needed and needed <= passed, f"missing from podman run: {sorted(needed - passed)}"
    docs = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for name in needed:
        assert f"-e {name}=" in docs, name


def test_cli_on_the_services_store_after_the_documented_move(tmp_path):
    """OPERATIONS.md's steps: init with the root key in /etc/keyhold, then the CLI names it."""
    home, etc = tmp_path / "var-lib", tmp_path / "etc"
    run = lambda *a, **kw: subprocess.run([KMS, *a], capture_output=True, text=True, timeout=60, **kw)  # noqa: E731
    assert run("init", "--home", str(home), "--root-key-file", str(etc / "root.key")).returncode == 0
    r = run("list-keys", "--home", str(home))
    assert r.returncode == 8 and "--root-key-file" in r.stderr
    assert run("list-keys", "--home", str(home), "--root-key-file", str(etc / "root.key")).returncode == 0
