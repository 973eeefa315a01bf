"""The commands about the running dispatcher: status and restart."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

from .. import configcheck, dispatcher_control, status
from ..admin import ago, when
from ..settings import standard_config_paths
from .common import EX_ERROR, EX_OK, CommandError, act_as_store_owner
from .shim import SHIM_NAME, installed_config_paths


def settings_paths(args: argparse.Namespace) -> List[str]:
    """The settings files the dispatcher reads: --config, else the installed module's, else the standard."""
    if args.config:
        return [os.path.abspath(args.config)]
    return installed_config_paths() or standard_config_paths()


def describe(host: dispatcher_control.Host, saved: Optional[dict], paths: Sequence[str],
             now: float) -> Tuple[bool, List[str]]:
    """Whether greylisting is on, and the lines that say what runs."""
    if host.courierfilter is None:
        return False, ["courierfilter: not running, so no filter runs and mail passes unfiltered; "
                       "start it: systemctl start courierfilter (or: courierfilter start)"]
    lines = [f"courierfilter: running (pid {host.courierfilter})"]
    if not host.active:
        return False, lines + ["pythonfilter: not active, so mail passes unfiltered: greylist restart "
                               "starts it"]
    if not host.dispatchers:
        return False, lines + ["pythonfilter: active but not running, so mail passes unfiltered: "
                               "greylist restart starts it"]
    running = f"pythonfilter: running (pid {', '.join(map(str, host.dispatchers))})"
    if not host.socket:
        return False, lines + [running + f", but without its socket {dispatcher_control.socket_path()}: "
                                         f"mail passes unfiltered; greylist restart"]
    lines.append(running)
    if saved is None or saved["pid"] not in host.dispatchers:
        return False, lines + [f"greylist: not run by this dispatcher (is {SHIM_NAME} listed in "
                               f"pythonfilter.conf? greylist install, then greylist restart)"]
    started = saved.get("started") or now
    if saved.get("state") != "deciding":
        return False, lines + [f"greylist: NOT STARTED since {when(started)}: {saved.get('problem')}; every "
                               f"message gets a 451 and waits in its sender's queue; fix it, then "
                               f"greylist restart"]
    lines.append(f"greylist: deciding since {when(started)} ({ago(now - started)} ago), "
                 f"courier-greylist {saved.get('version')}, store: {saved.get('store')}")
    was = {entry["path"]: entry["sha256"] for entry in saved.get("settings", [])}
    for entry in status.fingerprint(list(was)):
        if entry["sha256"] == was[entry["path"]]:
            lines.append(f"settings: {entry['path']}, unchanged since the start")
        else:
            lines.append(f"settings: {entry['path']} CHANGED since the start: greylist check-config, "
                         f"then greylist restart applies it")
    if set(was) != set(paths):
        lines.append(f"settings: it reads {', '.join(was) or 'none'}, not {', '.join(paths)}")
    last = saved.get("last_decision")
    lines.append(f"last decision: {when(last)} ({ago(now - last)} ago)" if last else
                 "last decision: none yet")
    return True, lines


def command_status(args: argparse.Namespace) -> int:
    where = os.path.dirname(status.path())
    if os.path.isdir(os.path.dirname(where)) and not os.access(where, os.R_OK | os.X_OK):
        raise CommandError(f"the dispatcher's status is in {where}, Courier's own directory: "
                           f"run this as root")
    host = dispatcher_control.look()
    ok, lines = describe(host, status.read(), settings_paths(args), time.time())
    for line in lines:
        print(line)
    return EX_OK if ok else EX_ERROR


def command_restart(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CommandError("restart runs filterctl and signals courierfilter: run it as root")
    ours = dispatcher_control.runs_module(SHIM_NAME)
    paths = settings_paths(args)
    checked = status.fingerprint(paths)
    if ours:
        problems = _checked_in_a_child(paths)
        if problems:
            for problem in problems:
                print(f"problem: {problem}", file=sys.stderr)
            raise CommandError("nothing restarted: the running filter keeps its settings")
        print(f"settings checked: {', '.join(paths)}")
    try:
        started = dispatcher_control.restart(ours, say=print)
    except dispatcher_control.ControlError as error:
        raise CommandError(str(error)) from None
    saved = started.status
    if ours and saved is not None and saved.get("state") != "deciding":
        raise CommandError(f"the dispatcher runs (pid {started.pid}), but greylist did not start: "
                           f"{saved.get('problem')}; every message gets a 451 until it is fixed")
    if ours and saved is not None and saved.get("settings") != checked:
        print("note: the settings files changed while the dispatcher restarted, or it reads others: "
              "greylist status says which it runs with", file=sys.stderr)
    running = f"restarted: the dispatcher runs (pid {started.pid})"
    print(running + (f", greylisting with the settings of {', '.join(paths)}" if ours else
                     f", without {SHIM_NAME} (not listed in pythonfilter.conf)"))
    return EX_OK


def _checked_in_a_child(paths: Sequence[str]) -> List[str]:
    """check-config's problems, found in a child process: it becomes the store's owner to look,
    and this process must stay root to run filterctl."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(reader)
        try:
            found = configcheck.check(list(paths), act_as_store_owner).problems
        except BaseException as error:  # the parent must hear of it, whatever it is
            found = [f"check-config failed: {error!r}"]
        with os.fdopen(writer, "w") as out:
            json.dump(found, out)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    try:
        return json.loads(text)
    except ValueError:
        return ["check-config stopped without an answer"]
