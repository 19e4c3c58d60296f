"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temp dir, ``pg_ctl start``
on 127.0.0.1 and a free port, password (SCRAM) authentication over TCP, torn down at the
end.  As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as
root), with the temp dir owned by it.  Needs the Debian package ``postgresql``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from daemon_support import free_port

SUPERUSER = "voxguard"
MISSING = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"


def pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


class NoServerUser(RuntimeError):
    pass


class PgCluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="voxguard-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise NoServerUser("running as root, PostgreSQL needs an unprivileged 'postgres' user "
                                   "(the Debian package postgresql creates it)") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        self.start()
        self._n = 0

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        return (f"postgresql://{SUPERUSER}:{self.password if password is None else password}"
                f"@127.0.0.1:{self.port}/{dbname}")

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        self._n += 1
        name = f"t{self._n}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
