"""List microphones, speakers and cameras."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def devices(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    from callctl.media.devices import inventory

    found = inventory()
    if as_json or ctx.obj.json:
        print(json.dumps(found, indent=2))
        return
    for title, key in (("Microphones", "microphones"), ("Speakers", "speakers")):
        print(f"{title}:")
        for d in found[key]:
            mark = " (default)" if d["default"] else ""
            print(f"  {d['name']}{mark}  {d['channels']} ch, {d['default_rate']:g} Hz")
        if not found[key]:
            print("  none")
    print("Cameras:")
    for c in found["cameras"]:
        formats = "".join(
            f"\n      {f['format']}: {' '.join(f['sizes']) or '?'}" for f in c["formats"]
        )
        print(f"  {c['path']}  {c['name']}{formats}")
    if not found["cameras"]:
        print("  none")
