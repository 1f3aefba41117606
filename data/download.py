"""Before a TFDS download: can its hosts be reached; after a failed one: remove its debris.

TFDS downloads with many retries and long back-offs, so on a machine without a network a
download fails only after minutes, leaving `downloads/` and `<name>/incomplete.*` behind.
`unreachable_host` answers within a bound whether the download could start at all, and
`removed_on_failure` deletes what a download that still fails created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator

# How long the hosts of a download may take to answer (name resolution and TCP connect). On a
# working network both take well under a second; without one, name resolution can hang for
# tens of seconds (resolver time-outs and retries), which this bounds.
REACHABILITY_TIMEOUT = 10.0

_DEFAULT_PORTS = {"http": 80, "https": 443}


def unreachable_host(
    urls: Iterable[str], timeout: float = REACHABILITY_TIMEOUT
) -> tuple[str, str] | None:
    """The first host of `urls` that cannot be reached, and why; None if every one answers.

    A host answers when a TCP connection to its port opens. Through a proxy (the https_proxy
    / http_proxy environment variables, as TFDS's downloader honours them), the proxy is
    what must answer. Every host is tried at once, each in a daemon thread, because name
    resolution cannot be interrupted: after `timeout` seconds a host still resolving counts
    as unreachable and its thread is abandoned.

    Args:
      urls: The download's URLs.
      timeout: Seconds all hosts together may take.

    Returns:
      (host:port, reason), or None.
    """
    addresses = sorted({_connect_address(url) for url in urls})
    results: dict[tuple[str, int], str | None] = {}

    def probe(address):
        try:
            with socket.create_connection(address, timeout=timeout):
                pass
            results[address] = None
        except OSError as e:
            results[address] = _reason(e)

    threads = [threading.Thread(target=probe, args=(a,), daemon=True) for a in addresses]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for address in addresses:
        reason = results.get(address, f"no answer within {timeout:g} s")
        if reason is not None:
            return f"{address[0]}:{address[1]}", reason
    return None


def _connect_address(url: str) -> tuple[str, int]:
    """The (host, port) a download of `url` connects to: the proxy's when one applies."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)


def _reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"its name does not resolve: {error.strerror}"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "no answer"
    return error.strerror or type(error).__name__


@contextlib.contextmanager
def removed_on_failure(directory: str) -> Iterator[None]:
    """Within the block, whatever is created in `directory` is removed if the block raises.

    Paths that existed before are kept, so a data directory shared with other data sets
    loses nothing. If `directory` did not exist, its topmost missing ancestor is removed.
    Remote directories (gs://...) are left alone.
    """
    if "://" in directory:
        yield
        return
    directory = os.path.abspath(directory)
    created = None  # the topmost directory the block creates, when `directory` is missing
    before = None  # what `directory` held, when it exists
    if os.path.exists(directory):
        before = _tree(directory)
    else:
        created = directory
        while not os.path.exists(os.path.dirname(created)):
            created = os.path.dirname(created)
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:
            for path in sorted(_tree(directory) - before):  # parents before their contents
                if os.path.lexists(path):
                    _remove(path)
        raise


def _tree(directory: str) -> set[str]:
    """Every file and directory below `directory`."""
    paths = set()
    for root, dirs, files in os.walk(directory):
        paths.update(os.path.join(root, name) for name in dirs + files)
    return paths


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
