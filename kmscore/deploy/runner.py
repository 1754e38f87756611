"""The running deployment: ensure `[[keys]]`, start each front end's section, reload
all-or-nothing, stop everything.

Only the thread that owns the Deployer calls it (the `kms up` main loop): signals and
file events merely ask for a reload, so no two reloads ever overlap. A reload applies
section by section; when one fails, the sections already changed are put back (the
mitmproxy model: a config update applies whole or not at all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from kmscore.config import ConfigError, Deployment, KeyDecl, Problem, check_deployment, load_config
from kmscore.config.problems import redact
from kmscore.deploy.plan import SectionChange, describe_entry, plan_reload
from kmscore.errors import KmsError, NotFound
from kmscore.frontend import Frontend, Service

log = logging.getLogger("keyhold.up")


class Deployer:
    def __init__(
        self,
        deployment: Deployment,
        kms: Any,
        frontends: Sequence[Frontend],
        *,
        loader: Callable[[str], Deployment] | None = None,
    ) -> None:
        self.current = deployment
        self.kms = kms
        self.all_frontends = list(frontends)
        self.frontends = {f.config_key: f for f in frontends if f.config_key and f.start}
        self.services: dict[str, Service] = {}
        self._load = loader or (lambda path: load_config(path, frontends=frontends))

    # -- start / stop ----------------------------------------------------------------
    def start(self) -> None:
        """Ensure keys, check, start every non-empty section; on failure stop what started."""
        self._checked(self.current)
        for line in self._ensure_keys(self.current.keys):
            log.info(line)
        key = ""
        try:
            for key, entries in self.current.sections:
                if entries and key in self.frontends:
                    self.services[key] = self.frontends[key].start(list(entries), self.kms)  # type: ignore[misc]
                    for i, entry in enumerate(entries):
                        log.info("%s[%d] running: %s", key, i, self.scrub(describe_entry(entry)))
        except KmsError as e:
            self.stop()
            raise ConfigError([Problem(self.current.file, key, f"could not start: {self.scrub(str(e))}")]) from None
        except ModuleNotFoundError as e:  # e.g. [[proxy]] on a Python without mitmproxy
            from kmscore.cli.main import missing_module_message

            self.stop()
            raise ConfigError([Problem(self.current.file, key, f"could not start: {missing_module_message(e.name)}")]) from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop sections in reverse start order; one failing stop does not skip the rest."""
        for key in reversed(list(self.services)):
            service = self.services.pop(key)
            try:
                service.stop()
                log.info("%s stopped", key)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log.error("%s did not stop cleanly: %s", key, e)

    def supervise(self) -> None:
        """Let each running section look after itself (a mount restarts its dead processes)."""
        for key, service in list(self.services.items()):
            poll = getattr(service, "poll", None)
            if poll is None:
                continue
            try:
                poll()
            except Exception as e:  # noqa: BLE001 - a failing supervisor must not end kms up
                log.error("%s: supervision failed: %s", key, self.scrub(str(e)))

    # -- reload ----------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the file again and apply it; on any problem keep the running config."""
        path = self.current.file
        try:
            if _blank(path):  # an editor caught mid-save, or a truncated file: never "stop all"
                raise ConfigError([Problem(path, "", "the file is empty (to stop everything, stop kms up)")])
            new = self._load(path)
            plan = plan_reload(self.current, new)
            if plan.needs_restart:
                log.warning("changes to %s need a restart of kms up; running on with the old values",
                            ", ".join(plan.needs_restart))
                new = replace(new, kms=self.current.kms, home=self.current.home, root_key=self.current.root_key)
            self._checked(new)
            created = self._ensure_keys(new.keys)
        except ConfigError as e:
            log.error("reload refused, keeping the running config:")
            for problem in e.problems:
                log.error("  %s", problem)
            return False
        except KmsError as e:  # the key store could not be asked (locked, unreadable)
            log.error("reload refused, keeping the running config: %s", self.scrub(str(e)))
            return False
        for line in created:
            log.info(line)
        done: list[SectionChange] = []
        try:
            for change in plan.sections:
                for line in self._execute(change.config_key, change.kind, change.new):
                    log.info("%s: %s", change.config_key, self.scrub(line, new))
                done.append(change)
        except Exception as e:  # noqa: BLE001 - roll back, then report
            failed = plan.sections[len(done)]
            log.error("reload failed at [[%s]]: %s; rolling back to the running config",
                      failed.config_key, self.scrub(str(e), new))
            self._rollback([*done, failed])
            return False
        self.current = new
        log.info("reloaded %s%s", path, "" if plan.sections or created else ": nothing to change")
        return True

    def _execute(self, key: str, kind: str, entries: tuple[Any, ...]) -> list[str]:
        frontend = self.frontends.get(key)
        if frontend is None:
            return []
        if kind == "stop" or not entries:
            service = self.services.pop(key, None)
            if service is not None:
                service.stop()
            return ["stopped (no entries left)"]
        if key not in self.services:
            self.services[key] = frontend.start(list(entries), self.kms)  # type: ignore[misc]
            return [f"[{i}] running: {describe_entry(e)}" for i, e in enumerate(entries)]
        return self.services[key].apply(list(entries)) or ["entries changed (nothing to restart)"]

    def _rollback(self, changes: list[SectionChange]) -> None:
        for change in reversed(changes):
            try:
                self._execute(change.config_key, "apply" if change.old else "stop", change.old)
            except Exception as e:  # noqa: BLE001
                log.error("%s: could not restore the previous config: %s", change.config_key, self.scrub(str(e)))

    # -- keys and checks ---------------------------------------------------------------
    def _checked(self, dep: Deployment) -> None:
        found = check_deployment(dep, self.kms, self.all_frontends, warnings=True)
        problems = [p for p in found if p.is_error]
        if problems:
            raise ConfigError(problems)
        for warning in found:  # only warnings are left
            log.warning("%s", warning)

    def _ensure_keys(self, keys: Sequence[KeyDecl]) -> list[str]:
        """Create declared keys that do not exist yet. Existing keys were compared by the
        checks and are never changed here."""
        out = []
        for decl in keys:
            try:
                self.kms.describe_key(decl.alias)
                continue
            except NotFound:
                pass
            try:
                meta = self.kms.create_key(
                    decl.alias, decl.spec, usage=decl.usage, origin=decl.origin,
                    description=decl.description, rotation_days=decl.rotation_days,
                )
            except KmsError as e:
                raise ConfigError([Problem(self.current.file, f"keys ({decl.alias})", str(e))]) from None
            out.append(f"created key {decl.alias} ({meta.spec.value}, {meta.key_id})")
        return out

    def scrub(self, text: str, dep: Deployment | None = None) -> str:
        return redact([Problem("", "", text)], dict((dep or self.current).secrets))[0].message


def _blank(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return not f.read(1 << 16).strip()
    except OSError:
        return False  # let the loader report it
