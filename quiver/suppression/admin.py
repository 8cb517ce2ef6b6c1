"""`quiver suppression ...`: the operations behind the commands, on any SuppressionStore.

Each returns the command's exit status: 0 done (for `check`: suppressed), 1 not
(`check`: not suppressed; `import`: invalid rows or a failed write), and writes
what a person reads to `out` and problems to `err`. Writes are puts: re-running an
import after a failure writes the same entries again, nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from quiver.storage.base import StorageError, Suppression, SuppressionStore
from quiver.suppression.address import scope_name
from quiver.suppression.check import describe
from quiver.suppression.csvfile import CsvError, Defaults, RowError, read, write

# Entries per put_many during an import (the store splits them into BatchWriteItems
# of 25); progress is reported every PROGRESS_EVERY rows.
IMPORT_BATCH = 500
PROGRESS_EVERY = 10_000
# Row errors printed before the rest are only counted.
SHOWN_ERRORS = 50


async def add(store: SuppressionStore, entry: Suppression, *, out: TextIO) -> int:
    await store.put(entry)
    print(f"added {entry.address}: {describe(entry)}", file=out)
    return 0


async def remove(store: SuppressionStore, address: str, *, tenant: str, out: TextIO) -> int:
    await store.remove(address, tenant=tenant)
    print(f"removed {address} from scope {scope_name(tenant)} (senders may keep it in "
          "their cache for up to [suppression] cache_ttl)", file=out)
    return 0


async def check(store: SuppressionStore, address: str, *, tenant: str | None,
                out: TextIO) -> int:
    """What a message of `tenant` (None: one without a tenant) would meet."""
    found = (await store.lookup([address], tenant=tenant)).get(address)
    scopes = "global" if tenant is None else f"tenant:{tenant}, global"
    if found is None:
        print(f"{address}: not suppressed (scopes checked: {scopes})", file=out)
        return 1
    print(f"{address}: suppressed: {describe(found)}", file=out)
    return 0


async def list_entries(store: SuppressionStore, *, tenant: str | None, now: float,
                       lapsed: bool, out: TextIO) -> int:
    count = 0
    async for page in store.pages(tenant=tenant):
        for entry in page:
            if lapsed or entry.active(now):
                print(f"{entry.address}\t{describe(entry)}", file=out)
                count += 1
    print(f"{count} entries", file=out)
    return 0


async def export(store: SuppressionStore, *, tenant: str | None, now: float, lapsed: bool,
                 out: TextIO, err: TextIO) -> int:
    count = 0
    first = True
    async for page in store.pages(tenant=tenant):
        before = count
        count += write((e for e in page if lapsed or e.active(now)), out, header=first)
        first = False
        if count // PROGRESS_EVERY != before // PROGRESS_EVERY:
            print(f"exported {count} so far", file=err)
    if first:
        write((), out)
    print(f"exported {count} entries", file=err)
    return 0


async def import_csv(store: SuppressionStore, text: str, *, defaults: Defaults,
                     skip_invalid: bool, out: TextIO, err: TextIO) -> int:
    """Validate every row first; write only if all are valid (or `skip_invalid`)."""
    try:
        valid, errors = _validate(text, defaults)
    except CsvError as exc:
        print(f"error: {exc}; nothing written", file=err)
        return 1
    for e in errors[:SHOWN_ERRORS]:
        print(f"error: {e}", file=err)
    if len(errors) > SHOWN_ERRORS:
        print(f"error: ... and {len(errors) - SHOWN_ERRORS} more invalid rows", file=err)
    if errors and not skip_invalid:
        print(f"nothing written: {len(errors)} invalid rows, {valid} valid; fix them, or "
              "pass --skip-invalid to import the valid ones", file=err)
        return 1
    written = 0
    batch: list[Suppression] = []
    try:
        for entry in _valid_rows(text, defaults):
            batch.append(entry)
            if len(batch) >= IMPORT_BATCH:
                written = await _flush(store, batch, written, valid, err)
        written = await _flush(store, batch, written, valid, err)
    except StorageError as exc:
        print(f"error: write failed after {written} of {valid} entries: {exc}; the import "
              "can be run again (entries are replaced, not duplicated)", file=err)
        return 1
    skipped = f", {len(errors)} invalid rows skipped (listed above)" if errors else ""
    print(f"imported {written} entries{skipped}", file=out)
    return 0


def _validate(text: str, defaults: Defaults) -> tuple[int, list[RowError]]:
    valid = 0
    errors: list[RowError] = []
    for item in read(text, defaults=defaults):
        if isinstance(item, RowError):
            errors.append(item)
        else:
            valid += 1
    return valid, errors


def _valid_rows(text: str, defaults: Defaults) -> Iterator[Suppression]:
    for item in read(text, defaults=defaults):
        if isinstance(item, Suppression):
            yield item


async def _flush(store: SuppressionStore, batch: list[Suppression], written: int, total: int,
                 err: TextIO) -> int:
    if not batch:
        return written
    await store.put_many(batch)
    before, written = written, written + len(batch)
    batch.clear()
    if written // PROGRESS_EVERY != before // PROGRESS_EVERY:
        print(f"imported {written} of {total}", file=err)
    return written

