"""The commands that decide or look at triplets: check, check-config, show, allow, delete, stats, purge."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional

from .. import admin, configcheck, metrics
from ..extras import install_hint
from ..stores import StoreError, open_store
from .common import (
    EX_ERROR,
    EX_OK,
    EX_TEMPFAIL,
    CommandError,
    act_as_store_owner,
    client_address,
    config_paths,
    on_store,
    open_filter,
    progress_printer,
    quiet_filter,
    settings_for,
)


def command_check(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    act_as_store_owner(settings)
    try:
        store = open_store(settings)
    except StoreError as error:
        raise CommandError(str(error)) from None
    try:
        # No purge here: a one-shot run should not stall on a large store.
        greylist = quiet_filter(settings, store)
        verdict = greylist.check(args.control_files, args.body or _data_file(args.control_files[0]))
    finally:
        store.close()
    print(verdict.reply)
    print(f"greylist: {verdict.action} ({verdict.reason}); store: {store.description}",
          file=sys.stderr)
    if args.explain:
        print(verdict.log_line(), file=sys.stderr)
        for line in _reputation_lines(verdict.reputation):
            print(line, file=sys.stderr)
        if verdict.message_id is not None:
            print(f"  message-id {verdict.message_id}", file=sys.stderr)
        if verdict.decision is not None:
            for outcome in verdict.decision.outcomes:
                print(f"  triplet {outcome.key}: {outcome.reason}", file=sys.stderr)
    if verdict.reply.startswith("4"):
        return EX_TEMPFAIL
    if verdict.action == "error" or verdict.reply[:1] == "5":
        return EX_ERROR
    return EX_OK


def _reputation_lines(reputation) -> list:
    """What check --explain says of DNS lists and the client's name."""
    if reputation is None:
        return []
    lines = []
    for answer in reputation.answers:
        said = ", ".join(answer.addresses) or "no address"
        lines.append(f"  dns {answer.zone}: {answer.result} ({said}"
                     f"{', from the cache' if answer.cached else ''})")
    if reputation.dnswl:
        lines.append(f"  rule: listed on the DNSWL {reputation.dnswl}: not greylisted")
    elif reputation.dnsbl:
        lines.append(f"  rule: listed on the DNSBL {reputation.dnsbl}: dnsbl_greylist_time applies")
    if not reputation.named:
        lines.append("  name: no reverse-DNS name recorded by Courier")
    elif reputation.generic:
        lines.append(f"  name: looks generic ({reputation.generic})")
    return lines


def command_check_config(args: argparse.Namespace) -> int:
    found = configcheck.check(config_paths(args), act_as_store_owner)
    for line in found.lines():
        print(line, file=sys.stderr if line.startswith("problem: ") else sys.stdout)
    return EX_ERROR if found.problems else EX_OK


def _data_file(control_path: str) -> Optional[str]:
    """Courier keeps a message's data file ``D<id>`` beside its control file ``C<id>``."""
    directory, name = os.path.split(control_path)
    if name.startswith("C"):
        candidate = os.path.join(directory, "D" + name[1:])
        if os.path.exists(candidate):
            return candidate
    return None


def command_show(args: argparse.Namespace) -> int:
    now = time.time()
    lookup = on_store(args, lambda greylist: admin.show(
        greylist, args.sender, args.recipient, client_address(args.ip), now, client_name=args.client_name),
        read_only=True)
    if args.json:
        print(json.dumps(dataclasses.asdict(lookup), indent=2))
        return EX_OK
    print(f"client network {lookup.network}, sender {args.sender}")
    print(f"the next message: {lookup.action} ({lookup.reason})"
          + (f", reply: {lookup.reply}" if lookup.reply else ", accepted"))
    if lookup.client is not None:
        client = lookup.client
        if client.last_seen is None:
            print(f"auto-whitelist: no record of {client.network}")
        else:
            status = "auto-whitelisted" if client.whitelisted else f"not yet ({client.needed} needed)"
            print(f"auto-whitelist: {client.network}: {client.passes} triplets passed, last seen "
                  f"{admin.when(client.last_seen)}; {status}")
    if lookup.trapped_until is not None:
        print(f"greytrap: {lookup.network} is trapped until {admin.when(lookup.trapped_until)}")
    for triplet in lookup.triplets:
        print(f"  {triplet.recipient}: {triplet.describe(now)}  [{triplet.key}]")
    return EX_OK


def command_allow(args: argparse.Namespace) -> int:
    keys = on_store(args, lambda greylist: admin.allow(greylist, args.sender, args.recipient,
                                                        client_address(args.ip), time.time()))
    for recipient, key in zip(args.recipient, keys):
        print(f"allowed: {args.sender} -> {recipient} from {args.ip}  [{key}]")
    return EX_OK


def command_delete(args: argparse.Namespace) -> int:
    found = on_store(args, lambda greylist: admin.delete(greylist, args.sender, args.recipient,
                                                          client_address(args.ip)))
    print(f"deleted {found} entr{'y' if found == 1 else 'ies'} "
          f"for {len(args.recipient)} triplet{'s' if len(args.recipient) != 1 else ''}")
    return EX_OK


def command_stats(args: argparse.Namespace) -> int:
    if args.prometheus:
        try:
            metrics.registry_for(metrics.Counts())
        except metrics.MetricsUnavailable:
            raise CommandError("--prometheus needs prometheus_client "
                               f"({install_hint('metrics')})") from None
    result = on_store(args, lambda greylist: admin.stats(greylist, time.time(), top=args.top),
                       read_only=True)
    if args.prometheus:
        sys.stdout.write(metrics.store_figures(result))
        return EX_OK
    if args.json:
        print(json.dumps(result, indent=2))
        return EX_OK
    print(f"store: {result['store']}")
    for table, entry in result["tables"].items():
        print(f"{table}: {entry['entries']:,} entries ({entry['expired']:,} expired, "
              f"waiting for the purge)")
        largest = max(entry["ages"].values()) or 1
        for label, count in entry["ages"].items():
            print(f"  {label:>14} {count:>10,} {'#' * round(30 * count / largest) if count else ''}")
        if "networks" in entry:
            print(f"  auto-whitelisted networks: {entry['whitelisted_networks']:,}")
            for network in entry["networks"]:
                mark = "  whitelisted" if network["whitelisted"] else ""
                print(f"    {network['network']:<24} {network['passes']:>6} passed, last seen "
                      f"{admin.when(network['last_seen'])}{mark}")
        if "trapped" in entry:
            print(f"  trapped networks: {entry['trapped_networks']:,}")
            for network in entry["trapped"]:
                print(f"    {network['network']:<24} until {admin.when(network['until'])}")
    return EX_OK


def command_purge(args: argparse.Namespace) -> int:
    greylist = open_filter(args)
    lines: list = []
    greylist.log = lines.append
    show = progress_printer("purge: examined")
    try:
        started = time.monotonic()
        removed = greylist.purge(time.time(), None if show is None else
                                 (lambda table, count: show(table, count)))
        if show is not None:
            show("", -1)
    finally:
        greylist.store.close()
    if lines:
        raise CommandError(lines[-1][len("greylist: "):] if lines[-1].startswith("greylist: ") else lines[-1])
    print(f"purged {removed:,} expired entries from {greylist.store.description} "
          f"in {time.monotonic() - started:.1f} s")
    return EX_OK
