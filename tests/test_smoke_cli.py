from conftest import run_cli


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("enroll", "verify", "identify", "datasets", "models"):
        assert cmd in r.stdout.decode()
