"""The CLI conventions operators expect (issue 11, items 5, 6, 8; issue 15, items 12, 14):
real `kms` processes, a real pseudo-terminal where terminals matter."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmscore.cli.main import EXIT_CODES
from kmscore import errors

KMS = str(Path(sys.executable).with_name("kms"))
ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = ("KMS_HOME", "KMS_ROOT_KEY", "KMS_PASSPHRASE", "KMS_ROOT_KEY_FILE", "KMS_DEPLOYMENT",
            "KMS_LOG_FORMAT", "KMS_LOG_LEVEL")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    out.update(extra)
    return out


def kms(*args: str, input: bytes = b"", extra_env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([KMS, *args], input=input, capture_output=True, env=env(**(extra_env or {})),
                          timeout=60, **kw)


def err_lines(r: subprocess.CompletedProcess) -> list[str]:
    return r.stderr.decode().splitlines()


# -- item 5: global options after the sub-command --------------------------------------
def test_home_works_after_the_subcommand(tmp_path):
    home = tmp_path / "h"
    r = kms("init", "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert (home / "keys.db").exists()
    r = kms("create-key", "--alias", "app/after", "--home", str(home), "--json")
    assert r.returncode == 0, r.stderr
    r = kms("list-keys", "--home", str(home), "--json")
    assert [k["alias"] for k in json.loads(r.stdout)] == ["app/after"]
    # before the sub-command still works, and the sub-command's position wins over nothing
    r = kms("--home", str(home), "describe-key", "app/after", "--json")
    assert json.loads(r.stdout)["alias"] == "app/after"


# -- item 6 / 15.12: one error line, did you mean ---------------------------------------
@pytest.mark.parametrize("args, expect", [
    (["lst-keys"], "did you mean 'list-keys'?"),
    (["list-keys", "--hme", "x"], "did you mean '--home'?"),
    (["create-key", "--spec", "AES_255"], "AES_256"),
    (["fs", "inof", "x"], "did you mean 'info'?"),
    (["encrypt-data"], "required"),
    (["audit", "verfy"], "did you mean 'verify'?"),
])
def test_a_usage_mistake_is_one_error_line(tmp_path, args, expect):
    r = kms("--home", str(tmp_path / "h"), *args)
    lines = err_lines(r)
    assert r.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("kms: error: ")
    assert "usage:" not in r.stderr.decode()
    assert expect in lines[0]
    assert not (tmp_path / "h").exists()


def test_version():
    r = kms("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"kms \(keyhold\) \d+\.\d+\.\d+\S*\n", r.stdout.decode())


def test_completion_scripts_come_from_the_parser(tmp_path):
    bash = kms("completion", "bash")
    assert bash.returncode == 0, bash.stderr
    text = bash.stdout.decode()
    for word in ("list-keys", "encrypt-file", "--home", "up", "check", "demo"):
        assert word in text
    checked = subprocess.run(["bash", "-n"], input=bash.stdout, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    zsh = kms("completion", "zsh")
    assert zsh.returncode == 0 and "#compdef kms" in zsh.stdout.decode()
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=zsh.stdout).returncode == 0


def test_quiet_keeps_results_and_drops_notices(tmp_path):
    home = tmp_path / "h"
    r = kms("init", "--home", str(home), "-q")
    assert r.returncode == 0 and r.stderr == b""
    r = kms("create-key", "--alias", "q/one", "--home", str(home), "--json", "-q")
    assert r.stderr == b"" and json.loads(r.stdout)["alias"] == "q/one"


def test_exit_codes_are_one_documented_table():
    codes = {code for code, _ in EXIT_CODES}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.KmsError):
            assert cls.exit_code in codes, cls
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for code, _ in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", ops, re.M), f"exit code {code} missing from docs/OPERATIONS.md"


def run_in_pty(argv: list[str], extra_env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as stdin/stdout/stderr; return (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ.clear()
        os.environ.update(env(**(extra_env or {}), COLUMNS="100", TERM="xterm"))
        os.execv(argv[0], argv)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_help_on_a_terminal():
    code, out = run_in_pty([KMS, "--help"])
    assert code == 0
    assert out.lstrip().startswith("usage: kms")
    for word in ("list-keys", "encrypt-file", "completion", "--version", "--home", "Exit codes"):
        assert word in out, word


# -- item 8: one log format -------------------------------------------------------------
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) [\w.]+: .+$")


def run_up_briefly(tmp_path: Path, *args: str) -> str:
    config = tmp_path / "keys-only.toml"
    config.write_text('[kms]\nhome = "run/kms"\n\n[[keys]]\nalias = "logs/test"\n')
    proc = subprocess.Popen([KMS, *args, "up", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env())
    lines = []
    for line in proc.stdout:  # the banner's last line says how to stop: then stop it
        lines.append(line.decode())
        if "reload:" in lines[-1]:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    lines.extend(rest.decode().splitlines(keepends=True))
    assert proc.returncode == 0, "".join(lines)
    return "".join(lines)


def test_up_logs_one_text_format(tmp_path):
    out = run_up_briefly(tmp_path)
    lines = out.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), out
    assert not any("{" in line and '"' in line for line in lines), "JSON embedded in a text line"


def test_up_logs_json_lines(tmp_path):
    out = run_up_briefly(tmp_path, "--log-format", "json")
    records = [json.loads(line) for line in out.splitlines()]
    assert records
    for rec in records:
        assert {"ts", "level", "logger", "msg"} <= set(rec)
        assert rec["ts"].endswith("Z") and rec["logger"].startswith("keyhold")
    assert any("created key logs/test" in r["msg"] for r in records)


def test_log_level_warning_silences_info(tmp_path):
    out = run_up_briefly(tmp_path, "--log-level", "debug")
    assert "INFO keyhold.up" in out
    quiet = tmp_path / "q"
    quiet.mkdir()
    config = quiet / "keys-only.toml"
    config.write_text('[kms]\nhome = "run/kms"\n\n[[keys]]\nalias = "quiet/k"\n')  # keys only: runs nothing
    proc = subprocess.Popen([KMS, "up", str(config), "--log-level", "warning"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env())
    first = proc.stdout.readline().decode()  # the only line: a warning that nothing runs
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert " WARNING keyhold.up: " in first and "INFO" not in first + rest.decode()


# -- issue 15 item 14: a named home is never created by mistake --------------------------
def test_mistyped_home_is_refused_and_nothing_is_created(tmp_path):
    real = tmp_path / "real"
    assert kms("init", "--home", str(real)).returncode == 0
    typo = tmp_path / "reall"
    r = kms("--home", str(typo), "list-keys")
    assert r.returncode == 8
    assert len(err_lines(r)) == 1
    assert f"kms init --home {typo}" in r.stderr.decode()
    assert not typo.exists()
    r = kms("create-key", "--alias", "x/y", extra_env={"KMS_HOME": "/nonexistent/dir"})
    assert r.returncode == 8 and "$KMS_HOME" in r.stderr.decode()
    assert not Path("/nonexistent").exists()


def test_explicit_flag_creates_a_named_home(tmp_path):
    r = kms("--home", str(tmp_path / "new"), "--create-home", "list-keys")
    assert r.returncode == 0 and (tmp_path / "new" / "keys.db").exists()


def test_default_home_is_made_on_first_use_and_says_so(tmp_path):
    r = kms("list-keys", extra_env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "xdg" / "keyhold" / "keys.db").exists()
    assert "per-user default home" in r.stderr.decode()


def test_world_writable_home_is_refused(tmp_path):
    home = tmp_path / "h"
    assert kms("init", "--home", str(home)).returncode == 0
    home.chmod(0o777)
    r = kms("list-keys", "--home", str(home))
    assert r.returncode == 8 and "writable by every user" in r.stderr.decode()


def test_passphrase_from_a_file_and_from_a_descriptor(tmp_path):
    home = tmp_path / "h"
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    r = kms("init", "--home", str(home), "--passphrase-file", str(secret))
    assert r.returncode == 0, r.stderr
    assert not (home / "root.key").exists()  # the passphrase is the root of trust
    assert kms("create-key", "--alias", "p/one", "--home", str(home), "--passphrase-file", str(secret)).returncode == 0
    read, write = os.pipe()
    os.write(write, b"correct horse battery staple\n")
    os.close(write)
    r = subprocess.run([KMS, "list-keys", "--home", str(home), "--passphrase-fd", str(read), "--json"],
                       capture_output=True, env=env(), pass_fds=(read,), timeout=60)
    os.close(read)
    assert r.returncode == 0, r.stderr
    assert [k["alias"] for k in json.loads(r.stdout)] == ["p/one"]
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong horse battery staple")
    r = kms("list-keys", "--home", str(home), "--passphrase-file", str(wrong))
    assert r.returncode == 8 and "does not open" in r.stderr.decode()


@pytest.mark.parametrize("how", ["file", "env"])
def test_one_character_passphrase_is_refused(tmp_path, how):
    home = tmp_path / "h"
    if how == "file":
        (tmp_path / "p").write_text("x")
        r = kms("init", "--home", str(home), "--passphrase-file", str(tmp_path / "p"))
    else:
        r = kms("init", "--home", str(home), extra_env={"KMS_PASSPHRASE": "x"})
    assert r.returncode == 8 and "too short" in r.stderr.decode()
    assert "x" not in r.stderr.decode().replace("too short", "").split(":")[-1].split()  # never echoed


def test_moved_root_key_is_named_not_run_kms_init(tmp_path):
    home, etc = tmp_path / "var-lib-keyhold", tmp_path / "etc-keyhold"
    assert kms("init", "--home", str(home), "--root-key-file", str(etc / "root.key")).returncode == 0
    assert (etc / "root.key").exists() and not (home / "root.key").exists()
    for args in (["list-keys"], ["init"]):
        r = kms(*args, "--home", str(home))
        assert r.returncode == 8 and "--root-key-file" in r.stderr.decode() and "run `kms init`" not in r.stderr.decode()
    r = kms("list-keys", "--home", str(home), extra_env={"KMS_ROOT_KEY_FILE": str(etc / "root.key")})
    assert r.returncode == 0, r.stderr


def test_deployment_option_reaches_the_deployments_store(tmp_path):
    (tmp_path / "d.toml").write_text('[kms]\nhome = "run/kms"\n\n[[keys]]\nalias = "dep/key"\n')
    assert kms("init", "--home", str(tmp_path / "run" / "kms")).returncode == 0
    assert kms("create-key", "--alias", "dep/key", "--home", str(tmp_path / "run" / "kms")).returncode == 0
    r = kms("list-keys", "--deployment", str(tmp_path / "d.toml"), "--json", cwd="/")
    assert r.returncode == 0, r.stderr
    assert [k["alias"] for k in json.loads(r.stdout)] == ["dep/key"]


# -- item 11: stdin is not read in full before the size check ----------------------------
def test_oversized_stdin_is_refused_without_reading_it_all(tmp_path):
    home = tmp_path / "h"
    assert kms("init", "--home", str(home)).returncode == 0
    assert kms("create-key", "--alias", "in/key", "--home", str(home)).returncode == 0
    proc = subprocess.Popen([KMS, "encrypt-data", "in/key", "--home", str(home)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    sent, chunk = 0, b"x" * (1 << 20)
    try:
        while sent < (1 << 30):  # 1 GiB: far more than the command may read
            proc.stdin.write(chunk)
            sent += len(chunk)
    except BrokenPipeError:
        pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"larger than" in err
    assert sent < (1 << 30)


# -- optional parts: a missing one is named, never a traceback ----------------------------
@pytest.mark.skipif(__import__("importlib").util.find_spec("mitmproxy") is not None,
                    reason="only where the sidecar extra cannot be installed (Python 3.11)")
def test_proxy_without_the_sidecar_extra_says_how_to_get_it(tmp_path):
    assert kms("init", "--home", str(tmp_path / "h")).returncode == 0
    r = kms("proxy", "--home", str(tmp_path / "h"), "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0")
    assert r.returncode == 1
    assert "keyhold[sidecar]" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


# -- item 7: progress on a terminal only ------------------------------------------------
def test_progress_bar_on_a_terminal_only(tmp_path):
    home = tmp_path / "h"
    assert kms("init", "--home", str(home)).returncode == 0
    assert kms("create-key", "--alias", "big/files", "--home", str(home)).returncode == 0
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(48 * 1024 * 1024)
    code, out = run_in_pty([KMS, "encrypt-file", "big/files", str(big), str(tmp_path / "big.kms"), "--home", str(home)])
    assert code == 0, out
    assert "encrypting big.bin" in out and "━" in out and "50.3/50.3 MB" in out
    code, out = run_in_pty([KMS, "decrypt-file", str(tmp_path / "big.kms"), str(tmp_path / "back"), "--home", str(home)])
    assert code == 0 and "decrypting big.kms" in out and "━" in out
    assert (tmp_path / "back").stat().st_size == big.stat().st_size
    # not a terminal: no bar; -q on a terminal: no bar either
    piped = kms("encrypt-file", "big/files", str(big), str(tmp_path / "b2.kms"), "--home", str(home))
    assert piped.returncode == 0 and "━" not in piped.stderr.decode() and "encrypting" not in piped.stderr.decode()
    code, out = run_in_pty([KMS, "encrypt-file", "big/files", str(big), str(tmp_path / "b3.kms"), "--home", str(home), "-q"])
    assert code == 0 and "━" not in out


def test_fs_fsck_progress_on_a_terminal(tmp_path):
    sample = ROOT / "tests" / "fsmount" / "data" / "v1"
    shutil.copytree(sample, tmp_path / "v1")
    (tmp_path / "v1" / "home" / "root.key").chmod(0o600)
    (tmp_path / "v1" / "home").chmod(0o700)
    argv = [KMS, "fs", "fsck", str(tmp_path / "v1" / "cipher"), "--home", str(tmp_path / "v1" / "home")]
    code, out = run_in_pty(argv)
    assert code == 0, out
    assert "fsck" in out and "━" in out and "files" in out
    piped = kms(*argv[1:])
    assert piped.returncode == 0 and "━" not in piped.stderr.decode()


def test_check_reports_as_json(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[kms]\nhome = "run/kms"\n\n[[keys]]\nalias = "json/one"\n')
    r = kms("check", str(good), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["keys"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[kms]\nhome = "run/kms"\ncolour = 1\n\n[[keys]]\nalias = "x/default"\n')
    r = kms("check", str(bad), "--json")
    assert r.returncode == 2
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert {p["path"] for p in report["problems"]} == {"kms.colour", "keys[0].alias"}
    assert all(p["file"] == str(bad) and p["message"] for p in report["problems"])


def test_fs_decrypt_progress_on_a_terminal(tmp_path):
    home = tmp_path / "h"
    assert kms("init", "--home", str(home)).returncode == 0
    assert kms("create-key", "--alias", "big/fs", "--home", str(home)).returncode == 0
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    assert kms("encrypt-file", "big/fs", str(big), str(tmp_path / "big.kms"), "--home", str(home)).returncode == 0
    code, out = run_in_pty([KMS, "fs", "decrypt", str(tmp_path / "big.kms"), str(tmp_path / "out"), "--home", str(home)])
    assert code == 0, out
    assert "decrypting big.kms" in out and "━" in out
    assert (tmp_path / "out").read_bytes() == big.read_bytes()


@pytest.mark.skipif(__import__("importlib").util.find_spec("mitmproxy") is not None,
                    reason="only where the sidecar extra cannot be installed (Python 3.11)")
def test_up_with_a_proxy_without_the_sidecar_extra_is_one_clear_problem(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text('[kms]\nhome = "run/kms"\n\n[[proxy]]\nlisten = "127.0.0.1:18999"\nupstream = "http://127.0.0.1:9"\n')
    r = kms("up", str(config))
    assert r.returncode == 2
    text = r.stderr.decode()
    assert "keyhold[sidecar]" in text and "Traceback" not in text


def test_up_refuses_a_world_writable_home(tmp_path):
    home = tmp_path / "run" / "kms"
    assert kms("init", "--home", str(home)).returncode == 0
    home.chmod(0o777)
    config = tmp_path / "w.toml"
    config.write_text('[kms]\nhome = "run/kms"\n\n[[keys]]\nalias = "quiet/k"\n')  # keys only: runs nothing
    r = kms("up", str(config))
    assert r.returncode == 8 and "writable by every user" in r.stderr.decode()
