"""End-to-end benchmark through a real Courier MTA (root; installs courier-mta).

The same run three times on the test rig of tests/e2e: Courier with the
pythonfilter dispatcher and no filter, with courier-pythonfilter 3.0.6's greylist
module, and with this package.  4 concurrent SMTP clients send 300 messages of
new triplets, then retry all 300 (greylist_time = 0, so each retry passes).
Printed: the reply time at the end of DATA (p50, p99, max), replies of a second
or more, and replies refusing for an internal error, per filter, with the p99
difference against no filter.

    python bench/e2e.py [--messages 300] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import queue
import smtplib
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))

from courier_rig import PORT, CourierRig, unavailable  # noqa: E402


def transaction(sender: str, recipient: str) -> tuple:
    """One SMTP message; (reply code, reply text, seconds from the final dot to the reply)."""
    client = smtplib.SMTP("127.0.0.1", PORT, timeout=60)
    try:
        client.ehlo("bench.example.org")
        client.mail(sender)
        client.rcpt(recipient)
        client.docmd("DATA")
        client.send(b"Subject: bench\r\n\r\nhello\r\n")
        started = time.perf_counter()
        client.send(b".\r\n")
        code, text = client.getreply()
        return code, text.decode(), time.perf_counter() - started
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()


def run_phase(messages: list, clients: int) -> list:
    work: queue.Queue = queue.Queue()
    for item in messages:
        work.put(item)
    results: list = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                sender, recipient = work.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = transaction(sender, recipient)
            except (OSError, smtplib.SMTPException) as error:
                outcome = (0, f"connection failed: {error}", 0.0)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def measure(filter_name: str, count: int, clients: int) -> dict:
    rig = CourierRig(greylist_time=0, filter_name=filter_name)
    try:
        messages = [(f"s{n}@sender.example", rig.address(f"r{n}")) for n in range(count)]
        first = run_phase(messages, clients)
        if not filter_name:
            # Nothing was greylisted: every message was delivered (to a dead port), and
            # Courier refuses an address whose delivery failed for a while, so the
            # second round without a filter goes to addresses of its own.
            messages = [(sender, rig.address(f"again{n}")) for n, (sender, _) in enumerate(messages)]
        retry = run_phase(messages, clients)
    finally:
        rig.close()
    replies = first + retry
    times = sorted(seconds for _, _, seconds in replies)
    return {
        "n": len(times),
        "p50": times[len(times) // 2],
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "max": times[-1],
        "slow": sum(seconds >= 1.0 for seconds in times),
        "internal": sum(code >= 400 and ("Internal" in text or "4.3.0" in text)
                        for code, text, _ in replies),
        "failed": sum(code == 0 for code, _, _ in replies),
        "greylisted": sum(code == 451 for code, _, _ in first),
        "passed": sum(code == 250 for code, _, _ in retry),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    rows = {}
    for label, name in (("no filter", ""), ("reference", "greylist"), ("ours", "courier_greylist")):
        rows[label] = measure(name, args.messages, args.clients)
    base = rows["no filter"]["p99"]
    print(f"{args.clients} SMTP clients, {args.messages} new then {args.messages} retried messages, "
          "reply time at the end of DATA")
    print(f"{'filter':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99-base':>9} {'>=1s':>5} "
          f"{'internal':>9} {'failed':>7} {'451 first':>10} {'250 retry':>10}")
    for label, r in rows.items():
        print(f"{label:<10} {r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} {r['max'] * 1000:>8.1f} "
              f"{(r['p99'] - base) * 1000:>+9.1f} {r['slow']:>5} {r['internal']:>9} {r['failed']:>7} "
              f"{r['greylisted']:>10} {r['passed']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
